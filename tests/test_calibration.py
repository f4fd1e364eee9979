"""edgecnn.calibration without any runtime: sample selection, input checks, the searches, TensorRT caches."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn.calibration import (CALIBRATOR_NAMES, CalibrationOptions, balanced_indices, check_inputs,
                                 choose_calibrator, fallback_to_float, from_arrays, prepare_calibration, read_cache,
                                 write_cache)
from edgecnn.calibration.samples import split_positions
from edgecnn.data import load_dataset
from edgecnn.errors import UserError
from edgecnn.registry import get_config

LENET = get_config("lenet5_fmnist")


def test_balanced_indices_are_balanced_seeded_and_distinct() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    a = balanced_indices(labels, 30, seed=3)
    assert len(set(a.tolist())) == 30
    assert np.bincount(labels[a].numpy()).tolist() == [10, 10, 10]
    assert a.tolist() == balanced_indices(labels, 30, seed=3).tolist()
    assert a.tolist() != balanced_indices(labels, 30, seed=4).tolist()
    # a class that runs out leaves the rest to the others
    assert np.bincount(labels[balanced_indices(labels, 90, seed=0)].numpy()).tolist() == [40, 30, 20]


def test_calibration_samples_come_from_train_minus_validation(fmnist_dir: Path) -> None:
    options = CalibrationOptions(samples=100, data=fmnist_dir, calibrator="minmax")
    data = prepare_calibration(LENET, LENET.input_size, options)
    train = load_dataset(fmnist_dir, split="train")
    train_pos, val_pos = split_positions(train)
    assert set(data.calibration.indices.tolist()) <= set(train_pos.tolist())
    assert not set(data.calibration.indices.tolist()) & set(val_pos.tolist())
    assert data.calibration.inputs.shape == (100, 1, 28, 28) and data.calibration.inputs.dtype == np.float32
    assert (data.calibration.labels == train.labels[data.calibration.indices].numpy()).all()
    assert data.validation is None  # a fixed calibrator without --max-drop scores nothing
    again = prepare_calibration(LENET, LENET.input_size, options)
    assert again.calibration.indices_sha256 == data.calibration.indices_sha256
    assert data.calibration.record()["data_fingerprint"] == train.fingerprint


def test_auto_and_max_drop_get_the_validation_split(fmnist_dir: Path) -> None:
    data = prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=10, data=fmnist_dir))
    _, val_pos = split_positions(load_dataset(fmnist_dir, split="train"))
    assert sorted(data.validation.indices.tolist()) == sorted(val_pos.tolist())


def test_fewer_samples_than_asked_is_one_clear_error(fmnist_dir: Path) -> None:
    with pytest.raises(UserError, match=r"540 training images .* fewer than the 600 .*--calib-samples 540"):
        prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=600, data=fmnist_dir))


@pytest.mark.parametrize("inputs, message", [
    (np.zeros((0, 1, 4, 4), np.float32), "empty"),
    (np.full((2, 1, 4, 4), np.nan, np.float32), "NaN"),
    (np.full((2, 1, 4, 4), 0.5, np.float32), "constant"),
])
def test_unusable_calibration_data_is_refused(inputs: np.ndarray, message: str) -> None:
    with pytest.raises(UserError, match=message):
        from_arrays(inputs)


def test_constant_images_in_a_folder_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.new("RGB", (28, 28), (7, 7, 7)).save(tmp_path / cls / f"{i}.png")
    with pytest.raises(UserError, match="constant"):
        prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=4, data=tmp_path, calibrator="minmax"))


def test_folder_with_more_classes_than_the_model_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    for k in range(11):
        (tmp_path / f"c{k}").mkdir()
        Image.new("RGB", (8, 8), (k, 2 * k, 3)).save(tmp_path / f"c{k}" / "0.png")
    with pytest.raises(UserError, match="11 class folders but lenet5_fmnist predicts 10"):
        prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=4, data=tmp_path))


def test_folder_with_undecodable_images_is_refused(image_folder: Path) -> None:
    (image_folder / "cat" / "9.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode image"):
        prepare_calibration(LENET, LENET.input_size,
                            CalibrationOptions(samples=10, data=image_folder, calibrator="minmax"))


def test_model_without_known_data_asks_for_calib_data() -> None:
    cfg = get_config("resnet50")
    with pytest.raises(UserError, match="--calib-data"):
        prepare_calibration(cfg, cfg.input_size, CalibrationOptions(samples=4))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_drop": -0.1}, "--max-drop must be 0 or more"),
    ({"samples": 0}, "--calib-samples must be at least 1"),
    ({"calibrator": "kl"}, "unknown calibrator"),
    ({"data": "/nonexistent/dir"}, "is not a directory"),
])
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        CalibrationOptions(**kwargs)


def test_default_is_the_old_name_of_the_library_calibrator() -> None:
    """`default` (issue 24: read as "the default calibrator", which is auto) is kept for one release as `library`,
    and the options hold the new name, so manifests and bench cache tags record `library`."""
    assert CALIBRATOR_NAMES[:2] == ("auto", "library") and "default" not in CALIBRATOR_NAMES
    assert CalibrationOptions(calibrator="default").calibrator == "library"
    assert CalibrationOptions().calibrator == "auto"
    with pytest.raises(UserError) as error:
        CalibrationOptions(calibrator="kl")
    assert "library" in str(error.value) and "default" not in str(error.value)


def test_check_inputs_accepts_real_data() -> None:
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 1, 4, 4)
    assert check_inputs(x) is x


def _hits(right: int, total: int = 1000, offset: int = 0) -> np.ndarray:
    """`right` correct images out of `total`, the wrong ones starting at `offset` (so two can disagree)."""
    hits = np.ones(total, dtype=bool)
    hits[(offset + np.arange(total - right)) % total] = False
    return hits


def test_choose_calibrator_switches_from_the_first_only_for_a_significant_gain() -> None:
    noise = {"library": _hits(900), "minmax": _hits(903, offset=50)}  # 3 images better: noise
    choice = choose_calibrator(list(noise), noise.__getitem__)
    assert choice.best == "library" and choice.scores == {"library": 90.0, "minmax": 90.3}
    assert choice.versus_first["minmax"] == {"gained": 50, "lost": 47, "significant": False}

    real = {"library": _hits(900), "minmax": _hits(930), "entropy": _hits(950), "percentile": _hits(950, offset=7)}
    choice = choose_calibrator(list(real), real.__getitem__)
    assert choice.best == "entropy"  # the most accurate significant one; ties go to the earlier candidate
    assert all(v["significant"] for v in choice.versus_first.values())


def _accuracy_without(sensitive: set[str], fp32: float = 90.0, cost: float = 1.0):
    """Accuracy of a model where each node of `sensitive` still quantized costs `cost` points."""
    return lambda excluded: fp32 - cost * len(sensitive - set(excluded))


def test_fallback_returns_the_fewest_most_sensitive_nodes() -> None:
    ranked = [f"n{i}" for i in range(20)]
    score = _accuracy_without({"n0", "n1", "n2"})
    result = fallback_to_float(ranked, score, 90.0, score([]), max_drop=0.5)
    assert result.excluded == ["n0", "n1", "n2"]
    assert result.accuracy == 90.0
    assert len(result.steps) <= 1 + 2 * 5  # doubling then bisection, not one run per node


def test_fallback_finds_a_count_between_the_last_doubling_and_all_nodes() -> None:
    # Regression: doubling 1, 2, 4 then 8 = all nodes used to give up without trying 5..7.
    ranked = [f"n{i}" for i in range(8)]
    score = _accuracy_without({f"n{i}" for i in range(6)})
    result = fallback_to_float(ranked, score, 90.0, score([]), max_drop=0.5)
    assert result.excluded == ranked[:6]


def test_fallback_does_nothing_when_the_drop_already_fits() -> None:
    result = fallback_to_float(["a", "b"], lambda ex: pytest.fail("must not re-quantize"), 90.0, 89.8, 0.5)
    assert result.excluded == []


def test_every_node_too_sensitive_is_one_clear_error() -> None:
    ranked = ["a", "b", "c", "d"]
    score = _accuracy_without(set(ranked))
    with pytest.raises(UserError, match="every quantized node is too sensitive"):
        fallback_to_float(ranked, score, 90.0, score([]), max_drop=0.5)


def test_tensorrt_cache_is_tensorrts_text_format_and_round_trips(tmp_path: Path) -> None:
    cache = tmp_path / "calibration.cache"
    write_cache(cache, {"input": 2.54, "conv1_out": 12.7}, "ab" * 32, "10.8.0")
    lines = cache.read_text().splitlines()
    assert lines[0] == "TRT-100800-EntropyCalibration2"
    name, hex_scale = lines[1].split(": ")
    assert name == "input" and struct.unpack(">f", bytes.fromhex(hex_scale))[0] == pytest.approx(0.02)
    assert read_cache(cache, "ab" * 32) == pytest.approx({"input": 0.02, "conv1_out": 0.1})


def test_stale_or_unstamped_tensorrt_cache_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "calibration.cache"
    write_cache(cache, {"input": 1.0}, "ab" * 32, "10.0.0")
    with pytest.raises(UserError, match="is stale: it was made for the model with SHA-256 abababababab"):
        read_cache(cache, "cd" * 32)
    (tmp_path / "calibration.cache.json").unlink()
    with pytest.raises(UserError, match="has no readable stamp"):
        read_cache(cache, "ab" * 32)

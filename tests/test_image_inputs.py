"""Images users hand edgecnn (image folders, --calib-data): pixel modes scaled by their real range, decompression
bombs, entries that are not regular files, and class folders matched to the model's classes by name."""
from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgecnn.calibration import CalibrationOptions, prepare_calibration
from edgecnn.cli import main
from edgecnn.data import load_dataset
from edgecnn.errors import DatasetError, UserError
from edgecnn.registry import FMNIST_CLASSES, get_config

LENET = get_config("lenet5_fmnist")
IMAGE_PIXELS_ENV = "EDGECNN_MAX_IMAGE_PIXELS"  # the documented name, spelt out as users write it


def _folder(root: Path, classes: dict[str, int]) -> Path:
    """`classes`: folder name → how many random 8×8 8-bit greyscale images it holds."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _only_image(ds_root: Path) -> np.ndarray:
    ds = load_dataset(ds_root, "train")
    return ds.get_batch([0])[0][0, 0].numpy()


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- pixel modes (point 12)

def test_16bit_png_spans_the_8bit_range_proportionally(tmp_path: Path) -> None:
    from PIL import Image

    gradient = (np.arange(256) * 257).astype(np.uint16).reshape(16, 16)  # 0 … 65535
    (tmp_path / "a").mkdir()
    Image.fromarray(gradient).save(tmp_path / "a" / "g.png")
    assert Image.open(tmp_path / "a" / "g.png").mode == "I;16"
    pixels = _only_image(tmp_path)
    assert len(np.unique(pixels)) == 256
    np.testing.assert_array_equal(pixels, np.round(gradient / 257).astype(np.uint8))


def test_float_tiff_in_0_to_1_is_scaled_to_255(tmp_path: Path) -> None:
    from PIL import Image

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    (tmp_path / "a").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a" / "f.tiff")
    np.testing.assert_array_equal(_only_image(tmp_path), np.round(ramp * 255).astype(np.uint8))


@pytest.mark.parametrize("pixels, range_named", [
    (np.linspace(0, 1000, 64, dtype=np.float32), "[0, 1]"),       # mode F beyond [0, 1]
    (np.linspace(0, 70000, 64).astype(np.int32), "0-65535"),      # mode I beyond 16 bits
], ids=["float", "int32"])
def test_pixels_beyond_their_modes_range_are_one_line_naming_the_file(tmp_path: Path, pixels: np.ndarray,
                                                                      range_named: str) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.fromarray(pixels.reshape(8, 8)).save(tmp_path / "a" / "wide.tif")
    with pytest.raises(DatasetError) as error:
        _only_image(tmp_path)
    assert "wide.tif" in _one_line(error) and range_named in str(error.value)


# ---------------------------------------------------------------- decompression bombs (point 13)

def _png_bomb(path: Path, side: int = 20000) -> Path:
    """A genuine side×side 1-bit black PNG: a few tens of kB on disk, `side`² pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, packer = b"\0" * (1 + (side + 7) // 8), zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_in_calib_data_is_one_line_naming_the_file_and_the_limit(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    monkeypatch.delenv(IMAGE_PIXELS_ENV, raising=False)
    root = _folder(tmp_path / "calib", {"a": 3})
    _png_bomb(root / "a" / "bomb.png")
    with pytest.raises(DatasetError) as error:
        prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=4, data=root, calibrator="minmax"))
    text = _one_line(error)
    assert "bomb.png" in text and "400,000,000 pixels" in text and IMAGE_PIXELS_ENV in text


def test_max_image_pixels_raises_and_lowers_the_limit(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8), 9).save(tmp_path / "a" / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow alone would raise DecompressionBombError on 64 px
    monkeypatch.delenv(IMAGE_PIXELS_ENV, raising=False)
    with pytest.raises(DatasetError, match=f"small.png .*64 pixels.*{IMAGE_PIXELS_ENV}=64"):
        _only_image(tmp_path)
    monkeypatch.setenv(IMAGE_PIXELS_ENV, "64")
    assert (_only_image(tmp_path) == 9).all()
    assert Image.MAX_IMAGE_PIXELS == 10, "Pillow's own setting is left as it was"
    monkeypatch.setenv(IMAGE_PIXELS_ENV, "63")
    with pytest.raises(DatasetError, match="more than the limit of 63"):
        _only_image(tmp_path)
    monkeypatch.setenv(IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(DatasetError, match=f"{IMAGE_PIXELS_ENV}='lots' is not"):
        _only_image(tmp_path)


# ---------------------------------------------------------------- entries that are not regular files (point 14)

def test_dangling_symlinks_and_loops_are_skipped_and_counted(tmp_path: Path) -> None:
    root = _folder(tmp_path / "calib", {"a": 3, "b": 3})
    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "b" / "loop.png").symlink_to(root / "b" / "loop.png")
    ds = load_dataset(root, "train")
    assert len(ds) == 6 and ds.skipped == {"dangling symlink": 1, "symlink loop": 1}
    data = prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=4, data=root, calibrator="minmax"))
    assert "skipped 2 entries that are not regular files (dangling symlink: 1, symlink loop: 1)" \
        in data.calibration.source


def test_a_fifo_named_png_is_never_opened(tmp_path: Path) -> None:
    root = _folder(tmp_path / "calib", {"a": 3, "b": 3})
    fifo = root / "a" / "x.png"
    os.mkfifo(fifo)
    outcome: dict[str, object] = {}

    def calibrate() -> None:
        try:
            outcome["data"] = prepare_calibration(LENET, LENET.input_size,
                                                  CalibrationOptions(samples=6, data=root, calibrator="minmax"))
        except Exception as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    worker = threading.Thread(target=calibrate, daemon=True)
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # blocked opening the FIFO for reading: a writer releases it, then fail
        with open(fifo, "wb"):
            pass
        worker.join()
        pytest.fail("calibration opened the FIFO and hung")
    assert "error" not in outcome, outcome.get("error")
    assert "FIFO: 1" in outcome["data"].calibration.source and len(outcome["data"].calibration) == 6


# ---------------------------------------------------------------- class folders vs the model's classes (point 15)

def test_single_class_folder_for_a_ten_class_model_is_one_line(tmp_path: Path) -> None:
    root = _folder(tmp_path / "calib", {"Trouser": 40})
    with pytest.raises(UserError) as error:
        prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=8, data=root))
    text = _one_line(error)
    assert "1 of lenet5_fmnist's 10 classes" in text and "--calibrator" in text


def test_unknown_folder_names_are_refused_for_validation(tmp_path: Path) -> None:
    root = _folder(tmp_path / "calib", {name: 4 for name in ("cats", "dogs", "eels")})
    with pytest.raises(UserError) as error:
        prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=8, data=root))
    text = _one_line(error)
    assert "cats, dogs, eels" in text and "3 class folders but lenet5_fmnist predicts 10" in text


@pytest.mark.parametrize("rename", [
    lambda name: name.replace("/", "_").upper(),   # names in another case, which sort in another order
    lambda name: str(FMNIST_CLASSES.index(name)),  # class numbers
], ids=["names", "numbers"])
def test_class_folders_are_matched_to_the_model_classes_whatever_their_order(tmp_path: Path, rename) -> None:
    root = _folder(tmp_path / "calib", {rename(name): 10 for name in FMNIST_CLASSES})
    model_class = {rename(name): k for k, name in enumerate(FMNIST_CLASSES)}
    data = prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=20, data=root))
    files = load_dataset(root, "train").files
    for samples in (data.calibration, data.validation):
        expected = [model_class[files[i].parent.name] for i in samples.indices]
        assert samples.labels.tolist() == expected


def test_flat_folder_calibrates_with_a_fixed_calibrator(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=12, data=tmp_path,
                                                                           calibrator="minmax"))
    assert len(data.calibration) == 12 and data.calibration.labels is None and data.validation is None
    assert "no class sub-folders" in data.calibration.source
    assert CalibrationOptions(data=tmp_path).calibrator == "library", "auto needs labels: the library's defaults"
    for needs_labels in ({"calibrator": "auto"}, {"max_drop": 1.0}):
        with pytest.raises(UserError) as error:
            prepare_calibration(LENET, LENET.input_size, CalibrationOptions(samples=4, data=tmp_path, **needs_labels))
        assert "no class sub-folders" in _one_line(error) and "fixed --calibrator" in str(error.value)


def test_flat_folder_exports_int8_from_the_command_line(tmp_path: Path, capsys) -> None:
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(load_dataset("fashion_mnist", "train").images[:64, 0].numpy()):
        Image.fromarray(image).save(flat / f"{i}.png")
    argv = ["export", "lenet5_fmnist", "--precision", "int8", "--calib-data", str(flat), "--calib-samples", "64",
            "--no-progress", "--parity-samples", "8"]
    assert main([*argv, "--calibrator", "auto", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no class sub-folders" in err[0] and not (tmp_path / "refused").exists()
    assert main([*argv, "--out", str(tmp_path / "art")]) == 0
    captured = capsys.readouterr()
    assert "using --calibrator library" in captured.err
    assert "calibration: library" in captured.out

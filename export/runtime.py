"""Runtime sessions: one interface over every backend that runs an artifact (Polygraphy-style).

    from edgecnn.export import runtime
    with runtime.load("artifacts/resnet18_fmnist-onnx-fp32", backend="onnxruntime", threads=2) as s:
        logits = s.run(batch)          # float32 N×C×H×W numpy array or torch tensor → float32 logits
        s.executed_precision           # what the runtime really computes in (fp32, fp16, bf16, int8)

`load` reads the manifest (validated, hashes checked) and only the files it names. Session backends are
registered in one place (`BACKENDS`, filled by `@register_backend`); each declares which of the
manifest's `model_files` it reads. Every session validates its input against the manifest before
the runtime sees it, so a wrong shape, dtype or layout is a clear error, never a runtime crash.

Loading and running are apart, as in Polygraphy: a session opens a `ModelSpec` (one model file, its format,
precision, input and output), which `load` / `open_session` read from an artifact's manifest and `open_model` takes
from the caller for a bare model file, with no manifest:

    with runtime.open_model("work/model.onnx", "onnxruntime", precision="int8") as s:   # input read from the graph
        logits = s.run(batch)

This module holds what every session shares (`Session`, `ModelSpec`, `InputSpec`, `open_session`, `open_model`,
`load`) and imports neither torch nor any runtime's package; each runtime's own session lives in its backend module
(`edgecnn.export.backends`: `torch`, the eager reference rebuilt from the manifest's weight record; `onnxruntime`;
`openvino`; `tensorrt`, a built engine on an NVIDIA GPU), and `early_exit` (`edgecnn.export.early_exit_session`)
runs a BranchyNet artifact's stages on any of them.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export.graph_io import OUTPUT_NAME
from edgecnn.export.manifest import ArtifactError, read_manifest
from edgecnn.registries import Registry
from edgecnn.validation import positive_int


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]   # None: the dynamic batch axis
    dtype: np.dtype                 # one of manifest.TENSOR_DTYPES (named alike in numpy and torch)
    layout: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> InputSpec:
        return cls.from_record(manifest["input"])

    @classmethod
    def from_record(cls, spec: dict[str, Any]) -> InputSpec:
        """From a manifest's input record: name, shape (a string for the dynamic batch axis), dtype, layout."""
        shape = tuple(d if isinstance(d, int) else None for d in spec["shape"])
        return cls(spec["name"], shape, np.dtype(spec["dtype"]), spec.get("layout", "NCHW"))

    @classmethod
    def of_model(cls, path: Path) -> InputSpec:
        """The first input of an ONNX graph (.onnx) or an OpenVINO IR (.xml), read from the file (NCHW)."""
        if path.suffix == ".xml":
            import openvino as ov

            port = ov.Core().read_model(str(path)).inputs[0]
            name = port.get_any_name()
            dims = [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
            dtype = np.dtype(port.get_element_type().to_dtype())
        elif path.suffix == ".onnx":
            import onnx
            from onnx.helper import tensor_dtype_to_np_dtype

            graph = onnx.load(str(path), load_external_data=False).graph
            weights = {t.name for t in graph.initializer}
            tensor = next(i for i in graph.input if i.name not in weights)
            name = tensor.name
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.type.tensor_type.shape.dim]
            dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.type.tensor_type.elem_type))
        else:
            raise UserError(f"edgecnn reads the input of .onnx and .xml model files, not of {path.name}: pass "
                            "input={'name': ..., 'shape': ['N', C, H, W], 'dtype': 'float32'}")
        if len(dims) != 4 or None in dims[1:]:
            raise UserError(f"{path} takes input {name!r} of shape {['?' if d is None else d for d in dims]}; "
                            "edgecnn's sessions run N×C×H×W images of a fixed C×H×W: pass input= to say what it "
                            "takes")
        return cls(name, tuple(dims), dtype, "NCHW")

    def validate(self, batch: Any, check_finite: bool = True) -> np.ndarray:
        """The batch as the runtime wants it (C-contiguous), or a UserError saying what to change.

        A torch tensor is taken as its numpy view (copied to the CPU first if it lives elsewhere).
        """
        is_tensor = type(batch).__module__.startswith("torch") and hasattr(batch, "detach")
        if is_tensor:
            batch = _tensor_to_numpy(batch, self.dtype)
        if not isinstance(batch, np.ndarray):
            raise UserError(f"input must be a numpy array or a torch tensor, got {type(batch).__name__}")
        if batch.dtype != self.dtype:
            cast = f"batch.to(torch.{self.dtype.name})" if is_tensor \
                else f"batch.astype(np.{self.dtype})"
            raise UserError(f"input dtype is {batch.dtype}; the model takes {self.dtype}: use {cast}")
        _, channels, height, width = self.shape
        expected = "×".join("N" if d is None else str(d) for d in self.shape)
        if batch.ndim == 3 and batch.shape == (channels, height, width):
            raise UserError(f"input has no batch axis (shape {batch.shape}); the model takes {expected} "
                            f"({self.layout}): use batch[None]")
        if batch.ndim != 4:
            raise UserError(f"input has {batch.ndim} dimensions (shape {batch.shape}); the model takes "
                            f"{expected} ({self.layout})")
        if batch.shape[0] == 0:
            raise UserError(f"input batch is empty (shape {batch.shape}); pass at least one image")
        if batch.shape[1:] != (channels, height, width):
            if batch.shape[1:] == (height, width, channels):
                raise UserError(f"input shape {batch.shape} looks like NHWC; the model takes {self.layout} "
                                f"{expected}: transpose to NCHW with batch.transpose(0, 3, 1, 2)")
            raise UserError(f"input shape {batch.shape} does not match the model's {expected} ({self.layout})")
        if self.shape[0] is not None and batch.shape[0] != self.shape[0]:
            raise UserError(f"batch size {batch.shape[0]}, but this artifact was exported for batch "
                            f"{self.shape[0]}: export with --batch {batch.shape[0]} or --dynamic-batch")
        batch = np.ascontiguousarray(batch)
        if check_finite and batch.dtype.kind == "f":
            refuse_non_finite(batch)
        return batch


def _tensor_to_numpy(tensor: Any, dtype: np.dtype) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    try:
        return tensor.numpy()
    except TypeError as e:  # dtypes numpy lacks, such as bfloat16
        raise UserError(f"input dtype is {tensor.dtype}, which has no numpy equivalent; the model takes {dtype}: "
                        f"use batch.to(torch.{dtype.name})") from e


def refuse_non_finite(batch: np.ndarray) -> None:
    """Refuse NaN and ±inf. The batch's dot product with itself is NaN or inf whenever a value is, so one
    BLAS pass without a copy clears a clean float32/float64 batch; values are looked at one by one only
    when it is not (or for float16, which BLAS lacks and whose squares overflow early)."""
    flat = batch.reshape(-1)
    if batch.dtype in (np.float32, np.float64) and math.isfinite(np.vdot(flat, flat)):
        return
    bad = ~np.isfinite(batch)
    if not bad.any():
        return  # large finite values overflowed the sum of squares
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    nans = int(np.isnan(batch).sum())
    raise UserError(f"input has {nans} NaN and {int(bad.sum()) - nans} infinite values (first at index {first}); "
                    "runtimes disagree on what they return for them: clean the data, or pass "
                    "check_finite=False to runtime.load to skip this check")


# Manifest / report names of precisions, from the names runtimes use for element types.
PRECISION_NAMES = {"f32": "fp32", "float32": "fp32", "float": "fp32", "f16": "fp16", "float16": "fp16",
                   "bf16": "bf16", "bfloat16": "bf16", "u8": "int8", "i8": "int8", "uint8": "int8", "int8": "int8"}


def summarise_precisions(precisions: Counter, fallback: str) -> str:
    """`fp32`, or `int8+fp32` (most layers first) where compute layers run in several precisions."""
    if not precisions:
        return fallback
    return "+".join(p for p, _ in precisions.most_common())


@dataclass(frozen=True)
class ModelSpec:
    """What a session opens: one model file and what the session must know of it besides the file. `load` and
    `open_session` read it from an artifact's manifest (`of_artifact`); `open_model` takes it from the caller."""
    directory: Path               # where the model file lies (an artifact: its directory)
    file: str | None              # the model file, relative to `directory`; None: the session finds its model
                                  # otherwise (torch: the manifest's weight record; early_exit: its stage files)
    model_format: str             # which of the backend's formats the file is (a key of a manifest's model_files)
    precision: str                # what the model was exported or quantized at (fp32, fp16, bf16, int8)
    input: InputSpec
    output: str = OUTPUT_NAME     # the logits output's name (TensorRT binds it by name)
    manifest: dict[str, Any] | None = None  # the artifact's, when opened from one; None for a bare model file

    @classmethod
    def of_artifact(cls, directory: Path, manifest: dict[str, Any], model_format: str) -> ModelSpec:
        return cls(Path(directory), manifest["model_files"].get(model_format), model_format, manifest["precision"],
                   InputSpec.from_manifest(manifest), (manifest.get("output") or {}).get("name", OUTPUT_NAME),
                   manifest)

    @property
    def path(self) -> Path:
        if self.file is None:
            raise UserError(f"no {self.model_format} model file in {self.directory}")
        return self.directory / self.file


class Session:
    """A model loaded on one backend: `run(batch) -> logits`, `close()`, usable as a context manager."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]   # keys of the manifest's model_files this backend reads
    # File suffix → the format it is, for `open_model` on a bare file (one format alone needs none).
    suffixes: ClassVar[dict[str, str]] = {}
    # Whether `open_model` can open a bare model file on it (False: it needs an artifact's manifest).
    opens_model_files: ClassVar[bool] = True
    runs_early_exit: ClassVar[bool] = False  # runs a BranchyNet artifact's stage loop (early_exit_session.py)
    # Whether sessions of this backend draw on one process-wide thread pool; if each owns its own, the early-exit
    # loop gives its stage sessions one thread each, so their pools do not fight over the cores.
    shares_threads: ClassVar[bool] = True

    def __init__(self, model: ModelSpec, *, check_finite: bool = True) -> None:
        if not isinstance(check_finite, bool):
            raise UserError(f"check_finite must be True or False, got {check_finite!r}")
        self.model_spec = model
        self.directory = model.directory
        self.manifest = model.manifest        # None for a bare model file (open_model)
        self.model_format = model.model_format
        self.precision = model.precision
        self.input_spec = model.input
        self.check_finite = check_finite
        self._closed = False

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The keyword options `runtime.load` accepts for this backend (from the constructors' signatures)."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for param in list(inspect.signature(init).parameters.values())[2:]:
                if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name not in names:
                    names.append(param.name)
        return tuple(sorted(names))

    @classmethod
    def pick_format(cls, manifest: dict[str, Any]) -> str | None:
        """The first of this backend's formats the artifact has, or None."""
        return cls.format_of(manifest["model_files"])

    @classmethod
    def format_of(cls, model_files: dict[str, str]) -> str | None:
        """The first of this backend's formats among `model_files` (format → file), or None."""
        return next((f for f in cls.formats if f in model_files), None)

    @property
    def model_path(self) -> Path:
        return self.model_spec.path

    def run(self, batch: Any) -> np.ndarray:
        """Logits for a float N×C×H×W batch (numpy array or torch tensor), validated against the manifest."""
        if self._closed:
            raise UserError(f"the {self.name} session of {self.directory} is closed")
        return self._run(self.input_spec.validate(batch, self.check_finite))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in order, for an already validated batch (multi-output stage graphs)."""
        return [self._run(batch)]

    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of a graph with more inputs than the image (an early-exit graph's thresholds), in order."""
        raise UserError(f"the {self.name} backend runs graphs with one input only")

    @functools.cached_property
    def executed_precision(self) -> str:
        """The precision the runtime really computes in (fp32, fp16, bf16, int8, or e.g. int8+fp32 when mixed).

        Each backend asks its runtime; it can differ from the artifact's precision (an fp16 artifact on a
        CPU without FP16 arithmetic runs in fp32).
        """
        return self._executed_precision()

    def _executed_precision(self) -> str:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """How the session runs (backend, threads, precision), for benchmark records."""
        return {"backend": self.name, "model_file": self.model_spec.file,
                "artifact_precision": self.precision, "executed_precision": self.executed_precision,
                "check_finite": self.check_finite}

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS: Registry[type[Session]] = Registry("backend", sort_choices=True)
register_backend = BACKENDS.register   # @register_backend on a Session subclass files it under its name


def load_error(session: Session, e: Exception) -> ArtifactError:
    """What a backend raises when its runtime cannot read the artifact's model file."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ArtifactError(f"{session.name} cannot load {session.model_path} ({first}); the file is corrupt "
                         "or was written for another version: export again")


def _refuse_unknown_options(cls: type[Session], backend: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        raise UserError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for the "
                        f"{backend} backend; it accepts {', '.join(cls.options())}")


def open_session(directory: Path | str, manifest: dict[str, Any], backend: str | None = None,
                 threads: int | None = None, **options: Any) -> Session:
    """A session on an already-validated manifest (export uses this on its staging directory)."""
    backend = backend or manifest["default_backend"]
    cls = BACKENDS.lookup(backend)
    if "early_exit" in manifest and not cls.runs_early_exit and not options.pop("trunk", False):
        raise UserError(f"{directory} is an early-exit artifact ({len(manifest['early_exit']['stages'])} stages): "
                        f"load it with backend='early_exit' (runtime={backend!r}), or pass trunk=True to run "
                        "the plain network")
    _refuse_unknown_options(cls, backend, options)
    model_format = cls.pick_format(manifest)
    if model_format is None:
        raise UserError(f"backend {backend!r} reads {' or '.join(cls.formats)} models, and this "
                        f"{manifest['target']} artifact has {', '.join(manifest['model_files']) or 'none'}; "
                        f"use backend={manifest['default_backend']!r} or export for another target")
    if threads is not None:
        positive_int("threads", threads)
    return cls(ModelSpec.of_artifact(Path(directory), manifest, model_format), threads=threads, **options)


def open_model(model_file: Path | str, backend: str, *, precision: str = "fp32",
               input: InputSpec | dict[str, Any] | None = None, output: str = OUTPUT_NAME,
               model_format: str | None = None, threads: int | None = None, **options: Any) -> Session:
    """A session on a bare model file, without an artifact or a manifest (what export and `edgecnn.quantize` run
    on the files they have just written): the same session classes `load` returns.

    `precision`: what the model is (OpenVINO picks its inference precision from it; `info()` reports it). `input`:
    an `InputSpec` or a manifest-style record (name, shape with a string for a dynamic batch axis, dtype, layout);
    default: read from the .onnx / .xml file. `output`: the logits output's name (TensorRT binds it by name).
    `model_format`: which of the backend's formats the file is; default from its suffix. Options as for `load`.
    """
    path = Path(model_file)
    cls = BACKENDS.lookup(backend)
    if not cls.opens_model_files:
        raise UserError(f"the {backend} backend runs artifacts only (it needs their manifest): export the model and "
                        f"open the artifact with runtime.load(directory, backend={backend!r})")
    fmt = model_format or cls.suffixes.get(path.suffix.lower()) or \
        (cls.formats[0] if len(cls.formats) == 1 and not cls.suffixes else None)
    if fmt not in cls.formats:
        named = f"is {fmt!r}" if fmt else f"is none of them (by its suffix, {', '.join(cls.suffixes)})"
        raise UserError(f"backend {backend!r} reads {' or '.join(cls.formats)} models, and {path.name} {named}: "
                        "choose the backend that reads it, or pass model_format=")
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    _refuse_unknown_options(cls, backend, options)
    if threads is not None:
        positive_int("threads", threads)
    spec = input if isinstance(input, InputSpec) else \
        InputSpec.from_record(input) if input is not None else InputSpec.of_model(path)
    return cls(ModelSpec(path.parent, path.name, fmt, precision, spec, output), threads=threads, **options)


def load(directory: Path | str, backend: str | None = None, threads: int | None = None, **options: Any) -> Session:
    """Open the artifact in `directory` on `backend` (default: the one its target is meant for).

    Options: `threads` (every backend), `check_finite` (default True: refuse NaN/inf inputs), and the
    backend's own (OpenVINO: `performance_hint`, `inference_precision`); `Session.options()` lists them.
    An early-exit (BranchyNet) artifact runs on `backend="early_exit"` (its stages on `runtime=`); a plain
    backend runs its trunk only when asked with `trunk=True`.
    """
    return open_session(directory, read_manifest(directory), backend, threads, **options)


# The sessions and ONNX Runtime helpers, still importable from here, where they were before export/backends/ (read
# on first use: a backend module imported before this one imports this one while it loads).
_FROM_BACKENDS = {"OnnxRuntimeSession": "onnxruntime", "onnx_compute_precision": "onnxruntime",
                  "onnxruntime_compute_precision": "onnxruntime", "onnxruntime_options": "onnxruntime",
                  "OPENVINO_HINTS": "openvino", "OPENVINO_PRECISIONS": "openvino", "OpenVinoSession": "openvino",
                  "TensorRTSession": "tensorrt", "TorchSession": "torch"}


def __getattr__(name: str) -> Any:
    if name in _FROM_BACKENDS:
        import importlib

        return getattr(importlib.import_module(f"edgecnn.export.backends.{_FROM_BACKENDS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Every runtime's session registers from its backend module; early_exit_session's runs the stages of a BranchyNet
# artifact on any of them. Both import only what this module defines above (no torch, no export passes).
from edgecnn.export import backends, early_exit_session  # noqa: E402,F401

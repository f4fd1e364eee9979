"""PyTorch eager: the reference every other runtime is held to; no target of its own, no quantizer.

- session `torch`: the eager model rebuilt from an artifact's weight record (`edgecnn.export.source`), whatever
  the artifact's target.
- profiler: PyTorch's own (`torch.autograd.profiler`), per module, for `edgecnn explain`'s eager column.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgecnn.export.backends import Backend, register
from edgecnn.export.profile import NodeTime, ProfiledRun
from edgecnn.export.runtime import PRECISION_NAMES, ModelSpec, Session, register_backend, summarise_precisions


# ---------------------------------------------------------------- the session

@register_backend
class TorchSession(Session):
    """The eager PyTorch model the artifact came from: the reference every other backend is held to."""

    name = "torch"
    formats = ("pytorch",)
    opens_model_files = False  # rebuilt from an artifact manifest's weight record

    def __init__(self, model: ModelSpec, threads: int | None = None, **common: Any) -> None:
        super().__init__(model, **common)
        from edgecnn.export.source import rebuild_source_model

        self.threads = threads
        self._model = rebuild_source_model(self.manifest["model"])

    @classmethod
    def pick_format(cls, manifest: dict[str, Any]) -> str | None:
        return "pytorch"  # rebuilt from the manifest's weight record, whatever the target

    @property
    def model_path(self) -> Path:
        return Path(self.manifest["model"]["weights"].get("path") or "")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                return self._model(torch.from_numpy(batch).float()).numpy()
        finally:
            torch.set_num_threads(previous)

    def _executed_precision(self) -> str:
        found = Counter(str(p.dtype).removeprefix("torch.") for p in self._model.parameters())
        return summarise_precisions(Counter({PRECISION_NAMES.get(k, k): n for k, n in found.items()}), "fp32")

    def info(self) -> dict[str, Any]:
        import torch

        return {**super().info(), "version": torch.__version__,
                "threads": self.threads or torch.get_num_threads()}

    def close(self) -> None:
        self._model = None
        super().close()


# ---------------------------------------------------------------- the profiler

# Reading a call's profile costs ~30 ms (resnet18_fmnist, ~300 events): every profiled call runs under the profiler,
# so its latency with the profiler is every call's, and one call in this many is read.
READ_EVERY = 10
_RANGE = "edgecnn::"


class TorchProfiledRun(ProfiledRun):
    """The eager model of an FP32 artifact (`path`: its model file; the manifest beside it names the weights) as
    TorchSession runs it; with `trace`, each leaf module runs in a `record_function` range of PyTorch's profiler.

    A layer is a module with a weight of rank ≥ 2 (a convolution, a linear layer), as the exported graph's layers are;
    the parameterless and normalisation modules after it (ReLU, pooling, BatchNorm, which the exporters fold or the
    runtimes fuse) are timed with it, and listed as fused. Work outside modules (a functional residual add) is in the
    latency, not in a layer."""

    def __init__(self, path: Path, precision: str, threads: int | None, trace: Path | None,
                 module: Any = None) -> None:
        import torch

        if module is None:
            from edgecnn.export.manifest import read_manifest
            from edgecnn.export.source import rebuild_source_model

            module = rebuild_source_model(read_manifest(Path(path).parent)["model"])
        self._model, self._threads, self._torch = module, threads, torch
        self._calls, self._read = 0, []
        self._profiled = trace is not None
        self._group: dict[str, str] = {}
        self._ranges: dict[str, Any] = {}
        if self._profiled:
            self._hook(torch)

    def _hook(self, torch: Any) -> None:
        """A profiler range around every leaf module, and each leaf's layer (the weighted module at or before it)."""
        layer = None
        for name, module in self._model.named_modules():
            if next(module.children(), None) is not None:
                continue
            if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
                layer = name
            self._group[name] = layer or name

            def enter(_module: Any, _inputs: Any, name: str = name) -> None:
                self._ranges[name] = torch.autograd.profiler.record_function(_RANGE + name).__enter__()

            def leave(_module: Any, _inputs: Any, _output: Any, name: str = name) -> None:
                self._ranges.pop(name).__exit__(None, None, None)

            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)

    @classmethod
    def per_call(cls, batch: np.ndarray, work: Path, threads: int | None) -> ProfiledRun:
        import torch

        return cls(work, "fp32", threads, None, module=torch.nn.ReLU())

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        previous = torch.get_num_threads()
        if self._threads:
            torch.set_num_threads(self._threads)
        try:
            with torch.no_grad():
                if not self._profiled:
                    return [self._model(torch.from_numpy(batch).float()).numpy()]
                with _kineto_quiet(), torch.autograd.profiler.profile(use_kineto=False) as profile:
                    out = self._model(torch.from_numpy(batch).float()).numpy()
                if self._calls % READ_EVERY == 0:
                    self._read.append(profile)
                self._calls += 1
                return [out]
        finally:
            torch.set_num_threads(previous)

    def node_times(self) -> list[NodeTime]:
        per_call: list[dict[str, float]] = []
        kernels: dict[str, dict[str, float]] = {}
        members: dict[str, list[str]] = {}
        for profile in self._read:
            times: dict[str, float] = {}
            for event in profile.function_events:
                if not event.name.startswith(_RANGE):
                    continue
                module = event.name.removeprefix(_RANGE)
                layer = self._group[module]
                times[layer] = times.get(layer, 0.0) + event.cpu_time_total
                members.setdefault(layer, [])
                if module != layer and module not in members[layer]:
                    members[layer].append(module)
                kernel = _innermost(event)
                kernels.setdefault(layer, {})[kernel.name] = kernel.cpu_time_total
            per_call.append(times)
        return [NodeTime(layer, "module", max(kernels[layer], key=kernels[layer].get),
                         statistics.median(call.get(layer, 0.0) for call in per_call), members[layer])
                for layer in members]


@contextlib.contextmanager
def _kineto_quiet() -> Iterator[None]:
    """Keep stderr's file descriptor shut while the profiler starts and stops: libkineto writes two lines there per
    session ("USDT: ... profiler_start"), whatever KINETO_LOG_LEVEL says, and explain's output is the report."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _innermost(event: Any) -> Any:
    """The op that did the work under a profiler range: the costliest child, down to one with no children."""
    while event.cpu_children:
        event = max(event.cpu_children, key=lambda child: child.cpu_time_total)
    return event


# ---------------------------------------------------------------- the backend

register(Backend(
    "torch", "PyTorch eager (the FP32 reference)", None, (TorchSession,), tools=("torch",),
    unavailable=lambda: None, profiler=TorchProfiledRun))

__all__ = ["TorchProfiledRun", "TorchSession"]

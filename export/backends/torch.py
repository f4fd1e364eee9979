"""PyTorch eager: the reference every other runtime is held to; no target of its own, no quantizer.

- session `torch`: the eager model rebuilt from an artifact's weight record (`edgecnn.export.source`), whatever
  the artifact's target.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.export.backends import Backend, register
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


# ---------------------------------------------------------------- the backend

register(Backend(
    "torch", "PyTorch eager (the FP32 reference)", None, (TorchSession,), tools=("torch",),
    unavailable=lambda: None))

__all__ = ["TorchSession"]

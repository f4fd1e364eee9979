"""The images a sweep measures accuracy on, and the eager PyTorch FP32 reference's predictions on them.

`AccuracyData` is one dataset's test split (the weights' own, or --data's), its labels as the model's class indices,
preprocessed per model input in chunks (kept while they fit in PREPROCESSED_CACHE_MB) and cut into the batches an
artifact takes; `reference_predictions` scores the FP32 reference module on the same images.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

if TYPE_CHECKING:
    from edgecnn.model_ref import WeightsData

REFERENCE_BATCH = 256   # batch of the eager PyTorch FP32 pass that gives the reference predictions
PREPROCESSED_CACHE_MB = 1024  # test inputs kept preprocessed per model input (Fashion-MNIST: 31 MB)


class AccuracyData:
    """Test images of one dataset, preprocessed per model in chunks, and the PyTorch FP32 reference."""

    def __init__(self, source: WeightsData, samples: int | None) -> None:
        self.source = source
        self.test = source.load("test")
        self.data, self.root = source.source, None   # what load_dataset takes (peers read the train split)
        self.count = min(samples or len(self.test), len(self.test))
        self.labels = self.test.labels[:self.count].numpy()
        self._inputs: dict[tuple[Any, ...], np.ndarray] = {}

    def aligned(self, config: Any) -> AccuracyData | None:
        """This data with its labels as `config`'s class indices (its class names may order them otherwise); None
        when it is not labelled with the model's classes."""
        from edgecnn.model_ref import aligned_labels

        if len(self.test.class_names) != config.num_classes:
            return None
        order = aligned_labels(self.test.class_names, config)
        if order is None:
            return self
        view = copy.copy(self)
        view.labels = np.asarray(order)[self.labels]
        return view

    def _preprocessed(self, config: Any, start: int, stop: int) -> np.ndarray:
        from edgecnn.data import preprocess

        images, _ = self.test.get_batch(range(start, stop), size=tuple(config.input_size[1:]))
        return preprocess(images, config).numpy()

    def inputs(self, config: Any) -> np.ndarray | None:
        """All test inputs preprocessed for `config`, kept while they fit in PREPROCESSED_CACHE_MB."""
        key = (tuple(config.input_size), tuple(config.mean), tuple(config.std))
        if key not in self._inputs:
            if self.count * int(np.prod(config.input_size)) * 4 > PREPROCESSED_CACHE_MB * 2**20:
                return None
            chunk = 1000
            self._inputs[key] = np.concatenate([self._preprocessed(config, i, min(i + chunk, self.count))
                                                for i in range(0, self.count, chunk)])
        return self._inputs[key]

    def batches(self, config: Any, batch: int) -> Iterator[tuple[np.ndarray, int]]:
        """(input, real rows): static-batch artifacts get the last chunk padded with zeros."""
        cached = self.inputs(config)
        for start in range(0, self.count, batch):
            stop = min(start + batch, self.count)
            x = cached[start:stop] if cached is not None else self._preprocessed(config, start, stop)
            if len(x) < batch:
                x = np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), x.dtype)])
            yield np.ascontiguousarray(x), stop - start

    def predictions(self, run: Callable[[np.ndarray], np.ndarray], config: Any, batch: int) -> np.ndarray:
        out = [np.asarray(run(x))[:rows].argmax(axis=1) for x, rows in self.batches(config, batch)]
        return np.concatenate(out)

    def top1(self, predictions: np.ndarray) -> float:
        return round(float((predictions == self.labels).mean() * 100), 3)


def reference_predictions(module: Any, config: Any, data: AccuracyData, threads: int) -> tuple[np.ndarray, float]:
    """Predictions and top-1 of the eager FP32 reference `module` on `data`, on `threads` torch threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            preds = data.predictions(lambda x: module(torch.from_numpy(x)).numpy(), config, REFERENCE_BATCH)
    finally:
        torch.set_num_threads(previous)
    return preds, data.top1(preds)


__all__ = ["AccuracyData", "reference_predictions"]

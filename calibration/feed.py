"""Calibration samples in each quantizer's input format: the graph's input name, dtype and batch size.

ONNX Runtime's `quantize_static` pulls feeds from a `CalibrationDataReader`; NNCF iterates an
`nncf.Dataset`; ModelOpt takes the whole array (or a name → array dict). All of them get the
same preprocessed float32 NCHW samples cut into the graph's static batch.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgecnn.calibration.samples import SampleSet, batches


class OnnxRuntimeFeed(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a sample set (re-readable via `rewind`)."""

    def __init__(self, samples: SampleSet | np.ndarray, input_name: str, batch: int | None) -> None:
        inputs = samples.inputs if isinstance(samples, SampleSet) else samples
        self._batches = batches(inputs, batch)
        self.input_name = input_name
        self._iter: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._iter, None)
        return None if chunk is None else {self.input_name: chunk}

    def rewind(self) -> None:
        self._iter = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def as_nncf_dataset(samples: SampleSet, batch: int | None) -> Any:
    """An `nncf.Dataset` of batches; its length is NNCF's `subset_size` for using every sample."""
    import nncf

    return nncf.Dataset(batches(samples.inputs, batch))


def as_modelopt_data(samples: SampleSet, input_name: str) -> dict[str, np.ndarray]:
    """ModelOpt's `calibration_data`: input name → all samples (it batches by the graph's own batch size)."""
    return {input_name: np.ascontiguousarray(samples.inputs)}

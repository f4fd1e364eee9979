"""edgecnn.calibration: what quantization learns from data, and how edgecnn chooses among quantizers' results.

    from edgecnn.calibration import CalibrationOptions, prepare_calibration
    data = prepare_calibration(config, config.input_size, CalibrationOptions(samples=512))
    data.calibration.inputs      # 512 preprocessed float32 images, class-balanced, from train minus validation
    data.validation              # the validation split the calibrator choice and --max-drop are scored on

A --calib-data folder's class sub-folders are matched to the model's classes by name (`match_classes`);
a flat folder of images calibrates alone (UNLABELLED_CALIBRATOR unless a fixed one is given).

Modules: `samples` (selection, checks, provenance hashes), `feed` (each quantizer's input format),
`selection` (calibrator choice by accuracy, the float fallback search), `tensorrt_cache` (TensorRT's
calibration cache and its model stamp). The calibrators themselves are ONNX Runtime's, NNCF's and
ModelOpt's. It sits between the models/data (`edgecnn`) and the export stage, and imports nothing
from `edgecnn.export`.
"""
from edgecnn.calibration.feed import OnnxRuntimeFeed, as_modelopt_data, as_nncf_dataset
from edgecnn.calibration.samples import (CALIBRATOR_NAMES, DEFAULT_SAMPLES, DEPRECATED_CALIBRATORS, FALLBACKS,
                                         PLACEMENTS, SYNTHETIC, UNLABELLED_CALIBRATOR, CalibrationData,
                                         CalibrationOptions, SampleSet, balanced_indices, batches, canonical_calibrator,
                                         check_calibration_source, check_inputs, from_arrays, match_classes,
                                         prepare_calibration)
from edgecnn.calibration.selection import CalibratorChoice, FallbackResult, accuracy, accuracy_of, choose_calibrator, \
    correct, fallback_to_float, measurable_drop, paired_comparison, resolution_record
from edgecnn.calibration.tensorrt_cache import read_cache, write_cache

__all__ = ["CALIBRATOR_NAMES", "DEFAULT_SAMPLES", "DEPRECATED_CALIBRATORS", "FALLBACKS", "PLACEMENTS", "SYNTHETIC",
           "UNLABELLED_CALIBRATOR", "CalibrationData", "CalibrationOptions", "CalibratorChoice", "FallbackResult",
           "OnnxRuntimeFeed", "SampleSet", "accuracy", "accuracy_of", "as_modelopt_data", "as_nncf_dataset",
           "balanced_indices", "batches", "canonical_calibrator", "check_calibration_source", "check_inputs",
           "choose_calibrator", "correct", "fallback_to_float", "from_arrays", "match_classes", "measurable_drop",
           "paired_comparison", "prepare_calibration", "read_cache", "resolution_record", "write_cache"]

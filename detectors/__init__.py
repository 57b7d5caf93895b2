"""Feature-squeezing detection: pure computation, usable on its own from a notebook.

>>> from detectors import Detector  # doctest: +SKIP
>>> detector = Detector.from_file("detector.json")  # doctest: +SKIP
>>> verdicts = detector.score(batch)  # doctest: +SKIP

Nothing here reads the environment or talks to Kafka, a database or metrics.
"""

from __future__ import annotations

from detectors._errors import (
    CalibrationError,
    DetectorError,
    DetectorFileError,
    DriftConfigError,
    ExecutionProviderError,
    InvalidInputError,
    ModelHashMismatchError,
    ModelValidationError,
    SqueezerSpecError,
)
from detectors.calibration import (
    MIN_CALIBRATION_EVENTS,
    Calibration,
    FeatureStats,
    calibrate_threshold,
)
from detectors.detector import (
    CalibrationSummary,
    Detector,
    DetectorConfig,
    DetectorScores,
    calibrate_detector,
    detect_output_kind,
    file_sha256,
    preset_for,
)
from detectors.drift import (
    DRIFT_DETECTORS,
    SIGNALS,
    DriftAlarm,
    DriftDetector,
    DriftDetectorSpec,
    DriftMonitor,
    DriftVerdict,
    SignalSpec,
    default_signals,
    signal_columns,
)
from detectors.graph import (
    FUSED_OUTPUTS,
    ModelSignature,
    OutputKind,
    build_squeeze_graph,
    check_squeezers_apply,
    inspect_model,
    load_model,
)
from detectors.inputs import input_from_bytes, input_from_nested_list, validate_input
from detectors.runtime import Device, SqueezeScorer, SqueezeScores, create_session
from detectors.squeezers import (
    PRESETS,
    BitDepth,
    InputKind,
    MedianFilter,
    QuantileGrid,
    Quantize,
    RoundDecimals,
    Squeezer,
    format_squeezer_spec,
    parse_squeezer_spec,
)

__all__ = [
    "DRIFT_DETECTORS",
    "FUSED_OUTPUTS",
    "MIN_CALIBRATION_EVENTS",
    "PRESETS",
    "SIGNALS",
    "BitDepth",
    "Calibration",
    "CalibrationError",
    "CalibrationSummary",
    "Detector",
    "DetectorConfig",
    "DetectorError",
    "DetectorFileError",
    "DetectorScores",
    "Device",
    "DriftAlarm",
    "DriftConfigError",
    "DriftDetector",
    "DriftDetectorSpec",
    "DriftMonitor",
    "DriftVerdict",
    "ExecutionProviderError",
    "FeatureStats",
    "InputKind",
    "InvalidInputError",
    "MedianFilter",
    "ModelHashMismatchError",
    "ModelSignature",
    "ModelValidationError",
    "OutputKind",
    "QuantileGrid",
    "Quantize",
    "RoundDecimals",
    "SignalSpec",
    "SqueezeScorer",
    "SqueezeScores",
    "Squeezer",
    "SqueezerSpecError",
    "build_squeeze_graph",
    "calibrate_detector",
    "calibrate_threshold",
    "check_squeezers_apply",
    "create_session",
    "default_signals",
    "detect_output_kind",
    "file_sha256",
    "format_squeezer_spec",
    "input_from_bytes",
    "input_from_nested_list",
    "inspect_model",
    "load_model",
    "parse_squeezer_spec",
    "preset_for",
    "signal_columns",
    "validate_input",
]

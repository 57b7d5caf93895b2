"""The exception tree of :mod:`detectors`.

::

    DetectorError
    ├── ModelValidationError     the ONNX model cannot be monitored as given
    ├── SqueezerSpecError        a squeezer spec string is malformed
    ├── CalibrationError         a threshold cannot be calibrated from the data given
    ├── InvalidInputError        one event's input does not fit the model
    ├── DetectorFileError        a detector file cannot be read or is inconsistent
    │   └── ModelHashMismatchError   the model file changed since calibration
    └── ExecutionProviderError   the requested ONNX Runtime device is not usable
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "DetectorError",
    "DetectorFileError",
    "DriftConfigError",
    "ExecutionProviderError",
    "InvalidInputError",
    "ModelHashMismatchError",
    "ModelValidationError",
    "SqueezerSpecError",
]


class DetectorError(Exception):
    """Root of every error raised by :mod:`detectors`."""


class ModelValidationError(DetectorError):
    """The ONNX model does not have the shape advmon can monitor."""


class SqueezerSpecError(DetectorError, ValueError):
    """A squeezer spec such as ``bit_depth:1,median:2`` is malformed."""


class CalibrationError(DetectorError):
    """A threshold cannot be calibrated at the requested false-positive rate."""


class InvalidInputError(DetectorError, ValueError):
    """One event's input cannot be fed to the model.

    ``reason`` is a short machine-friendly label (``shape``, ``dtype``, ``non_finite``,
    ``ragged``, ``range``, ``too_large``); the message says what was wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DetectorFileError(DetectorError):
    """A detector file is missing, malformed, or does not match its model."""


class ModelHashMismatchError(DetectorFileError):
    """The model file's SHA-256 differs from the one recorded at calibration."""


class ExecutionProviderError(DetectorError):
    """The requested ONNX Runtime execution provider cannot be used."""


class DriftConfigError(DetectorError, ValueError):
    """A drift signal or drift detector is misconfigured (unknown name or parameter)."""

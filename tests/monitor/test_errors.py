from __future__ import annotations

import inspect
import pickle

import pytest

import monitor.errors
from monitor.errors import AdvmonError, InvalidRecordError
from monitor.formats import FormatError, FormatErrorReason


def _error_classes() -> list[type[BaseException]]:
    classes = [getattr(monitor.errors, name) for name in monitor.errors.__all__]
    return [c for c in classes if inspect.isclass(c) and issubclass(c, BaseException)]


@pytest.mark.parametrize("error", _error_classes(), ids=lambda e: e.__name__)
def test_every_monitor_error_has_the_one_root(error: type[BaseException]) -> None:
    assert issubclass(error, AdvmonError)


def test_the_tree_in_the_docstring_names_every_error() -> None:
    drawn = monitor.errors.__doc__ or ""
    missing = [e.__name__ for e in _error_classes() if e.__name__ not in drawn]
    assert missing == []


def test_a_format_error_is_a_refused_record_with_its_reason() -> None:
    error = FormatError(FormatErrorReason.INVALID_JSON, "message value is not valid JSON")
    assert isinstance(error, InvalidRecordError)
    assert (error.reason, error.message, str(error)) == (
        "invalid_json",
        "message value is not valid JSON",
        "message value is not valid JSON",
    )


@pytest.mark.parametrize(
    "error",
    [
        InvalidRecordError("shape", "input has shape (3,)", event_id="e1", model_id="m"),
        FormatError(FormatErrorReason.INVALID_SAGEMAKER, "not a capture record"),
    ],
)
def test_refused_records_keep_their_reason_across_processes(error: InvalidRecordError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.reason, copy.message, copy.event_id, copy.model_id) == (
        error.reason,
        error.message,
        error.event_id,
        error.model_id,
    )

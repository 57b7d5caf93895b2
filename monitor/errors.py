"""The exception tree of :mod:`monitor`: every error the running system raises on purpose.

::

    AdvmonError
    ├── ConfigError              the worker config cannot be read, is invalid, or does not
    │                            fit the broker
    ├── UnknownSettingError      ADVMON_* variables that are no setting (also ValueError)
    ├── BrokerUnreachableError   no Kafka broker answered when the worker started
    ├── BrokerError              a local broker process (demo, tests) did not start
    ├── DecisionClientError      the serving client could not start
    ├── InvalidRecordError       one Kafka record cannot be decoded or validated; ``reason``
    │   │                        is the dead-letter reason, the same in every command
    │   └── FormatError          a serving stack's record does not decode (monitor.formats)
    ├── UnsafeStateError         a stored drift state refers to something it is never made of
    ├── DatabaseUrlError         ADVMON_DATABASE__URL is not a usable URL (also ValueError)
    ├── SchemaBehindError        the database schema is older than this advmon
    ├── IncidentNotFoundError    no incident has the given id (also LookupError)
    ├── InvalidTransitionError   a status change that is not allowed (also ValueError)
    ├── AlertDeliveryError       no Alertmanager accepted the alerts
    ├── InspectError             ``advmon inspect`` cannot inspect the topic as asked
    │   └── InspectUsageError    its options are missing or contradict each other
    ├── DemoError                the streaming demo could not run
    ├── ReportError              a robustness report is invalid, unreadable or unwritable
    └── MlflowLoggingError       a robustness report could not be logged to MLflow

The detectors and the wire contracts have trees of their own
(:class:`detectors.DetectorError`, :class:`schemas.SchemaError`): they are usable without
the running system. Where an error also belongs to a built-in family (``ValueError``,
``LookupError``, ``RuntimeError``, ``pickle.UnpicklingError``), it derives from that too,
so that code catching the built-in keeps working.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AdvmonError",
    "AlertDeliveryError",
    "BrokerError",
    "BrokerUnreachableError",
    "ConfigError",
    "DatabaseUrlError",
    "DecisionClientError",
    "DemoError",
    "IncidentNotFoundError",
    "InspectError",
    "InspectUsageError",
    "InvalidRecordError",
    "InvalidTransitionError",
    "MlflowLoggingError",
    "ReportError",
    "SchemaBehindError",
    "UnknownSettingError",
    "UnsafeStateError",
    "validation_problem",
]


class AdvmonError(Exception):
    """The root of every error :mod:`monitor` raises on purpose."""


class ConfigError(AdvmonError):
    """The worker config cannot be read, is invalid, or does not fit the broker; the message
    says where and why."""


class UnknownSettingError(AdvmonError, ValueError):
    """``ADVMON_*`` environment variables that are no setting (a typo has no effect)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


class BrokerUnreachableError(AdvmonError, RuntimeError):
    """No Kafka broker answered at start; the message names the bootstrap servers."""


class BrokerError(AdvmonError, RuntimeError):
    """The local broker could not be started; the message includes its log."""


class DecisionClientError(AdvmonError):
    """The client could not start: broker unreachable, bad credentials, bad settings."""


class InvalidRecordError(AdvmonError, ValueError):
    """One Kafka record (or one event in it) that cannot be decoded or validated.

    Every command that reads records (the worker, ``advmon inspect``, ``score``,
    ``calibrate``) refuses a record with this error, so the reason and the words are the
    same wherever it is met.

    Parameters
    ----------
    reason
        A short snake_case code for metrics and dead letters (``invalid_event``,
        ``shape``, ``unknown_model``, a :class:`monitor.formats.FormatErrorReason` …).
    message
        What was wrong, in words; also ``str(error)``.
    event_id, model_id
        The event's id and model when the record decoded into an event before it was
        refused, else ``None``.

    Examples
    --------
    >>> error = InvalidRecordError("unknown_model", "model_id 'x' is not monitored")
    >>> error.reason, str(error)
    ('unknown_model', "model_id 'x' is not monitored")
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        event_id: str | None = None,
        model_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.event_id = event_id
        self.model_id = model_id

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions pickle through ``args`` (the message only); keep the rest too.
        return (
            _rebuild_invalid_record,
            (type(self), self.reason, self.message, self.event_id, self.model_id),
        )


def _rebuild_invalid_record(
    cls: type[InvalidRecordError],
    reason: str,
    message: str,
    event_id: str | None,
    model_id: str | None,
) -> InvalidRecordError:
    error = cls.__new__(cls)
    InvalidRecordError.__init__(error, reason, message, event_id=event_id, model_id=model_id)
    return error


class UnsafeStateError(AdvmonError, pickle.UnpicklingError):
    """A stored drift state refers to something a drift state is never made of."""


class DatabaseUrlError(AdvmonError, ValueError):
    """``ADVMON_DATABASE__URL`` is not a usable SQLAlchemy URL."""


class SchemaBehindError(AdvmonError, RuntimeError):
    """The database schema is older than this advmon; ``advmon db upgrade`` fixes it."""


class IncidentNotFoundError(AdvmonError, LookupError):
    """No incident has the given id."""


class InvalidTransitionError(AdvmonError, ValueError):
    """The requested status change is not allowed (e.g. acknowledging a resolved incident)."""


class AlertDeliveryError(AdvmonError, RuntimeError):
    """No Alertmanager accepted the alerts; they are posted again later."""


class InspectError(AdvmonError):
    """Something the user must fix before a topic can be inspected; the message says what."""


class InspectUsageError(InspectError):
    """Command-line options that are missing or contradict each other."""


class DemoError(AdvmonError, RuntimeError):
    """The streaming demo could not run; the message says what failed."""


class ReportError(AdvmonError):
    """A robustness report that is not valid, cannot be read or cannot be written.

    ``problems`` lists what the schema found, each as ``JSON path: what is wrong``; it is
    empty when the file could not be read or decoded at all.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class MlflowLoggingError(AdvmonError):
    """The report could not be logged to MLflow: the extra is not installed, the run does
    not exist, or the tracking server refused; the message says which."""


def validation_problem(error: ValidationError) -> str:
    """The first problem pydantic found, worded to continue a sentence.

    >>> from pydantic import BaseModel
    >>> class Record(BaseModel):
    ...     id: str
    >>> try:
    ...     Record.model_validate({})
    ... except Exception as exc:
    ...     print(validation_problem(exc))
    field 'id': field required
    """
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"]
    # pydantic capitalises its messages ("Field required"); ours continue a sentence.
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        message = message[0].lower() + message[1:]
    return f"field {field!r}: {message}"

"""Any other JSON layout, through a per-model mapping of JSONPath expressions (format ``mapped``).

A model whose serving stack logs its own JSON gives, in its config, one JSONPath per
native event field::

    event_id: $.meta.id            # required
    input: $.payload.features      # required: a nested list, or {dtype, shape, data_b64}
    output: $.result.scores        # optional, likewise source, ts, request_id, model_version
    source: $.meta.user
    ts: $.meta.time

Paths are parsed by ``jsonpath-ng``'s extended parser (``jsonpath_ng.ext``), so filters
work: ``$.outputs[?(@.name == 'probs')].data``. Each path must select exactly one value:
select an array itself (``$.features``), not its elements (``$.features[*]``). A path of
an optional field that matches nothing, or matches ``null``, leaves the field unset.

Values are used as they are, with two conveniences: an integer id (``event_id``,
``request_id``, ``source``, ``model_version``) becomes its decimal string, and a single
number for ``output`` becomes a one-element list. ``ts`` is an RFC 3339 string (or epoch
seconds, as pydantic reads them).

Limit (reason ``too_large``): a path that searches the message (recursive descent ``..``,
a wildcard ``*``, a filter ``?(...)`` or a slice) walks every value it passes, at some
tens of microseconds each in ``jsonpath-ng``; a message is searched only if it holds at
most :data:`MAX_SEARCHED_VALUES` JSON values, so that padding a message cannot stall the
worker. Plain paths (``$.payload.features``) read any message the other limits allow.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext.parser import parse as parse_jsonpath
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from monitor.formats._decoding import build_event, load_json
from monitor.formats._errors import FormatError, FormatErrorReason
from schemas import InferenceEvent

__all__ = ["MAX_SEARCHED_VALUES", "FieldMapping", "mapped_event"]

_ID_FIELDS = frozenset({"event_id", "request_id", "source", "model_version"})
_SEARCHING = ("..", "*", "?", ":")

MAX_SEARCHED_VALUES = 2**12
"""JSON values (4,096) a message may hold when a path of its mapping searches it: at about
5 µs per value and path, some 20 ms per searching path at most."""


class FieldMapping(BaseModel):
    """Where each native event field is found in a model's own JSON messages.

    Every value is a JSONPath expression; each is compiled when the mapping is validated,
    so a malformed path fails at start-up with its field and the parser's complaint.

    Examples
    --------
    >>> FieldMapping(event_id="$.meta.id", input="$.payload.features").output is None
    True
    >>> import pydantic
    >>> try:
    ...     FieldMapping(event_id="$.meta.id", input="$.payload[")
    ... except pydantic.ValidationError as error:
    ...     print(error.errors()[0]["loc"], error.errors()[0]["msg"])
    ('input',) malformed JSONPath '$.payload[': Parse error near the end of string!
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    REQUIRED: ClassVar[frozenset[str]] = frozenset({"event_id", "input"})

    event_id: str = Field(description="Path of the event's unique id.")
    input: str = Field(description="Path of the model input without batch axis.")
    output: str | None = Field(default=None, description="Path of the scores or logits.")
    ts: str | None = Field(default=None, description="Path of when serving answered.")
    source: str | None = Field(default=None, description="Path of the caller's identity.")
    request_id: str | None = Field(default=None, description="Path of serving's request id.")
    model_version: str | None = Field(default=None, description="Path of the model version.")

    @field_validator("*")
    @classmethod
    def _compiles(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None:
            try:
                _compiled(path)
            except JSONPathError as exc:
                raise PydanticCustomError(
                    "jsonpath_invalid",
                    "malformed JSONPath {path}: {error}",
                    {"path": repr(path), "error": str(exc)},
                ) from None
        return path

    def paths(self) -> dict[str, str]:
        """The mapped fields and their paths, required ones first."""
        return {name: path for name, path in self.model_dump().items() if path is not None}


def mapped_event(value: bytes, mapping: FieldMapping, *, model_id: str) -> InferenceEvent:
    """The native event of one JSON message of a model configured with a field mapping.

    Raises
    ------
    FormatError
        ``invalid_json``; ``mapping_no_match`` when a required path matches nothing;
        ``mapping_many_matches`` when any path matches several values;
        ``invalid_event`` when the values found break the native contract; ``too_large``
        when a searching path meets a message of more than ``MAX_SEARCHED_VALUES`` values.

    Examples
    --------
    >>> mapping = FieldMapping(event_id="$.meta.id", input="$.payload.x", source="$.meta.user")
    >>> event = mapped_event(
    ...     b'{"meta": {"id": 7, "user": "u-1"}, "payload": {"x": [0.5, 1.5]}}',
    ...     mapping,
    ...     model_id="m",
    ... )
    >>> event.event_id, event.source, event.input
    ('7', 'u-1', [0.5, 1.5])
    """
    document = load_json(value, "message value")
    paths = mapping.paths()
    searching = [path for path in paths.values() if any(s in path for s in _SEARCHING)]
    if searching and _values_beyond(document, MAX_SEARCHED_VALUES):
        raise FormatError(
            FormatErrorReason.TOO_LARGE,
            f"the message holds more than {MAX_SEARCHED_VALUES} JSON values, too many for "
            f"path {searching[0]!r}, which searches it; select large members with a plain "
            "path ($.a.b)",
        )
    fields: dict[str, Any] = {"model_id": model_id}
    for name, path in paths.items():
        matches = _find(path, document, name)
        if not matches or matches[0] is None:
            if name in FieldMapping.REQUIRED:
                raise FormatError(
                    FormatErrorReason.MAPPING_NO_MATCH,
                    f"path {path!r} of field {name!r} matched "
                    f"{'nothing' if not matches else 'null'} in the message",
                )
            continue
        if len(matches) > 1:
            raise FormatError(
                FormatErrorReason.MAPPING_MANY_MATCHES,
                f"path {path!r} of field {name!r} matched {len(matches)} values; it must "
                "select exactly one (select an array itself, e.g. '$.features', not its "
                "elements, '$.features[*]')",
            )
        fields[name] = _coerce(name, matches[0])
    return build_event(fields, f"message {fields.get('event_id')!r}")


def _values_beyond(document: Any, limit: int) -> bool:
    """Whether ``document`` holds more than ``limit`` JSON values (stops counting there)."""
    count, stack = 0, [document]
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


@lru_cache(maxsize=1024)
def _compiled(path: str) -> JSONPath:
    return parse_jsonpath(path)


def _find(path: str, document: Any, name: str) -> list[Any]:
    try:
        return [match.value for match in _compiled(path).find(document)]
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # Filters compare whatever the message holds; a type the expression did not
        # expect is a message that does not fit the mapping.
        raise FormatError(
            FormatErrorReason.MAPPING_NO_MATCH,
            f"path {path!r} of field {name!r} cannot be evaluated on this message: {exc}",
        ) from None


def _coerce(name: str, value: Any) -> Any:
    if name in _ID_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if name == "output" and isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    return value

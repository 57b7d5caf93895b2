"""What to decode a topic's records with: the command line's options and a worker config."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from detectors import DetectorConfig, DetectorError
from monitor.config import EventFormat, ModelConfig, MonitorConfig, load_config
from monitor.decoding import RecordFormat
from monitor.errors import ConfigError, InspectError, InspectUsageError, validation_problem
from monitor.formats import FieldMapping

__all__ = ["DEFAULT_MODEL_ID", "Decoding", "ExpectedInput", "parse_mapping", "resolve_decoding"]

DEFAULT_MODEL_ID = "inspected"
"""The model id given to decoded events when no model is named."""


@dataclass(frozen=True)
class ExpectedInput:
    """What a model's detector accepts: the input shape (``None``: any size on that axis)
    and, for images, the calibrated value range."""

    shape: tuple[int | None, ...]
    value_range: tuple[float, float] | None

    @classmethod
    def of(cls, detector: DetectorConfig) -> ExpectedInput:
        """The input a detector accepts; tabular inputs have no range (as in the worker)."""
        return cls(tuple(detector.input_shape), detector.accepted_range)


@dataclass(frozen=True)
class Decoding(RecordFormat):
    """How to read a topic's records: the worker's :class:`~monitor.decoding.RecordFormat`,
    and the inputs the models' detectors accept.

    Parameters
    ----------
    format, mapping, input_name, output_name
        As in :class:`~monitor.decoding.RecordFormat`; a mapping is required with format
        ``mapped`` and refused with any other.
    model_id
        Given to the events of formats other than native; ``inspected`` unless named.
    expected
        The models events may belong to, by id, each with the input its detector accepts
        (``None`` when its detector file could not be read). ``None``: any model, and
        inputs are only checked to be finite numbers.
    topic, model_topics
        With a worker config: the topic read, and each of the config's models with the
        topics it reads, so that an event of a model not expected is refused in the
        worker's words (its model is not monitored, or does not read the topic).

    Examples
    --------
    >>> Decoding("mapped")
    Traceback (most recent call last):
    ...
    ValueError: format mapped needs a field mapping
    """

    model_id: str = DEFAULT_MODEL_ID
    expected: Mapping[str, ExpectedInput | None] | None = None
    topic: str | None = None
    model_topics: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        if self.format == "mapped" and self.mapping is None:
            raise ValueError("format mapped needs a field mapping")
        if self.format != "mapped" and self.mapping is not None:
            raise ValueError(f"a field mapping is only read with format mapped, not {self.format}")


def parse_mapping(text: str) -> FieldMapping:
    """A field mapping from a JSON object, or from a YAML or JSON file at that path.

    Raises :class:`~monitor.errors.InspectError` naming the file or the field that is wrong.

    Examples
    --------
    >>> parse_mapping('{"event_id": "$.id", "input": "$.x"}').input
    '$.x'
    >>> parse_mapping('{"event_id": "$.id", "input": "$.x["}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    monitor.errors.InspectError: --mapping: field 'input': malformed JSONPath '$.x[': ...
    """
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InspectError(f"--mapping is not a valid JSON object: {exc}") from None
        where = "--mapping"
    else:
        path = Path(text)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InspectError(
                f"--mapping: no file {text!r} (give a JSON object or a YAML/JSON file)"
            ) from None
        except (OSError, yaml.YAMLError) as exc:
            raise InspectError(f"--mapping: cannot read {path}: {exc}") from None
        where = f"--mapping {path}"
    if not isinstance(data, dict):
        raise InspectError(
            f"{where} must be an object of field paths, e.g. "
            '{"event_id": "$.meta.id", "input": "$.payload.features"}'
        )
    try:
        return FieldMapping.model_validate(data)
    except ValidationError as exc:
        raise InspectError(f"{where}: {validation_problem(exc)}") from None


def resolve_decoding(
    topic: str,
    event_format: EventFormat | None,
    *,
    config_path: Path | None = None,
    model_id: str | None = None,
    mapping: str | None = None,
) -> tuple[Decoding, list[str]]:
    """The decoding the command line asks for, and notes for the user.

    With a worker config the model (``model_id``, else the model(s) listing ``topic``)
    gives the format, mapping and OIP v2 options, and its detector the expected input;
    ``event_format``, if given, must agree. ``mapping`` (a JSON object or a file path)
    replaces the model's mapping. Without a config ``event_format`` is required.

    Raises
    ------
    InspectUsageError
        Missing or contradicting options.
    InspectError
        An unreadable config or mapping, or an unknown model.
    """
    field_mapping = parse_mapping(mapping) if mapping is not None else None
    if config_path is None:
        if event_format is None:
            raise InspectUsageError("give the topic's --format, or a worker --config")
        _check_mapping(event_format, field_mapping)
        named: dict[str, ExpectedInput | None] | None = (
            {model_id: None} if event_format == "native" and model_id else None
        )
        decoding = Decoding(
            event_format,
            model_id=model_id or DEFAULT_MODEL_ID,
            mapping=field_mapping,
            expected=named,
        )
        return decoding, []
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise InspectError(str(exc)) from None
    notes: list[str] = []
    models = _models_for(config, topic, model_id, config_path, notes)
    chosen = models[0]
    if event_format is not None and event_format != chosen.format:
        raise InspectUsageError(
            f"--format {event_format} disagrees with {config_path}: model {chosen.id!r} "
            f"has format {chosen.format}"
        )
    _check_mapping(chosen.format, field_mapping or chosen.mapping)
    expected = {model.id: _expected_input(model, notes) for model in models}
    reads = RecordFormat.of(chosen)  # as the worker reads the model's topics
    decoding = Decoding(
        reads.format,
        model_id=reads.model_id,
        mapping=field_mapping or reads.mapping,
        input_name=reads.input_name,
        output_name=reads.output_name,
        expected=expected,
        topic=topic,
        model_topics={model.id: tuple(model.topics) for model in config.models},
    )
    return decoding, notes


def _check_mapping(event_format: EventFormat, mapping: FieldMapping | None) -> None:
    if event_format == "mapped" and mapping is None:
        raise InspectUsageError(
            "format mapped needs --mapping: a JSON object of field paths or a YAML/JSON "
            "file holding one (event_id and input at least)"
        )
    if event_format != "mapped" and mapping is not None:
        raise InspectUsageError(f"--mapping is only read with format mapped, not {event_format}")


def _models_for(
    config: MonitorConfig, topic: str, model_id: str | None, path: Path, notes: list[str]
) -> list[ModelConfig]:
    """The config's models whose events the topic holds: the named one, else the listing."""
    known = ", ".join(m.id for m in config.models)
    if model_id is not None:
        model = next((m for m in config.models if m.id == model_id), None)
        if model is None:
            raise InspectError(f"{path} has no model {model_id!r} (its models: {known})")
        if topic not in model.topics:
            notes.append(f"model {model.id!r} does not list topic {topic!r} in {path}")
        return [model]
    listing = [m for m in config.models if topic in m.topics]
    if not listing:
        raise InspectUsageError(
            f"{path} lists no model for topic {topic!r}; name one with --model (its models: "
            f"{known})"
        )
    return listing


def _expected_input(model: ModelConfig, notes: list[str]) -> ExpectedInput | None:
    try:
        return ExpectedInput.of(DetectorConfig.load(model.detector))
    except DetectorError as exc:
        notes.append(f"model {model.id!r}: inputs are not checked against its detector: {exc}")
        return None

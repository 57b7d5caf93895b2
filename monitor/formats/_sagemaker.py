"""SageMaker Data Capture records (format ``sagemaker``).

What SageMaker writes
---------------------
An endpoint with Data Capture enabled writes one JSON object per invocation to S3 JSON
Lines files (AWS docs, "Data capture" and "Capture data from real-time endpoint"; the
record layout is the one Model Monitor reads). advmon expects one record per Kafka
message, forwarded as written::

    {"captureData": {
        "endpointInput":  {"observedContentType": "text/csv", "mode": "INPUT",
                           "data": "5.1,3.5,1.4,0.2", "encoding": "CSV"},
        "endpointOutput": {"observedContentType": "text/csv; charset=utf-8", "mode": "OUTPUT",
                           "data": "0.97,0.02,0.01", "encoding": "CSV"}},
     "eventMetadata": {"eventId": "0b9a…", "inferenceId": "caller-42",
                       "inferenceTime": "2024-05-01T12:00:00Z"},
     "eventVersion": "0"}

``encoding`` says how ``data`` holds the body: ``CSV`` and ``JSON`` as text, ``BASE64`` as
base64 of the raw bytes (the default for content types not listed in the endpoint's
``CaptureContentTypeHeader``). ``eventId`` is made by SageMaker; ``inferenceId`` is the
caller's ``InferenceId`` of ``InvokeEndpoint``, present only when given (AWS docs,
"Ingest Ground Truth labels and merge them with predictions").

How the captured bodies are read
--------------------------------
By ``observedContentType`` (parameters such as ``charset`` ignored), after undoing the
``encoding``. Input rows become events; the first axis is always the batch axis:

- ``text/csv``: one row per non-blank line, every cell a number.
- ``application/json`` (and ``text/json``, ``*/*+json``): a flat list of numbers is ONE
  row; a list of rows (each a number, a nested list, or SageMaker's built-in algorithm
  instance ``{"features": [...]}``) is a batch; so are ``{"instances": [rows]}``
  (TF Serving row format) and ``{"inputs": batch}`` (columnar format; ``{"inputs":
  {"name": batch}}`` with a single name). A single image therefore goes in as
  ``{"instances": [image]}`` or ``[image]``; a bare ``image`` would be read as one row per
  image line.
- ``application/jsonlines``: one row per non-blank line, each read as a row above.
- ``application/x-npy``: a numpy array (as SageMaker's ``NumpySerializer`` sends it);
  1-D is one row, otherwise the first axis is the batch axis. Rows keep their dtype as a
  tensor payload; CSV and JSON rows become nested lists of floats.

Output rows are matched to input rows:

- CSV: one line per row; or, for a batch, one line holding one value per row (as some
  XGBoost containers answer).
- JSON, JSON Lines, npy: a list (possibly under ``"predictions"`` or ``"outputs"``) of one
  prediction per row, each a number, a list, or an object whose ``scores``, ``score``,
  ``probabilities`` or ``probability`` member holds it (SageMaker built-in algorithms).
  For a single row, a flat list is that row's scores; for a batch, one number per row.

The output is informational: an ``endpointOutput`` whose content type is none of the above
leaves ``output`` unset rather than rejecting a scorable input. One of those types that
does not parse is an error, since it means the record is corrupt.

Fields: ``event_id`` = ``eventId`` (``#row`` appended for a batch), ``request_id`` =
``inferenceId`` if present else ``eventId``, ``ts`` = ``inferenceTime``; ``source`` and
``model_version`` are not captured.

Limits (reason ``too_large``): at most ``MAX_RECORD_ROWS`` rows (CSV and JSON lines,
instances) and ``MAX_TENSOR_ELEMENTS`` values (CSV cells) in one capture. An npy body's
header is read first and its dtype, shape (as an OIP v2 tensor's:
:func:`~monitor.formats._tensors.check_tensor_shape`) and byte size checked against the
bytes that follow before any array is built, since ``numpy.load`` allocates what the
header claims before it reads the data.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import tokenize
from typing import Any, Literal

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from monitor.formats._decoding import build_event, load_json, row_event_id, validate_wire
from monitor.formats._errors import FormatError, FormatErrorReason
from monitor.formats._tensors import check_tensor_shape, tensor_payload
from schemas import (
    MAX_RECORD_ROWS,
    MAX_TENSOR_ELEMENTS,
    InferenceEvent,
    TensorDType,
    TensorPayload,
)

__all__ = ["sagemaker_events"]

_INVALID = FormatErrorReason.INVALID_SAGEMAKER
_SHAPE = FormatErrorReason.SHAPE_MISMATCH
_TOO_LARGE = FormatErrorReason.TOO_LARGE
_NPZ_MAGIC = b"PK\x03\x04"
_JSON_TYPES = frozenset({"application/json", "text/json"})
_JSONLINES_TYPES = frozenset({"application/jsonlines", "application/x-jsonlines"})
_SCORE_MEMBERS = ("scores", "score", "probabilities", "probability")
_DTYPES = frozenset(dtype.value for dtype in TensorDType)

_ContentKind = Literal["csv", "json", "jsonlines", "npy"]
_InputRow = list[Any] | TensorPayload


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Capture(_Wire):
    observed_content_type: str = Field(alias="observedContentType")
    mode: str | None = None
    data: str
    encoding: str


class _CaptureData(_Wire):
    endpoint_input: _Capture | None = Field(default=None, alias="endpointInput")
    endpoint_output: _Capture | None = Field(default=None, alias="endpointOutput")


class _EventMetadata(_Wire):
    event_id: str = Field(alias="eventId", min_length=1)
    inference_id: str | None = Field(default=None, alias="inferenceId")
    inference_time: AwareDatetime | None = Field(default=None, alias="inferenceTime")


class _CaptureRecord(_Wire):
    capture_data: _CaptureData = Field(alias="captureData")
    event_metadata: _EventMetadata = Field(alias="eventMetadata")
    event_version: str | None = Field(default=None, alias="eventVersion")


def sagemaker_events(value: bytes, *, model_id: str) -> list[InferenceEvent]:
    """The native events of one SageMaker Data Capture record: one per captured input row.

    Raises
    ------
    FormatError
        ``invalid_json``; ``invalid_sagemaker`` when the record or a captured body is
        malformed; ``unsupported_content_type`` for an input advmon cannot read as
        numbers; ``unsupported_datatype`` for an npy input of another dtype;
        ``shape_mismatch`` when outputs do not pair with input rows; ``too_large`` over
        a limit; ``invalid_event``.

    Examples
    --------
    >>> record = (
    ...     b'{"captureData": {"endpointInput": {"observedContentType": "text/csv",'
    ...     b' "mode": "INPUT", "data": "1,2\\\\n3,4", "encoding": "CSV"}},'
    ...     b' "eventMetadata": {"eventId": "e1", "inferenceTime": "2024-05-01T12:00:00Z"},'
    ...     b' "eventVersion": "0"}'
    ... )
    >>> [(e.event_id, e.input) for e in sagemaker_events(record, model_id="m")]
    [('e1#0', [1.0, 2.0]), ('e1#1', [3.0, 4.0])]
    """
    record = validate_wire(
        _CaptureRecord, load_json(value, "message value"), _INVALID, "SageMaker capture record"
    )
    metadata = record.event_metadata
    what = f"SageMaker capture record {metadata.event_id!r}"
    captured = record.capture_data.endpoint_input
    if captured is None:
        raise FormatError(
            _INVALID,
            f"{what} has no captureData.endpointInput (does the endpoint capture only its output?)",
        )
    rows = _input_rows(captured, f"{what}: endpointInput")
    outputs = _output_rows(record.capture_data.endpoint_output, len(rows), what)
    shared: dict[str, Any] = {
        "model_id": model_id,
        "ts": metadata.inference_time,
        "request_id": metadata.inference_id or metadata.event_id,
    }
    return [
        build_event(
            {
                **shared,
                "event_id": row_event_id(metadata.event_id, index, len(rows)),
                "input": row,
                "output": outputs[index] if outputs is not None else None,
            },
            f"{what}, row {index}",
        )
        for index, row in enumerate(rows)
    ]


def _input_rows(captured: _Capture, where: str) -> list[_InputRow]:
    kind, raw = _captured_body(captured, where)
    if kind is None:
        raise FormatError(
            FormatErrorReason.UNSUPPORTED_CONTENT_TYPE,
            f"{where}: content type {captured.observed_content_type!r} cannot be read as "
            "numbers (understood: text/csv, application/json, application/jsonlines, "
            "application/x-npy)",
        )
    rows: list[_InputRow]
    if kind == "csv":
        rows = list(_csv_rows(raw, where))
    elif kind == "json":
        rows = [row.tolist() for row in _json_rows(load_json(raw, where), where)]
    elif kind == "jsonlines":
        rows = [
            _instance(load_json(line, f"{where} line {number}"), f"{where} line {number}").tolist()
            for number, line in _lines(raw, where)
        ]
    else:
        rows = _npy_rows(_load_npy(raw, where), where)
    if not rows:
        raise FormatError(_INVALID, f"{where} holds no input rows")
    return rows


def _output_rows(captured: _Capture | None, rows: int, what: str) -> list[list[float]] | None:
    if captured is None:
        return None
    where = f"{what}: endpointOutput"
    kind, raw = _captured_body(captured, where)
    if kind is None:
        return None
    if kind == "csv":
        csv_rows = _csv_rows(raw, where)
        if len(csv_rows) == rows:
            return csv_rows
        if len(csv_rows) == 1 and rows > 1 and len(csv_rows[0]) == rows:
            return [[value] for value in csv_rows[0]]
        raise FormatError(_SHAPE, f"{where} has {len(csv_rows)} CSV lines for {rows} input rows")
    if kind == "jsonlines":
        lines = _lines(raw, where)
        if len(lines) != rows:
            raise FormatError(_SHAPE, f"{where} has {len(lines)} JSON lines for {rows} input rows")
        return [
            _prediction(load_json(line, f"{where} line {n}"), f"{where} line {n}")
            for n, line in lines
        ]
    if kind == "npy":
        return _split_predictions(
            _load_npy(raw, where, output=True).astype(np.float64).tolist(), rows, where
        )
    document = load_json(raw, where)
    if isinstance(document, dict):
        member = next((key for key in ("predictions", "outputs") if key in document), None)
        if member is None:
            raise FormatError(
                _INVALID,
                f"{where}: JSON object with members {sorted(document)} is not understood "
                "(expected a list, or {'predictions': [...]} or {'outputs': [...]})",
            )
        document = document[member]
    return _split_predictions(document, rows, where)


def _captured_body(captured: _Capture, where: str) -> tuple[_ContentKind | None, bytes]:
    encoding = captured.encoding.upper()
    if encoding in ("CSV", "JSON"):
        raw = captured.data.encode("utf-8")
    elif encoding == "BASE64":
        try:
            raw = base64.b64decode(captured.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError(_INVALID, f"{where}: 'data' is not valid base64: {exc}") from None
    else:
        raise FormatError(
            _INVALID,
            f"{where}: 'encoding' is {captured.encoding!r}; expected CSV, JSON or BASE64",
        )
    return _content_kind(captured.observed_content_type), raw


def _content_kind(content_type: str) -> _ContentKind | None:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "text/csv":
        return "csv"
    if media_type in _JSON_TYPES or media_type.endswith("+json"):
        return "json"
    if media_type in _JSONLINES_TYPES:
        return "jsonlines"
    if media_type == "application/x-npy":
        return "npy"
    return None


def _text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(_INVALID, f"{where} is not UTF-8 text") from None


def _lines(raw: bytes, where: str) -> list[tuple[int, str]]:
    lines = [
        (number, line)
        for number, line in enumerate(_text(raw, where).splitlines(), start=1)
        if line.strip()
    ]
    _check_rows(len(lines), where)
    return lines


def _check_rows(rows: int, where: str) -> None:
    if rows > MAX_RECORD_ROWS:
        raise FormatError(
            _TOO_LARGE, f"{where} holds {rows} rows; at most {MAX_RECORD_ROWS} are accepted"
        )


def _csv_rows(raw: bytes, where: str) -> list[list[float]]:
    rows: list[list[float]] = []
    values = 0
    try:
        for cells in csv.reader(io.StringIO(_text(raw, where)), strict=True):
            if not any(cell.strip() for cell in cells):
                continue
            values += len(cells)
            if values > MAX_TENSOR_ELEMENTS:
                raise FormatError(
                    _TOO_LARGE,
                    f"{where} holds more than {MAX_TENSOR_ELEMENTS} CSV values",
                )
            _check_rows(len(rows) + 1, where)
            rows.append(
                [
                    _csv_number(cell, where, len(rows) + 1, column)
                    for column, cell in enumerate(cells, start=1)
                ]
            )
    except csv.Error as exc:
        raise FormatError(_INVALID, f"{where} is not valid CSV: {exc}") from None
    return rows


def _csv_number(cell: str, where: str, line: int, column: int) -> float:
    try:
        return float(cell)
    except ValueError:
        raise FormatError(
            _INVALID, f"{where}: CSV row {line}, column {column} is {cell!r}, not a number"
        ) from None


def _json_rows(document: Any, where: str) -> list[np.ndarray]:
    if isinstance(document, dict):
        if "instances" in document:
            instances = document["instances"]
            if not isinstance(instances, list):
                raise FormatError(_INVALID, f"{where}: 'instances' must be a list")
            _check_rows(len(instances), where)
            return [_instance(x, f"{where} instance {i}") for i, x in enumerate(instances)]
        if "inputs" in document:
            inputs = document["inputs"]
            if isinstance(inputs, dict):
                if len(inputs) != 1:
                    raise FormatError(
                        _INVALID,
                        f"{where}: 'inputs' names {len(inputs)} tensors ({sorted(inputs)}); "
                        "advmon reads a single input",
                    )
                inputs = next(iter(inputs.values()))
            batch = _numbers(inputs, f"{where}: 'inputs'")
            if batch.ndim == 0:
                raise FormatError(_INVALID, f"{where}: 'inputs' must be a batch (a list)")
            _check_rows(len(batch), where)
            return list(batch)
        raise FormatError(
            _INVALID,
            f"{where}: JSON object with members {sorted(document)} is not understood "
            "(expected a list, a list of rows, {'instances': [...]} or {'inputs': ...})",
        )
    if isinstance(document, list) and document and all(_is_number(x) for x in document):
        return [_numbers(document, where)]
    if isinstance(document, list):
        _check_rows(len(document), where)
        return [_instance(x, f"{where} row {i}") for i, x in enumerate(document)]
    if _is_number(document):
        return [_numbers([document], where)]
    raise FormatError(_INVALID, f"{where}: a JSON {type(document).__name__} is not understood")


def _instance(instance: Any, where: str) -> np.ndarray:
    if isinstance(instance, dict):
        if "features" not in instance:
            raise FormatError(
                _INVALID,
                f"{where}: object with members {sorted(instance)} is not understood "
                "(expected a list of numbers or {'features': [...]})",
            )
        instance = instance["features"]
    return np.atleast_1d(_numbers(instance, where))


def _numbers(value: Any, where: str) -> np.ndarray:
    try:
        array = np.array(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype.kind not in "biuf":
        raise FormatError(_INVALID, f"{where} is not a rectangular array of numbers")
    return array.astype(np.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def _load_npy(raw: bytes, where: str, *, output: bool = False) -> np.ndarray:
    """The array of an npy body, its header checked against the limits and the bytes that
    follow it before anything is allocated (``numpy.load`` would allocate what the header
    claims first). Inputs keep their dtype (one of :class:`~schemas.TensorDType`); outputs
    may be of any numeric dtype."""
    if raw.startswith(_NPZ_MAGIC):
        raise FormatError(_INVALID, f"{where} is an .npz archive, not a single .npy array")
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"npy format version {version} is not read")
    except (ValueError, OSError, EOFError, TypeError, SyntaxError, tokenize.TokenError) as exc:
        # numpy reads the header's Python literal with tokenize and ast, whose errors
        # for a hostile header are these.
        raise FormatError(_INVALID, f"{where} is not a .npy array: {exc}") from None
    if dtype.hasobject:
        raise FormatError(
            _INVALID,
            f"{where} is a .npy array of Python objects, which only loading with "
            "allow_pickle could read (never done for captured input)",
        )
    if output:
        if dtype.kind not in "biuf":
            raise FormatError(
                _INVALID, f"{where}: npy array of dtype {dtype.name!r} is not numeric"
            )
    elif dtype.name not in _DTYPES:
        raise FormatError(
            FormatErrorReason.UNSUPPORTED_DATATYPE,
            f"{where}: npy array of dtype {dtype.name!r}; supported: {', '.join(sorted(_DTYPES))}",
        )
    # A 1-D array is one row; otherwise the first axis is the batch axis.
    elements = check_tensor_shape(where, (1, *shape) if len(shape) == 1 else shape)
    expected = elements * dtype.itemsize
    offset = stream.tell()
    if len(raw) - offset != expected:
        raise FormatError(
            _INVALID,
            f"{where} is not a .npy array: its header declares shape {list(shape)} of "
            f"{dtype.name} ({expected} bytes), but {len(raw) - offset} bytes follow",
        )
    array = np.frombuffer(raw, dtype=dtype, count=elements, offset=offset)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _npy_rows(array: np.ndarray, where: str) -> list[_InputRow]:
    if array.ndim == 0:
        raise FormatError(_INVALID, f"{where}: npy array is a scalar, not a row or a batch")
    batch = [array] if array.ndim == 1 else list(array)
    return [tensor_payload(row) for row in batch]


def _split_predictions(value: Any, rows: int, where: str) -> list[list[float]]:
    if _is_number(value):
        value = [value]
    if not isinstance(value, list):
        raise FormatError(_INVALID, f"{where}: predictions must be a list or a number")
    if all(_is_number(x) for x in value):
        if rows == 1:
            return [[float(x) for x in value]]
        if len(value) == rows:
            return [[float(x)] for x in value]
    elif len(value) == rows:
        return [_prediction(x, f"{where} prediction {i}") for i, x in enumerate(value)]
    raise FormatError(_SHAPE, f"{where} has {len(value)} predictions for {rows} input rows")


def _prediction(value: Any, where: str) -> list[float]:
    if isinstance(value, dict):
        member = next((key for key in _SCORE_MEMBERS if key in value), None)
        if member is None:
            raise FormatError(
                _INVALID,
                f"{where}: object with members {sorted(value)} has none of "
                f"{', '.join(_SCORE_MEMBERS)}",
            )
        value = value[member]
    scores: list[float] = _numbers(value, where).ravel().tolist()
    return scores

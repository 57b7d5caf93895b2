"""The robustness report's files: ``report.json`` checked against its schema, read back as a
baseline, and written with its HTML and Markdown renderings.

The contract of ``report.json`` is ``schemas/json/robustness_report.schema.json`` (JSON
Schema draft 2020-12), shipped as package data of :mod:`schemas`. Every report this
module writes passes it, and every report it reads must.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from jsonschema import Draft202012Validator, FormatChecker, ValidationError

from monitor.errors import ReportError
from monitor.evaluate._gate import GateResult
from monitor.evaluate._html import render_html
from monitor.evaluate._markdown import render_markdown
from monitor.evaluate._types import Evaluation

__all__ = [
    "MAX_REPORT_BYTES",
    "REPORT_FORMAT",
    "REPORT_FORMAT_VERSION",
    "REPORT_SCHEMA",
    "ReportError",
    "ReportFiles",
    "load_report",
    "validate_report",
    "write_outputs",
]

REPORT_FORMAT = "advmon-robustness-report"
"""The ``format`` field of every report.json."""
REPORT_FORMAT_VERSION = 1
"""The ``format_version`` this advmon writes and reads."""
REPORT_SCHEMA = "robustness_report.schema.json"
"""The schema's file name in ``schemas/json/``."""
MAX_REPORT_BYTES = 8 * 1024 * 1024
"""The largest report.json :func:`load_report` reads; real reports are kilobytes."""

_MAX_PROBLEMS = 5
"""Schema problems named in an error message; the rest are counted."""
_MAX_ERRORS_SCANNED = 1000
"""Schema errors looked at, so that a garbage file cannot keep the validator busy."""
_MAX_DEPTH = 16
"""Nesting deeper than any report has; refused before the schema is applied."""
_MAX_MESSAGE_CHARS = 160
_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


@dataclass(frozen=True)
class ReportFiles:
    """The three files :func:`write_outputs` wrote."""

    json: Path
    """``report.json``: the report itself, valid against the schema."""
    html: Path
    """``report.html``: the self-contained report with its plots."""
    md: Path
    """``report.md``: the half-page summary for a release note."""

    def __iter__(self) -> Iterator[Path]:
        return iter((self.json, self.html, self.md))


def validate_report(report: Any) -> None:
    """Check a report against the robustness report's JSON Schema.

    The report is checked as ``report.json`` will hold it: tuples are arrays, NumPy scalars
    numbers. Numbers must also be finite (JSON has no NaN), and nesting no deeper than a
    report's.

    Raises
    ------
    ReportError
        The report does not follow the schema; the message names the first problems with
        their JSON paths, ``problems`` holds them.

    Examples
    --------
    >>> try:
    ...     validate_report({"format": "advmon-robustness-report", "format_version": 2})
    ... except ReportError as error:
    ...     print(*error.problems[:2], sep="\\n")
    ...     print(len(error.problems))
    $: 'advmon_version' is a required property
    $: 'attacks' is a required property
    13
    """
    _report_json(report)


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``report.json`` written by ``advmon evaluate``.

    The file is untrusted (``--baseline``): it must be a regular file of at most
    :data:`MAX_REPORT_BYTES`, hold a JSON object whose ``format`` and ``format_version``
    this advmon reads, and pass :func:`validate_report`.

    Raises
    ------
    ReportError
        Anything else; the message names the file and says what is wrong.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "report.json"
    >>> _ = path.write_text('{"format": "advmon-robustness-report", "format_version": 7}')
    >>> try:
    ...     load_report(path)
    ... except ReportError as error:
    ...     print(str(error).removeprefix(str(path)).replace(": ", ":\\n"))
     has format_version 7; this advmon reads version 1:
    upgrade advmon, or evaluate the baseline model again
    """
    path = Path(path)
    try:
        if not path.exists():
            raise ReportError(f"{path}: no such file")
        if not path.is_file():
            raise ReportError(f"{path} is not a file")
        with path.open("rb") as file:
            data = file.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(
            f"{path} is larger than {MAX_REPORT_BYTES // (1024 * 1024)} MiB; "
            "a robustness report is far smaller: is it the report.json of advmon evaluate?"
        )
    try:
        report = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{path} is not JSON ({_shorten(str(exc))})") from None
    if not isinstance(report, dict):
        raise ReportError(
            f"{path} is not an advmon robustness report: it holds a JSON "
            f"{_json_type(report)}, not an object"
        )
    fmt = report.get("format")
    if fmt != REPORT_FORMAT:
        found = "has no 'format'" if fmt is None else f"has format {_shorten(repr(fmt))}"
        raise ReportError(
            f"{path} is not an advmon robustness report: it {found}, "
            f"not {REPORT_FORMAT!r}; give the report.json of advmon evaluate"
        )
    version = report.get("format_version")
    if version != REPORT_FORMAT_VERSION or isinstance(version, bool):
        if isinstance(version, int) and not isinstance(version, bool):
            advice = (
                "upgrade advmon, or evaluate the baseline model again"
                if version > REPORT_FORMAT_VERSION
                else "evaluate the baseline model again with this advmon"
            )
            raise ReportError(
                f"{path} has format_version {version}; this advmon reads version "
                f"{REPORT_FORMAT_VERSION}: {advice}"
            )
        raise ReportError(
            f"{path} has no valid format_version (found {_shorten(repr(version))}); "
            f"this advmon reads version {REPORT_FORMAT_VERSION}"
        )
    try:
        validate_report(report)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}", problems=exc.problems) from None
    return report


def write_outputs(
    evaluation: Evaluation, out_dir: str | Path, *, gate: GateResult | None = None
) -> ReportFiles:
    """Write ``report.json``, ``report.html`` and ``report.md`` into ``out_dir``.

    The report is validated first, and the three files are rendered before any is
    written; each file replaces any earlier one atomically. ``gate``, the verdict of the
    release gate against a baseline, is shown in the HTML and Markdown files.

    Raises
    ------
    ReportError
        The report is not valid, or ``out_dir`` cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> write_outputs(Evaluation(report={}), tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    monitor.errors.ReportError: the report does not follow ...
    """
    report = evaluation.report
    rendered = {
        "report.json": _report_json(report),
        "report.html": render_html(evaluation, gate=gate).encode(),
        "report.md": render_markdown(report, gate=gate).encode(),
    }
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in rendered.items():
            _write_atomically(out / name, content)
    except OSError as exc:
        raise ReportError(
            f"cannot write the robustness report to {out}: {exc.strerror or exc}"
        ) from None
    return ReportFiles(json=out / "report.json", html=out / "report.html", md=out / "report.md")


def _report_json(report: Any) -> bytes:
    """The content of ``report.json``, once the report is known to follow the schema."""
    problems = list(_value_problems(report))
    data = b""
    if not problems:
        try:
            data = orjson.dumps(report, option=_JSON_OPTIONS)
        except orjson.JSONEncodeError as exc:
            problems = [f"$: cannot be written as JSON ({exc})"]
    if not problems:
        errors = itertools.islice(_validator().iter_errors(orjson.loads(data)), _MAX_ERRORS_SCANNED)
        problems = [
            f"{error.json_path}: {_shorten(error.message)}"
            for error in sorted(_specific(errors), key=_error_order)
        ]
    if problems:
        listed = "; ".join(problems[:_MAX_PROBLEMS])
        more = len(problems) - _MAX_PROBLEMS
        if more > 0:
            listed += f" (and {more} more)"
        raise ReportError(
            f"the report does not follow {REPORT_SCHEMA}: {listed}", problems=tuple(problems)
        )
    return data


@functools.cache
def _validator() -> Draft202012Validator:
    schema = orjson.loads(files("schemas").joinpath("json", REPORT_SCHEMA).read_bytes())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_format_checker())


def _format_checker() -> FormatChecker:
    """``date-time`` checked as RFC 3339 with no optional package (jsonschema needs one)."""
    checker = FormatChecker(formats=())
    checker.checks("date-time", raises=ValueError)(_is_datetime)
    return checker


def _is_datetime(instance: object) -> bool:
    """Whether a string is an RFC 3339 date-time; an impossible date raises ValueError."""
    if not isinstance(instance, str):
        return True
    if _RFC3339.fullmatch(instance) is None:
        return False
    datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))
    return True


def _specific(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    """Errors with each failed ``oneOf`` replaced by the errors of the branch that fits.

    A ``oneOf`` between ``null`` and an object reports "not valid under any of the given
    schemas"; what the user must fix is what the object branch found.
    """
    for error in errors:
        if error.validator not in ("oneOf", "anyOf") or not error.context:
            yield error
            continue
        by_branch: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [
            sub
            for branch in by_branch.values()
            if not any(sub.validator == "type" and not sub.relative_path for sub in branch)
            for sub in branch
        ]
        if fitting:
            yield from _specific(iter(fitting))
        else:
            yield error


def _error_order(error: ValidationError) -> tuple[str, str]:
    return (error.json_path, error.message)


def _value_problems(value: Any) -> Iterator[str]:
    """What JSON cannot hold (non-finite numbers, other types, keys other than strings) and
    nesting deeper than a report's, found without recursion."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > _MAX_DEPTH:
            yield f"{where}: nested deeper than {_MAX_DEPTH} levels"
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    yield f"{where}: key {_shorten(repr(key))} is not a string"
            stack.extend(
                (child, f"{where}.{key}", depth + 1) for key, child in reversed(item.items())
            )
        elif isinstance(item, list | tuple):
            stack.extend(
                (child, f"{where}[{index}]", depth + 1)
                for index, child in reversed(list(enumerate(item)))
            )
        elif isinstance(item, float | np.floating):
            if not math.isfinite(item):
                yield f"{where}: {item} is not a finite number"
        elif not isinstance(item, str | int | np.integer | np.bool_ | None):
            yield f"{where}: a {type(item).__name__} is not a JSON value"


def _write_atomically(path: Path, content: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _shorten(text: str) -> str:
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[: _MAX_MESSAGE_CHARS - 1] + "…"


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"

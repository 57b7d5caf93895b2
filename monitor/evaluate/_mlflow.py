"""``advmon evaluate --mlflow-run-id``: the report's files and headline figures in MLflow.

MLflow is an optional dependency (``pip install 'advmon[mlflow]'``), imported only when a
report is logged. The run must exist already: the training pipeline that made the model
owns it, and the robustness report joins its other results.

Metrics logged (step 0; a metric without a value, such as a detection rate without a
detector, is left out)::

    clean_accuracy                        clean accuracy
    detector_clean_fpr                    fraction of the clean events the detector flags
    robust_accuracy/<attack>_<norm>       each attack at its largest ε
    detection_rate/<attack>_<norm>        each attack at its largest ε

``<attack>`` is the attack's name with every character other than a letter, digit, ``_``
or ``-`` replaced by ``_``. The three files go to the run's artifacts under
``robustness_report/``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

from yarl import URL

from monitor.errors import MlflowLoggingError
from monitor.evaluate._gate import rows_at_largest_eps
from monitor.evaluate._report import ReportFiles

__all__ = [
    "ARTIFACT_PATH",
    "MlflowLoggingError",
    "check_mlflow_run",
    "log_to_mlflow",
    "report_metrics",
]

ARTIFACT_PATH = "robustness_report"
"""The folder of the run's artifacts that holds report.json, report.html and report.md."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NO_SUCH_RUN = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
"""MLflow's error codes for a run id that names no run (or is no run id at all)."""
_MAX_NAME_CHARS = 200
"""Of an attack's name in a metric name; MLflow takes names of up to 250 characters."""


def check_mlflow_run(run_id: str, tracking_uri: str | None = None) -> None:
    """Raise :class:`MlflowLoggingError` unless ``run_id`` names an active MLflow run that
    :func:`log_to_mlflow` can log to: checked before an evaluation, not after it.
    """
    with _mlflow_errors(run_id, tracking_uri) as (client, where):
        _active_run(client, run_id, where)


def log_to_mlflow(
    run_id: str, files: ReportFiles, report: Mapping[str, Any], tracking_uri: str | None = None
) -> None:
    """Log a report's three files as artifacts and its headline figures as metrics of an
    existing MLflow run.

    Parameters
    ----------
    run_id
        The run to log to; it must exist.
    files
        What :func:`monitor.evaluate._report.write_outputs` wrote.
    report
        The report those files hold.
    tracking_uri
        The tracking server; ``None`` for MLflow's default (``MLFLOW_TRACKING_URI``).

    Raises
    ------
    MlflowLoggingError
        MLflow is not installed, there is no such run, or MLflow refused to log.
    """
    with _mlflow_errors(run_id, tracking_uri) as (client, where):
        from mlflow.entities import Metric

        _active_run(client, run_id, where)
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key=name, value=value, timestamp=timestamp, step=0)
            for name, value in report_metrics(report).items()
        ]
        client.log_batch(run_id, metrics=metrics)
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_PATH)


@contextlib.contextmanager
def _mlflow_errors(run_id: str, tracking_uri: str | None) -> Iterator[tuple[Any, str]]:
    """An MLflow client and where it points; MLflow's and the OS's errors become
    :class:`MlflowLoggingError`, with any credentials of the URI left out."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowLoggingError(
            "logging to MLflow needs the mlflow extra: pip install 'advmon[mlflow]'"
        ) from None

    where = "MLflow's default tracking URI" if tracking_uri is None else _redacted(tracking_uri)
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        where = _redacted(client.tracking_uri)
        yield client, where
    except (MlflowException, OSError) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        if tracking_uri is not None:
            message = message.replace(tracking_uri, _redacted(tracking_uri))
        raise MlflowLoggingError(
            f"cannot log the robustness report to MLflow run {run_id!r} at {where}: {message}"
        ) from None


def _active_run(client: Any, run_id: str, where: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in _NO_SUCH_RUN:
            raise
        raise MlflowLoggingError(
            f"no MLflow run {run_id!r} at {where}: {exc.message}; "
            "give the id of an existing run (--mlflow-run-id)"
        ) from None
    if run.info.lifecycle_stage != "active":
        raise MlflowLoggingError(
            f"MLflow run {run_id!r} at {where} is {run.info.lifecycle_stage}; restore it "
            "or give another run"
        )


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The headline figures of a valid report, under names MLflow accepts.

    Examples
    --------
    >>> report = {
    ...     "clean": {"accuracy": 0.96},
    ...     "detector": {"clean_fpr": 0.05},
    ...     "attacks": [
    ...         {"name": "square", "norm": "linf", "eps": 0.1, "robust_accuracy": 0.4,
    ...          "detection_rate": 0.9},
    ...         {"name": "square", "norm": "linf", "eps": 0.3, "robust_accuracy": 0.1,
    ...          "detection_rate": None},
    ...         {"name": "my attack!", "norm": "l2", "eps": 1.0, "robust_accuracy": 0.5,
    ...          "detection_rate": 0.7},
    ...     ],
    ... }
    >>> for name, value in report_metrics(report).items():
    ...     print(name, value)
    clean_accuracy 0.96
    detector_clean_fpr 0.05
    robust_accuracy/square_linf 0.1
    robust_accuracy/my_attack__l2 0.5
    detection_rate/my_attack__l2 0.7
    """
    metrics = {"clean_accuracy": float(report["clean"]["accuracy"])}
    if report["detector"] is not None:
        metrics["detector_clean_fpr"] = float(report["detector"]["clean_fpr"])
    names: dict[str, tuple[str, str]] = {}
    for row in rows_at_largest_eps(report):
        name = f"{_UNSAFE.sub('_', row['name'])[:_MAX_NAME_CHARS] or '_'}_{row['norm']}"
        while name in names and names[name] != (row["name"], row["norm"]):
            name += "_"
        names[name] = (row["name"], row["norm"])
        metrics[f"robust_accuracy/{name}"] = float(row["robust_accuracy"])
        if row["detection_rate"] is not None:
            metrics[f"detection_rate/{name}"] = float(row["detection_rate"])
    return metrics


def _redacted(uri: str) -> str:
    """A tracking URI as an error message may show it: without user name and password.

    >>> _redacted("https://ci:secret@mlflow.example.com/"), _redacted("databricks")
    ('https://mlflow.example.com/', 'databricks')
    """
    url = URL(uri)
    return str(url.with_user(None)) if url.is_absolute() and url.user is not None else uri

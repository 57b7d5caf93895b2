"""``advmon evaluate``: attack a model before it ships and write its robustness report.

::

    evaluate()        _engine.py     labelled events in, an Evaluation out
    ├── events        _data.py       the labelled events, decoded as the worker decodes
    ├── estimators    _estimators.py ART classifiers: the ONNX model (black-box) and its
    │                                PyTorch conversion (white-box, advmon[attacks])
    ├── attacks       _attacks.py    ART's attacks by name, budgets and default ε
    ├── metrics       _metrics.py    robust accuracy, success, perturbation, detection
    └── smoothing     _smoothing.py  certified accuracy by randomized smoothing
    write_outputs()   _report.py     report.json (validated), report.html, report.md
    ├── html          _html.py       the self-contained page and its matplotlib plots
    └── markdown      _markdown.py   the release-note summary
    compare()         _gate.py       the release gate against a baseline report
    log_to_mlflow()   _mlflow.py     the files and headline figures on an MLflow run
    choose_squeezers  _search.py     advmon calibrate's squeezers, chosen by attacking

The report's contract is ``schemas/json/robustness_report.schema.json``.
"""

from __future__ import annotations

from monitor.evaluate._engine import evaluate
from monitor.evaluate._gate import (
    EXIT_INCOMPARABLE,
    EXIT_OK,
    EXIT_REGRESSION,
    GateResult,
    Regression,
    compare,
    rows_at_largest_eps,
)
from monitor.evaluate._mlflow import MlflowLoggingError, check_mlflow_run, log_to_mlflow
from monitor.evaluate._progress import EvaluationProgress, NoProgress, PlannedStep
from monitor.evaluate._report import (
    ReportError,
    ReportFiles,
    load_report,
    validate_report,
    write_outputs,
)
from monitor.evaluate._types import AttackScores, Evaluation

__all__ = [
    "EXIT_INCOMPARABLE",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "AttackScores",
    "Evaluation",
    "EvaluationProgress",
    "GateResult",
    "MlflowLoggingError",
    "NoProgress",
    "PlannedStep",
    "Regression",
    "ReportError",
    "ReportFiles",
    "check_mlflow_run",
    "compare",
    "evaluate",
    "load_report",
    "log_to_mlflow",
    "rows_at_largest_eps",
    "validate_report",
    "write_outputs",
]

"""advmon evaluate --mlflow-run-id: the report's files and figures in an existing MLflow run,
read back through a local file-store tracking URI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from monitor.evaluate._mlflow import (
    ARTIFACT_PATH,
    MlflowLoggingError,
    log_to_mlflow,
    report_metrics,
)
from monitor.evaluate._report import ReportFiles, write_outputs
from tests.evaluate.sample_evaluation import sample_evaluation


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # MLflow 3 refuses the file store unless allowed; older releases ignore the variable.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


@pytest.fixture
def run_id(tracking_uri: str) -> str:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("digits")
    run_id: str = client.create_run(experiment).info.run_id
    return run_id


def _written(tmp_path: Path, **options: Any) -> tuple[ReportFiles, dict[str, Any]]:
    evaluation = sample_evaluation(**options)
    return write_outputs(evaluation, tmp_path / "report"), evaluation.report


def _at_largest_eps(report: dict[str, Any], name: str) -> dict[str, Any]:
    rows = [row for row in report["attacks"] if row["name"] == name]
    return max(rows, key=lambda row: row["eps"])


def test_the_three_files_and_the_headline_metrics_are_logged(
    tmp_path: Path, tracking_uri: str, run_id: str
) -> None:
    files, report = _written(tmp_path)

    log_to_mlflow(run_id, files, report, tracking_uri=tracking_uri)

    client = MlflowClient(tracking_uri=tracking_uri)
    artifacts = client.list_artifacts(run_id, ARTIFACT_PATH)
    assert sorted(artifact.path for artifact in artifacts) == [
        f"{ARTIFACT_PATH}/report.html",
        f"{ARTIFACT_PATH}/report.json",
        f"{ARTIFACT_PATH}/report.md",
    ]
    downloaded = Path(client.download_artifacts(run_id, ARTIFACT_PATH, str(tmp_path / "back")))
    for path in files:
        assert (downloaded / path.name).read_bytes() == path.read_bytes()

    metrics = client.get_run(run_id).data.metrics
    square = _at_largest_eps(report, "square")
    hopskipjump = _at_largest_eps(report, "hopskipjump")
    pgd = _at_largest_eps(report, "pgd")
    assert metrics == {
        "clean_accuracy": report["clean"]["accuracy"],
        "detector_clean_fpr": report["detector"]["clean_fpr"],
        "robust_accuracy/square_linf": square["robust_accuracy"],
        "detection_rate/square_linf": square["detection_rate"],
        "robust_accuracy/hopskipjump_l2": hopskipjump["robust_accuracy"],
        "detection_rate/hopskipjump_l2": hopskipjump["detection_rate"],
        "robust_accuracy/pgd_linf": pgd["robust_accuracy"],
        "detection_rate/pgd_linf": pgd["detection_rate"],
    }
    history = client.get_metric_history(run_id, "robust_accuracy/square_linf")
    assert [point.step for point in history] == [0]


def test_without_a_detector_only_accuracies_are_logged(
    tmp_path: Path, tracking_uri: str, run_id: str
) -> None:
    files, report = _written(tmp_path, detector=False)

    log_to_mlflow(run_id, files, report, tracking_uri=tracking_uri)

    metrics = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.metrics
    assert sorted(metrics) == [
        "clean_accuracy",
        "robust_accuracy/hopskipjump_l2",
        "robust_accuracy/pgd_linf",
        "robust_accuracy/square_linf",
    ]


def test_attack_names_mlflow_refuses_are_made_valid(
    tmp_path: Path, tracking_uri: str, run_id: str
) -> None:
    names = ("../../etc/passwd", "a.b c", "a_b_c")
    files, report = _written(tmp_path, attack_names=names)

    log_to_mlflow(run_id, files, report, tracking_uri=tracking_uri)

    metrics = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.metrics
    assert sorted(name for name in metrics if name.startswith("robust_accuracy/")) == [
        "robust_accuracy/______etc_passwd_linf",
        "robust_accuracy/a_b_c_l2",
        "robust_accuracy/a_b_c_linf",
    ]
    assert (
        metrics["robust_accuracy/a_b_c_linf"] == _at_largest_eps(report, "a_b_c")["robust_accuracy"]
    )


def test_two_attack_names_that_read_alike_get_distinct_metrics() -> None:
    report: dict[str, Any] = {
        "clean": {"accuracy": 0.9},
        "detector": None,
        "attacks": [
            {"name": "a.b", "norm": "linf", "eps": 0.1, "robust_accuracy": 0.5},
            {"name": "a b", "norm": "linf", "eps": 0.1, "robust_accuracy": 0.4},
            {"name": "a.b", "norm": "linf", "eps": 0.2, "robust_accuracy": 0.3},
        ],
    }
    for row in report["attacks"]:
        row["detection_rate"] = None

    assert report_metrics(report) == {
        "clean_accuracy": 0.9,
        "robust_accuracy/a_b_linf": 0.3,
        "robust_accuracy/a_b_linf_": 0.4,
    }


def test_an_unknown_run_is_a_clear_error(tmp_path: Path, tracking_uri: str, run_id: str) -> None:
    files, report = _written(tmp_path)
    unknown = "0" * 32

    with pytest.raises(
        MlflowLoggingError, match=rf"^no MLflow run '{unknown}' at file://"
    ) as error:
        log_to_mlflow(unknown, files, report, tracking_uri=tracking_uri)

    assert "(--mlflow-run-id)" in str(error.value)


def test_a_deleted_run_is_refused(tmp_path: Path, tracking_uri: str, run_id: str) -> None:
    files, report = _written(tmp_path)
    MlflowClient(tracking_uri=tracking_uri).delete_run(run_id)

    with pytest.raises(MlflowLoggingError, match=rf"^MLflow run '{run_id}' at .* is deleted"):
        log_to_mlflow(run_id, files, report, tracking_uri=tracking_uri)


def test_without_mlflow_installed_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, report = _written(tmp_path)
    for module in [name for name in sys.modules if name == "mlflow" or name.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "mlflow", None)

    with pytest.raises(MlflowLoggingError, match=r"pip install 'advmon\[mlflow\]'"):
        log_to_mlflow("0" * 32, files, report)


def test_an_unknown_tracking_scheme_is_a_clear_error(tmp_path: Path) -> None:
    files, report = _written(tmp_path)

    with pytest.raises(
        MlflowLoggingError,
        match=r"^cannot log the robustness report to MLflow run '0+' at nope://x",
    ):
        log_to_mlflow("0" * 32, files, report, tracking_uri="nope://x")


def test_an_unreachable_server_is_an_error_that_shows_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    files, report = _written(tmp_path)

    with pytest.raises(MlflowLoggingError) as error:
        log_to_mlflow("0" * 32, files, report, tracking_uri="http://ci:secret@127.0.0.1:9")

    assert str(error.value).startswith(
        "cannot log the robustness report to MLflow run '00000000000000000000000000000000' "
        "at http://127.0.0.1:9: "
    )
    assert "secret" not in str(error.value)

"""``advmon demo``: the offline loop and the streaming loop, end to end."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine

from monitor.cli import main
from monitor.demo.run import MALFORMED_LINES, REPORT_ATTACKS
from monitor.evaluate import load_report, rows_at_largest_eps
from monitor.incidents.storage.incidents import IncidentStore
from tests.monitor.cli_support import normalized

_KINDS = ("clean", "fgsm", "pgd")

# The demo starts the local Kafka-protocol broker and a worker process.
pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class DemoRun:
    """One ``advmon demo`` run and its output folder."""

    result: Result
    out_dir: Path

    def scores(self) -> list[dict[str, Any]]:
        text = (self.out_dir / "scores.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out_dir = tmp_path_factory.mktemp("demo") / "demo-output"
    result = CliRunner().invoke(main, ["demo", "--out-dir", str(out_dir)])
    return DemoRun(result, out_dir)


def _roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(positive score > negative score), ties counting one half (Mann-Whitney)."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def _kind(event_id: str) -> str:
    return event_id.split("-", 1)[0]


def test_demo_succeeds_and_writes_its_files(demo_run: DemoRun) -> None:
    assert demo_run.result.exit_code == 0, demo_run.result.output
    for name in ("model.onnx", "benign.jsonl", "traffic.jsonl", "detector.json", "scores.jsonl"):
        assert (demo_run.out_dir / name).is_file(), name
    detector = json.loads((demo_run.out_dir / "detector.json").read_text(encoding="utf-8"))
    assert detector["model"]["path"] == "model.onnx"


def test_demo_writes_a_robustness_report(demo_run: DemoRun) -> None:
    assert demo_run.result.exit_code == 0, demo_run.result.output
    report = load_report(demo_run.out_dir / "report" / "report.json")
    assert sorted(row["name"] for row in rows_at_largest_eps(report)) == sorted(
        REPORT_ATTACKS.split(",")
    )
    assert report["detector"]["path"].endswith("detector.json")
    assert (demo_run.out_dir / "report" / "report.html").is_file()
    assert "robustness report" in normalized(demo_run.result.stderr)


def test_demo_prints_a_row_per_kind_of_traffic(demo_run: DemoRun) -> None:
    assert demo_run.result.exit_code == 0, demo_run.result.output
    counts = {kind: 0 for kind in _KINDS}
    for record in demo_run.scores():
        counts[_kind(record["event_id"])] += 1
    rows = {}
    for line in demo_run.result.stderr.splitlines():
        cells = [cell for cell in re.split(r"[^\w.%()]+", line) if cell]
        # The first rows so named are the traffic table's; step 5's attack rows follow.
        if cells and cells[0] in _KINDS and cells[0] not in rows:
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(_KINDS), demo_run.result.stderr
    for kind, cells in rows.items():
        assert int(cells[1]) == counts[kind], cells
        assert counts[kind] > 0


def test_demo_skips_its_malformed_lines(demo_run: DemoRun) -> None:
    assert demo_run.result.exit_code == 0, demo_run.result.output
    stderr = normalized(demo_run.result.stderr)
    assert f"skipped {len(MALFORMED_LINES)} malformed lines" in stderr
    assert stderr.count("skipped line ") == len(MALFORMED_LINES)
    traffic = (demo_run.out_dir / "traffic.jsonl").read_bytes().splitlines()
    assert len(demo_run.scores()) == len(traffic) - len(MALFORMED_LINES)


def test_demo_scores_separate_attacks_from_clean_traffic(demo_run: DemoRun) -> None:
    assert demo_run.result.exit_code == 0, demo_run.result.output
    scores: dict[str, list[float]] = {kind: [] for kind in _KINDS}
    records = demo_run.scores()
    for record in records:
        assert list(record) == ["event_id", "score", "flagged"]
        scores[_kind(record["event_id"])].append(record["score"])
    clean = np.asarray(scores["clean"])
    assert _roc_auc(clean, np.asarray(scores["pgd"])) > 0.9
    assert _roc_auc(clean, np.asarray(scores["fgsm"])) > 0.5
    threshold = json.loads((demo_run.out_dir / "detector.json").read_text(encoding="utf-8"))[
        "threshold"
    ]
    assert all(record["flagged"] is (record["score"] > threshold) for record in records)
    clean_flagged = np.mean([r["flagged"] for r in records if _kind(r["event_id"]) == "clean"])
    assert clean_flagged < 0.15, "unseen benign traffic should be flagged near the 5 % target"


def test_streaming_demo_quarantines_the_attacker_and_dead_letters_bad_messages(
    demo_run: DemoRun,
) -> None:
    assert demo_run.result.exit_code == 0, demo_run.result.output
    stderr = normalized(demo_run.result.stderr)
    assert "source attacker-7: quarantine until" in stderr
    assert re.search(r"source prober-3: quarantine until [^(]*\([^)]*a query attack\)", stderr)
    assert "10 dead-lettered" in stderr
    assert "user-" not in stderr.split("what advmon decided")[-1], "a benign user was quarantined"
    assert (demo_run.out_dir / "advmon.yaml").is_file()
    store = IncidentStore(create_engine(f"sqlite:///{demo_run.out_dir / 'advmon.db'}"))
    incidents, _ = store.find()
    # The attack also shifts the squeeze scores: the drift detectors open an incident.
    assert {i.kind.value for i in incidents} == {
        "adversarial",
        "drift",
        "quarantine",
        "query_attack",
    }
    assert [i.source for i in incidents if i.kind.value == "query_attack"] == ["prober-3"]
    quarantined = {i.source for i in incidents if i.kind.value == "quarantine"}
    assert "attacker-7" in quarantined
    assert quarantined <= {"attacker-7", "prober-3"}

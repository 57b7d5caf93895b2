"""What one run of :mod:`benchmarks.query_cost` measured, and the markdown page
(``docs/benchmarks-queries.md``) that shows it."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.machine import Machine
from benchmarks.page import generated_by, machine_table, table

__all__ = [
    "BATCH",
    "DEFAULT_HISTORY",
    "HISTORY_SIZES",
    "HistoryCost",
    "ModelCost",
    "QueryCostReport",
    "StageCost",
    "render_markdown",
]

#: Events per batch, as the worker batches them.
BATCH = 64
#: Queries a source's history holds, measured at each.
HISTORY_SIZES = (16, 64, 256, 1024, 4096)
#: The history size of the detector file's defaults.
DEFAULT_HISTORY = 256


@dataclass(frozen=True)
class ModelCost:
    """One model's scoring: median seconds of one pass over the batches."""

    name: str
    description: str
    squeezer_spec: str
    score_s: float
    """``Detector.score``: the fused squeeze graph."""
    bare_s: float
    """The model alone in an ONNX Runtime session."""


@dataclass(frozen=True)
class StageCost:
    """Median seconds of one pass over the same batches, per variant."""

    events: int
    rounds: int
    models: tuple[ModelCost, ...]
    """Smallest model first: the ratios of the history table are to its scoring."""
    fingerprint_s: float
    """``detectors.fingerprints``."""

    def per_event_us(self, seconds: float) -> float:
        return seconds / self.events * 1e6


@dataclass(frozen=True)
class HistoryCost:
    """One full history of ``size`` queries."""

    size: int
    observe_us: float
    """Median µs to observe one new unrelated query (it evicts the oldest)."""
    observe_attack_us: float
    """Median µs to observe one new query that matches every held query (one group)."""
    dumps_us: float
    loads_us: float
    nbytes: int
    """``QueryHistory.nbytes``."""
    stored_bytes: int
    """``len(QueryHistory.dumps())``."""
    queries_timed: int
    """Queries observed per scenario (the medians are over rounds of these)."""
    unrelated_matched: float
    """Share of the timed unrelated queries that matched at least one held query."""
    unrelated_observed: int
    """Unrelated queries observed into the full history (the timed rounds and one
    untimed round): what ``unrelated_matched`` is a share of."""


@dataclass(frozen=True)
class QueryCostReport:
    """One run: the command, the machine, the model and the figures."""

    command: str
    machine: Machine
    provider: str
    event_id_chars: int
    top_k: int
    """Window hashes kept per fingerprint (one bit each in the 1,024-bit map)."""
    match_bits: int
    """Shared bits for two 28×28 queries to match."""
    stages: StageCost
    histories: tuple[HistoryCost, ...]

    def history(self, size: int) -> HistoryCost:
        return next(h for h in self.histories if h.size == size)


def _us(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _bytes(value: int) -> str:
    if value >= 2**20:
        return f"{value / 2**20:.2f} MiB"
    if value >= 2**10:
        return f"{value / 2**10:.1f} KiB"
    return f"{value} B"


def render_markdown(report: QueryCostReport) -> str:
    """The query-attack cost page for ``report``."""
    stages = report.stages
    printing = stages.per_event_us(stages.fingerprint_s)
    default = report.history(DEFAULT_HISTORY)
    added = printing + default.observe_us
    added_attack = printing + default.observe_attack_us
    smallest = stages.models[0]
    scoring = stages.per_event_us(smallest.score_s)
    scores = [stages.per_event_us(m.score_s) for m in stages.models]

    def ratios(us: float) -> list[str]:
        return [f"{us / s:.3f}" for s in scores]

    stage_rows = []
    for model in stages.models:
        score_us = stages.per_event_us(model.score_s)
        bare_us = stages.per_event_us(model.bare_s)
        stage_rows += [
            [f"(a) scoring, {model.name}: fused squeeze graph", _us(score_us), *ratios(score_us)],
            [f"(a′) bare inference, {model.name}: the model alone", _us(bare_us), *ratios(bare_us)],
        ]
    stage_rows += [
        ["(b) fingerprinting (`detectors.fingerprints`)", _us(printing), *ratios(printing)],
        [
            f"(c) matching against a full history of {DEFAULT_HISTORY} (`QueryHistory.observe`)",
            _us(default.observe_us),
            *ratios(default.observe_us),
        ],
        [
            f"**(b) + (c)**: query-attack detection per event, history of {DEFAULT_HISTORY}",
            f"**{_us(added)}**",
            *(f"**{r}**" for r in ratios(added)),
        ],
    ]
    history_rows = [
        [
            f"{h.size:,}",
            _us(h.observe_us),
            _us(h.observe_attack_us),
            f"{h.unrelated_matched:.1%} "
            f"({round(h.unrelated_matched * h.unrelated_observed):,} of {h.unrelated_observed:,})",
            f"{(printing + h.observe_us) / scoring:.3f}",
            _us(h.dumps_us),
            _us(h.loads_us),
            _us(h.dumps_us + h.loads_us),
            f"{(h.dumps_us + h.loads_us) / scoring:.3f}",
            _bytes(h.nbytes),
            _bytes(h.stored_bytes),
        ]
        for h in report.histories
    ]
    largest = report.histories[-1]
    run_rows = [
        ["execution provider", f"{report.provider} (device `cpu`)"],
        [
            "intra-op threads",
            "ONNX Runtime's default (the scoring stage sets none), threads sleeping between "
            "runs as in the worker (`spin_wait` off)",
        ],
        ["fingerprints, histories", "one thread (numpy)"],
    ]
    models = "; ".join(
        f"the {m.name} ({m.description}), squeezers `{m.squeezer_spec}`" for m in stages.models
    )
    lines = [
        "# Query-attack detection cost",
        "",
        generated_by(report.command, "benchmarks/query_cost.py", "benchmarks/query_results.py"),
        "",
        "What detecting black-box query attacks per source adds to scoring, per event, on "
        f"28×28 images. Models: {models}; each calibrated with "
        "`detectors.calibrate_detector` on the calibration split of scikit-learn's digits "
        f"upscaled to 28×28, and fed {stages.events:,} upscaled digits in batches of "
        f"{BATCH}, as the worker reads them; medians of {stages.rounds} interleaved rounds. "
        "The scoring stage fingerprints every scored event that names a source (b); the "
        "query stage matches each against its source's history (c) and writes the history "
        "back to its table once per batch and source (d).",
        "",
        "## Per event",
        "",
        table(
            ["step", "µs per event", *(f"÷ scoring, {m.name}" for m in stages.models)],
            stage_rows,
            "lr" + "r" * len(stages.models),
        ),
        "",
        f"With {DEFAULT_HISTORY} queries held, fingerprinting and matching add "
        f"{_us(added)} µs per event: {added / scoring:.1%} of the scoring of the "
        f"{smallest.name}; during an attack, when every held query matches the new one, "
        f"{_us(added_attack)} µs ({added_attack / scoring:.1%}).",
        "",
        "## By history size",
        "",
        "Each history is full: a new query evicts the oldest. Two queries match when "
        f"their fingerprints share at least {report.match_bits} of the {report.top_k} bits "
        "each sets in its 1,024-bit map (one per kept window hash, at the hash's bottom 10 "
        f"bits); unrelated fingerprints share about {report.top_k**2 / 1024:.1f} by chance. "
        "*Unrelated*: images of uniform noise, with the share of them that matched at "
        "least one held query (a false match: expected none); *attack*: near copies of "
        "one digit (three pixels moved by less than a quantisation step), each matching "
        "every held query, all in one group, as an attack's queries are. The query stage "
        "writes a source's history (`QueryHistory.dumps`) once per batch in which the "
        "source sent queries, whatever "
        "their number, and reads it (`QueryHistory.loads`) when it is not already held "
        "decoded (after a restart or a rebalance); per event, the write costs the figure "
        "shown divided by the source's events in the batch, so the column (d) ÷ (a) is the "
        "cost of a source that sends one event per batch. Ratios are to the scoring of the "
        f"{smallest.name}. Memory: `QueryHistory.nbytes` (arrays and event ids of "
        f"{report.event_id_chars} characters) and the stored bytes "
        "(`len(QueryHistory.dumps())`). Matching medians are over rounds of "
        f"{largest.queries_timed} queries.",
        "",
        table(
            [
                "queries held",
                "(c) observe, unrelated query (µs)",
                "(c) observe, attack query (µs)",
                "unrelated queries that matched",
                "(b) + (c) ÷ (a)",
                "dumps (µs)",
                "loads (µs)",
                "(d) dumps + loads (µs)",
                "(d) ÷ (a)",
                "memory (`nbytes`)",
                "stored",
            ],
            history_rows,
            "rrrrrrrrrrr",
        ),
        "",
        "## Machine",
        "",
        machine_table(report.machine, run_rows),
        "",
    ]
    return "\n".join(lines)

"""report.html: self-contained, every plot shown, every text from the report escaped.

The browser tests open the page in headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright) from a ``file://`` URL, with every request other than the page
itself aborted and recorded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.evaluate._gate import compare
from monitor.evaluate._html import MAX_CLASS_BARS, render_html
from monitor.evaluate._report import write_outputs
from monitor.evaluate._types import AttackScores, Evaluation
from tests.evaluate.sample_evaluation import sample_evaluation, sample_report

CHROMIUM = Path("/usr/bin/chromium")

PLOTS_WITH_DETECTOR = 6
"""Accuracy against ε for L∞ and for L2, ROC curves, score histograms, per class, certified."""
PLOTS_WITHOUT_DETECTOR = 4
"""The same less the ROC curves and the score histograms."""

HOSTILE_MODEL_PATH = '<script>alert("model")</script>models/x.onnx'
HOSTILE_ATTACK_NAMES = (
    '<img src=x onerror=alert("attack")>',
    '"><svg onload=alert(2)>',
    "$\\frac{",
)


@dataclass
class LoadedPage:
    """What the browser saw while it loaded the page."""

    page: Any
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (CI installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def load(path: Path) -> LoadedPage:
        context = browser.new_context(service_workers="block")
        contexts.append(context)
        page = context.new_page()
        loaded = LoadedPage(page)

        def route(route: Any) -> None:
            if route.request.url.startswith(("file:", "data:")):
                route.continue_()
            else:
                loaded.blocked.append(route.request.url)
                route.abort()

        context.route("**/*", route)
        page.on("request", lambda request: loaded.requests.append(request.url))
        page.on(
            "console",
            lambda message: (
                loaded.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: loaded.console_errors.append(str(error)))

        def on_dialog(dialog: Any) -> None:
            loaded.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(path.as_uri(), wait_until="load")
        return loaded

    yield load
    for context in contexts:
        context.close()


def _images(page: Any) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = page.eval_on_selector_all(
        "img",
        """images => images.map(image => ({
            complete: image.complete,
            naturalWidth: image.naturalWidth,
            naturalHeight: image.naturalHeight,
            scheme: image.src.split(":")[0],
        }))""",
    )
    return images


@pytest.mark.parametrize(
    ("detector", "plots"), [(True, PLOTS_WITH_DETECTOR), (False, PLOTS_WITHOUT_DETECTOR)]
)
def test_every_plot_is_loaded_and_shown_and_nothing_is_fetched(
    tmp_path: Path, open_page: Any, detector: bool, plots: int
) -> None:
    files = write_outputs(sample_evaluation(detector=detector), tmp_path)

    loaded = open_page(files.html)

    images = _images(loaded.page)
    assert len(images) == plots
    for image in images:
        assert image["complete"]
        assert image["naturalWidth"] > 0
        assert image["naturalHeight"] > 0
        assert image["scheme"] == "data"
    locator = loaded.page.locator("img")
    for index in range(plots):
        image = locator.nth(index)
        image.scroll_into_view_if_needed()
        assert image.is_visible()
        box = image.bounding_box()
        assert box is not None
        assert box["width"] > 100
        assert box["height"] > 100
    assert loaded.blocked == []
    assert loaded.requests == [files.html.as_uri()]
    assert loaded.console_errors == []


def test_the_browser_checks_catch_a_page_that_fetches_or_breaks_an_image(
    tmp_path: Path, open_page: Any
) -> None:
    page = tmp_path / "leaky.html"
    page.write_text(
        '<!DOCTYPE html><img src="https://example.com/plot.png">'
        '<img src="data:image/png;base64,bm90IGEgcG5n">'
    )

    loaded = open_page(page)

    assert loaded.blocked == ["https://example.com/plot.png"]
    assert [image["naturalWidth"] for image in _images(loaded.page)] == [0, 0]


def test_hostile_text_in_the_report_stays_text_in_the_browser(
    tmp_path: Path, open_page: Any
) -> None:
    evaluation = sample_evaluation(model_path=HOSTILE_MODEL_PATH, attack_names=HOSTILE_ATTACK_NAMES)
    files = write_outputs(evaluation, tmp_path)

    loaded = open_page(files.html)

    page = loaded.page
    assert loaded.dialogs == []
    assert page.eval_on_selector_all("script, svg", "elements => elements.length") == 0
    assert len(_images(page)) == PLOTS_WITH_DETECTOR
    assert page.locator("h1").inner_text() == f"Robustness report: {HOSTILE_MODEL_PATH}"
    assert page.title() == f"Robustness report: {HOSTILE_MODEL_PATH}"
    first_cells = page.eval_on_selector_all(
        "table:last-of-type tr td:first-child", "cells => cells.map(cell => cell.textContent)"
    )
    assert set(first_cells) == set(HOSTILE_ATTACK_NAMES)
    assert HOSTILE_MODEL_PATH in page.locator("pre").inner_text()
    assert loaded.blocked == []
    assert loaded.console_errors == []


def test_hostile_text_is_escaped_in_the_html_source() -> None:
    evaluation = sample_evaluation(model_path=HOSTILE_MODEL_PATH, attack_names=HOSTILE_ATTACK_NAMES)

    html = render_html(evaluation)

    assert "<script" not in html
    assert "<svg" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;model&#34;)&lt;/script&gt;models/x.onnx" in html
    assert "&lt;img src=x onerror=alert(&#34;attack&#34;)&gt;" in html
    assert "&#34;&gt;&lt;svg onload=alert(2)&gt;" in html
    assert len(re.findall(r"<img ", html)) == PLOTS_WITH_DETECTOR


def test_the_page_forbids_every_source_but_its_own_images() -> None:
    html = render_html(sample_evaluation())

    assert (
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
    ) in html
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert len(sources) == PLOTS_WITH_DETECTOR
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in html
    assert "https://" not in html


def test_the_sample_page_is_small() -> None:
    html = render_html(sample_evaluation())

    assert len(html.encode()) < 300_000


def test_the_page_shows_the_headline_table_and_settings() -> None:
    report = sample_report()

    html = render_html(sample_evaluation())

    assert f"sha256 <code>{report['model']['sha256'][:12]}</code>" in html
    assert f"{100 * report['clean']['accuracy']:.1f}%" in html
    assert "squeezers bit_depth(4)+median(2)" in html
    assert f"{report['cost']['ratio']:.3g}×" in html
    assert html.count("<tr>") == 1 + len(report["attacks"])
    assert "--attacks square,hopskipjump,pgd --eps &#39;linf:0.05,0.1,0.2;l2:0.5,1,2&#39;" in html
    assert "Release gate" not in html


def test_the_page_without_a_detector_says_why_there_are_no_detection_plots() -> None:
    html = render_html(sample_evaluation(detector=False))

    assert "No detector was evaluated (advmon evaluate --detector)" in html
    assert html.count("<img ") == PLOTS_WITHOUT_DETECTOR


def test_the_page_says_when_no_attack_succeeded() -> None:
    evaluation = sample_evaluation()
    empty = [
        AttackScores(s.name, s.norm, s.eps, np.array([]), np.array([], dtype=int))
        for s in evaluation.adversarial_scores
    ]
    html = render_html(
        Evaluation(evaluation.report, evaluation.clean_scores, evaluation.clean_labels, empty)
    )

    assert "No attack produced a successful adversarial example" in html
    assert html.count("<img ") == PLOTS_WITH_DETECTOR - 2


def test_an_attack_without_success_at_its_largest_eps_is_named_under_the_roc_curves() -> None:
    evaluation = sample_evaluation()
    scores = [
        AttackScores(s.name, s.norm, s.eps, np.array([]), np.array([], dtype=int))
        if (s.name, s.eps) == ("pgd", 0.2)
        else s
        for s in evaluation.adversarial_scores
    ]

    html = render_html(
        Evaluation(evaluation.report, evaluation.clean_scores, evaluation.clean_labels, scores)
    )

    assert "No successful adversarial example at the largest ε, not drawn: pgd (L∞, ε=0.2)" in html
    assert html.count("<img ") == PLOTS_WITH_DETECTOR


def test_the_page_shows_the_gate_verdict_and_its_regressions() -> None:
    baseline = sample_report()
    evaluation = sample_evaluation()
    evaluation.report["attacks"][0]["robust_accuracy"] -= 0.1
    gate = compare(baseline, evaluation.report, max_drop=0.02)

    html = render_html(evaluation, gate=gate)

    assert '<div class="value failed">failed</div>' in html
    assert f"<p>{gate.verdict}.</p>" in html
    assert "<td>square</td>" in html
    assert '<td class="text">robust_accuracy</td>' in html


def test_many_classes_are_cut_to_the_worst() -> None:
    evaluation = sample_evaluation()
    template = evaluation.report["per_class"][0]
    evaluation.report["per_class"] = [
        {**template, "label": label, "robust_accuracy": label / 100} for label in range(100)
    ]

    html = render_html(evaluation)

    assert f"The {MAX_CLASS_BARS} classes with the lowest robust accuracy of 100." in html


def test_pages_rendered_in_parallel_threads_are_those_rendered_one_at_a_time() -> None:
    evaluations = [sample_evaluation(seed=seed, detector=seed % 2 == 0) for seed in range(4)]
    one_at_a_time = [render_html(evaluation) for evaluation in evaluations]

    with ThreadPoolExecutor(max_workers=4) as pool:
        in_parallel = list(pool.map(render_html, evaluations))

    assert in_parallel == one_at_a_time

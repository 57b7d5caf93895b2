"""The attacks (ART, named and sized by advmon), the estimators they run on, and
``craft_adversarial`` as the squeezer search calls it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from detectors import load_model
from monitor.evaluate._attacks import (
    ATTACKS,
    craft_adversarial,
    default_eps,
    parse_attacks,
    perturbation_norm,
    samples_for,
)
from monitor.evaluate._estimators import (
    OnnxClassifier,
    black_box_classifier,
    check_converted_outputs,
    white_box_classifier,
)
from tests.detectors.models import random_cnn
from tests.evaluate.models import ModelCase, cancer_tabular, digits_mlp


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    return digits_mlp(tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    return cancer_tabular(tmp_path_factory.mktemp("cancer"))


def _onnx_classifier(case: ModelCase) -> OnnxClassifier:
    return OnnxClassifier(load_model(str(case.model_path)), case.output_kind)


# --- Choosing attacks -----------------------------------------------------------------


def _multiprocess_installed(monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        if name == "multiprocess":
            return real_find_spec("json") if installed else None
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_default_attacks_for_images_and_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    _multiprocess_installed(monkeypatch, True)
    image = [a.key for a in parse_attacks(None, [1, 8, 8], "small")]
    assert image == ["square", "hopskipjump", "simba", "fgsm", "pgd", "cw", "deepfool"]
    full = [a.key for a in parse_attacks(None, [1, 8, 8], "full")]
    assert set(full) == set(image) | {"boundary", "autoattack"}
    tabular = [a.key for a in parse_attacks(None, [30], "small")]
    assert tabular == [
        "hopskipjump",
        "hopskipjump:linf",
        "boundary",
        "fgsm",
        "pgd",
        "cw",
        "deepfool",
    ]


def test_autoattack_needs_multiprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    _multiprocess_installed(monkeypatch, False)

    full = [a.key for a in parse_attacks(None, [1, 8, 8], "full")]
    assert "autoattack" not in full
    assert "boundary" in full
    with pytest.raises(ValueError, match="autoattack needs the Python package multiprocess"):
        parse_attacks("pgd,autoattack", [1, 8, 8], "full")


def test_an_attack_spec_picks_names_and_norms() -> None:
    chosen = parse_attacks(" PGD:l2 ,hopskipjump:linf, cw", [1, 8, 8])

    assert [(a.name, a.norm, a.access, a.bounded) for a in chosen] == [
        ("pgd", "l2", "white-box", True),
        ("hopskipjump", "linf", "black-box", False),
        ("cw", "l2", "white-box", False),
    ]
    assert [a.key for a in chosen] == ["pgd:l2", "hopskipjump:linf", "cw"]


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        ("squares", [1, 8, 8], "unknown attack 'squares'; valid names: square, hopskipjump"),
        ("square", [30], "square applies to images shaped [N, C, H, W] only"),
        ("simba", [8, 8], "simba applies to images shaped [N, C, H, W] only"),
        ("cw:linf", [1, 8, 8], "cw has no norm 'linf'; it takes l2"),
        ("pgd,pgd:linf", [1, 8, 8], "pgd is named twice"),
        ("pgd,,fgsm", [1, 8, 8], "empty name"),
        (" ", [1, 8, 8], "no attack named"),
    ],
)
def test_a_bad_attack_spec_says_what_is_valid(spec: str, shape: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=r"^attacks: ") as error:
        parse_attacks(spec, shape)
    assert message in str(error.value)


def test_tabular_errors_list_only_attacks_that_apply() -> None:
    with pytest.raises(ValueError, match="simba applies to images") as error:
        parse_attacks("simba", [30])
    assert str(error.value).endswith(
        "for this model use: hopskipjump, boundary, fgsm, pgd, cw, deepfool, autoattack"
    )


def test_budget_is_checked() -> None:
    with pytest.raises(ValueError, match="budget must be 'small' or 'full'"):
        parse_attacks(None, [30], "medium")  # type: ignore[arg-type]
    assert samples_for("small") <= 100 < samples_for("full")


def test_default_eps_scale_with_the_range_and_the_input_size() -> None:
    eps = default_eps((-1.0, 1.0), 784)

    assert eps["linf"] == [0.04, 0.1, 0.2, 0.4]
    assert eps["l2"] == pytest.approx([0.04 * 28, 0.1 * 28, 0.2 * 28, 0.4 * 28])
    with pytest.raises(ValueError, match="input_range"):
        default_eps((1.0, 1.0), 4)


def test_every_attack_has_a_default_norm_first() -> None:
    for definition in ATTACKS.values():
        assert definition.norms[0] in ("linf", "l2")
        assert len(set(definition.norms)) == len(definition.norms)


# --- Estimators -----------------------------------------------------------------------


def test_black_box_classifier_gives_probabilities(mlp: ModelCase) -> None:
    model = _onnx_classifier(mlp)
    x = mlp.test.x[:5]
    classifier = black_box_classifier(model, x.shape[1:], mlp.input_range)
    probabilities = classifier.predict(x)

    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), model.predict(x))


def test_converted_outputs_must_agree() -> None:
    expected = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)

    assert check_converted_outputs(expected, expected + 5e-5) is None
    reason = check_converted_outputs(expected, expected + np.float32(0.001))
    assert reason is not None
    assert "differ from ONNX Runtime's by up to 0.001" in reason
    reason = check_converted_outputs(expected, expected[:, :1])
    assert reason == "the PyTorch conversion outputs shape [2, 1], ONNX Runtime [2, 2]"
    reason = check_converted_outputs(expected, np.full_like(expected, np.nan))
    assert reason == "the PyTorch conversion outputs non-finite values"


def test_white_box_conversion_is_checked_against_onnx_runtime(mlp: ModelCase) -> None:
    model = _onnx_classifier(mlp)
    white_box = white_box_classifier(model, mlp.test.x[:64], mlp.input_range)

    assert white_box.available
    assert white_box.reason == "used"
    assert white_box.classifier is not None
    logits = white_box.classifier.predict(mlp.test.x[:64])
    np.testing.assert_allclose(logits, model.scores(mlp.test.x[:64]), atol=1e-4)


def test_converted_logits_that_disagree_leave_white_box_out(
    mlp: ModelCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx2torch
    import torch

    real_convert = onnx2torch.convert

    class Shifted(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> Any:
            return self.inner(x) + 0.01

    monkeypatch.setattr(onnx2torch, "convert", lambda m: Shifted(real_convert(m)))
    white_box = white_box_classifier(_onnx_classifier(mlp), mlp.test.x[:64], mlp.input_range)

    assert not white_box.available
    assert white_box.reason.startswith("the PyTorch conversion's outputs differ")


def test_missing_torch_leaves_white_box_out(
    mlp: ModelCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    white_box = white_box_classifier(_onnx_classifier(mlp), mlp.test.x[:8], mlp.input_range)

    assert not white_box.available
    assert white_box.reason == (
        "torch and onnx2torch are not installed (pip install 'advmon[attacks]')"
    )


def test_skl2onnx_model_cannot_be_converted(cancer: ModelCase) -> None:
    white_box = white_box_classifier(
        _onnx_classifier(cancer), cancer.test.x[:8], cancer.input_range
    )

    assert not white_box.available
    assert white_box.reason.startswith("the model cannot be converted to PyTorch")
    assert "ai.onnx.ml" in white_box.reason


def test_a_probabilities_model_gives_log_probabilities_to_the_loss(tmp_path: Path) -> None:
    path = tmp_path / "softmax_cnn.onnx"
    onnx.save(random_cnn(channels=1, side=8, classes=4, softmax=True), path)
    model = OnnxClassifier(load_model(str(path)), "probabilities")
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    white_box = white_box_classifier(model, x, (0.0, 1.0))

    assert white_box.available
    assert white_box.classifier is not None
    log_probabilities = white_box.classifier.predict(x)
    np.testing.assert_allclose(np.exp(log_probabilities), model.scores(x), atol=1e-5)


# --- Crafting for the squeezer search -------------------------------------------------


def test_craft_keeps_only_successes_and_their_rows(mlp: ModelCase) -> None:
    x, y = mlp.test.x[:40], mlp.test.y[:40]
    crafted = craft_adversarial(
        mlp.model_path,
        x,
        y,
        input_range=mlp.input_range,
        output_kind="logits",
        attacks="square,hopskipjump,fgsm,deepfool",
    )
    model = _onnx_classifier(mlp)
    correct = np.flatnonzero(model.predict(x) == y)

    assert [(s.name, s.norm, s.access) for s in crafted] == [
        ("square", "linf", "black-box"),
        ("hopskipjump", "l2", "black-box"),
        ("fgsm", "linf", "white-box"),
        ("deepfool", "l2", "white-box"),
    ]
    for adversarial in crafted:
        assert len(adversarial.index) > 10, adversarial.name
        assert adversarial.x_adv.shape == (len(adversarial.index), 1, 8, 8)
        assert adversarial.x_adv.dtype == np.float32
        assert set(adversarial.index.tolist()) <= set(correct.tolist())
        assert np.all(model.predict(adversarial.x_adv) != y[adversarial.index])
        assert adversarial.x_adv.min() >= 0.0
        assert adversarial.x_adv.max() <= 1.0
    for bounded in crafted[0], crafted[2]:
        norms = perturbation_norm(x[bounded.index], bounded.x_adv, "linf")
        assert norms.max() <= 0.2 + 1e-6


def test_craft_is_repeatable_and_labels_default_to_predictions(mlp: ModelCase) -> None:
    x = mlp.test.x[:30]

    def craft(seed: int) -> list[Any]:
        return craft_adversarial(
            mlp.model_path,
            x,
            None,
            input_range=mlp.input_range,
            output_kind="logits",
            attacks="square",
            seed=seed,
        )

    (first,), (again,), (other,) = craft(0), craft(0), craft(1)
    np.testing.assert_array_equal(first.x_adv, again.x_adv)
    np.testing.assert_array_equal(first.index, again.index)
    assert not np.array_equal(first.x_adv, other.x_adv)
    predictions = _onnx_classifier(mlp).predict(x)
    assert np.all(_onnx_classifier(mlp).predict(first.x_adv) != predictions[first.index])


def test_autoattack_runs_where_multiprocess_is_installed(mlp: ModelCase) -> None:
    pytest.importorskip("multiprocess")
    x, y = mlp.test.x[:30], mlp.test.y[:30]
    (crafted,) = craft_adversarial(
        mlp.model_path,
        x,
        y,
        input_range=mlp.input_range,
        output_kind="logits",
        attacks="autoattack",
    )

    assert (crafted.name, crafted.norm, crafted.access) == ("autoattack", "linf", "white-box")
    assert len(crafted.index) > 20
    assert perturbation_norm(x[crafted.index], crafted.x_adv, "linf").max() <= 0.2 + 1e-6


def test_craft_on_a_tabular_pipeline_runs_black_box_only(cancer: ModelCase) -> None:
    x, y = cancer.test.x[:20], cancer.test.y[:20]
    crafted = craft_adversarial(
        cancer.model_path,
        x,
        y,
        input_range=cancer.input_range,
        output_kind="probabilities",
        attacks="hopskipjump,fgsm",
    )

    assert [(s.name, s.access) for s in crafted] == [("hopskipjump", "black-box")]
    assert len(crafted[0].index) > 0


def test_craft_checks_its_inputs(mlp: ModelCase) -> None:
    with pytest.raises(ValueError, match=r"x must be shaped \[N, 1, 8, 8\]"):
        craft_adversarial(
            mlp.model_path,
            mlp.test.x[:4, 0],
            mlp.test.y[:4],
            input_range=(0.0, 1.0),
            output_kind="logits",
        )
    with pytest.raises(ValueError, match="labels must hold one class per row"):
        craft_adversarial(
            mlp.model_path,
            mlp.test.x[:4],
            mlp.test.y[:3],
            input_range=(0.0, 1.0),
            output_kind="logits",
        )

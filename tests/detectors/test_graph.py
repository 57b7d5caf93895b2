"""The fused graph: same answers as running the model on each squeezed copy, clear errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detectors import (
    FUSED_OUTPUTS,
    ModelValidationError,
    SqueezerSpecError,
    SqueezeScorer,
    build_squeeze_graph,
    create_session,
    inspect_model,
    parse_squeezer_spec,
)
from detectors.squeezers import BitDepth, MedianFilter, QuantileGrid, Quantize, RoundDecimals
from tests.detectors import reference
from tests.detectors.conftest import TrainedDigits
from tests.detectors.models import random_cnn, random_mlp_tabular


def bare_predict(model: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    session = create_session(model, "cpu")
    name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        result: np.ndarray = session.run(None, {name: batch})[0]
        return result

    return predict


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
@pytest.mark.parametrize("softmax", [False, True])
def test_fused_graph_equals_reference(opset: int, softmax: bool) -> None:
    model = random_cnn(channels=3, side=9, softmax=softmax, opset=opset)
    spec = "bit_depth:3,median:2,median:3"
    squeezers = parse_squeezer_spec(spec)
    fused = build_squeeze_graph(
        model, squeezers, output_kind="probabilities" if softmax else "logits"
    )
    x = np.random.default_rng(opset).random((7, 3, 9, 9), dtype=np.float32)
    got = SqueezeScorer(fused, device="cpu").score(x)

    copies = [reference.bit_depth(x, 3), reference.median(x, 2), reference.median(x, 3)]
    score, distances = reference.squeeze_score(bare_predict(model), x, copies, logits=not softmax)
    np.testing.assert_allclose(got.score, score, atol=1e-5)
    np.testing.assert_allclose(got.squeezer_distances, distances, atol=1e-5)
    probs = bare_predict(model)(x)
    if not softmax:
        probs = np.exp(probs - probs.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got.probabilities, probs, atol=1e-5)
    np.testing.assert_array_equal(got.prediction, probs.argmax(axis=1))
    assert got.score.shape == (7,)
    assert got.squeezer_distances.shape == (7, 3)


def test_fused_graph_on_trained_digits(digits: TrainedDigits) -> None:
    x = digits.data.test_x[:64]
    fused = build_squeeze_graph(digits.model, (BitDepth(2),), output_kind="logits")
    got = SqueezeScorer(fused, device="cpu").score(x)
    score, _ = reference.squeeze_score(
        bare_predict(digits.model), x, [reference.bit_depth(x, 2)], logits=True
    )
    np.testing.assert_allclose(got.score, score, atol=1e-5)
    assert np.all((got.score >= 0) & (got.score <= 2))


def test_fused_graph_for_tabular_quantize() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, size=(40, 6)).astype(np.float32)
    model = random_mlp_tabular(features=6)
    quantize = Quantize(0.5).fit(x.mean(axis=0), x.std(axis=0))
    fused = build_squeeze_graph(model, (quantize, BitDepth(4, -8.0, 8.0)), output_kind="logits")
    got = SqueezeScorer(fused, device="cpu").score(x)
    center, spacing = quantize.grid()
    copies = [reference.quantize(x, center, spacing), reference.bit_depth(x, 4, -8.0, 8.0)]
    score, _ = reference.squeeze_score(bare_predict(model), x, copies, logits=True)
    np.testing.assert_allclose(got.score, score, atol=1e-5)


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_fused_graph_for_tabular_quantile_and_round(opset: int) -> None:
    rng = np.random.default_rng(opset)
    benign = rng.normal(0, 2, size=(200, 6)).astype(np.float32)
    benign[:, 4] = rng.integers(0, 3, size=200)  # a discrete feature: repeated quantiles
    x = np.concatenate([benign[:20], rng.normal(0, 3, size=(20, 6)).astype(np.float32)])
    model = random_mlp_tabular(features=6, opset=opset)
    grid = QuantileGrid(8).fit(benign)
    squeezers = (grid, RoundDecimals(1), RoundDecimals(-1))
    fused = build_squeeze_graph(model, squeezers, output_kind="logits")
    got = SqueezeScorer(fused, device="cpu").score(x)
    copies = [
        reference.quantile_snap(x, grid.grid()),
        reference.round_decimals(x, 1),
        reference.round_decimals(x, -1),
    ]
    score, distances = reference.squeeze_score(bare_predict(model), x, copies, logits=True)
    np.testing.assert_allclose(got.score, score, atol=1e-5)
    np.testing.assert_allclose(got.squeezer_distances, distances, atol=1e-5)
    assert got.squeezer_distances.shape == (40, 3)


def test_fitted_squeezers_must_match_the_feature_count() -> None:
    model = random_mlp_tabular(features=6)
    five = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    fitted = (
        QuantileGrid(4).fit(five),
        Quantize(0.5).fit(five.mean(axis=0), five.std(axis=0)),
    )
    for squeezer in fitted:
        with pytest.raises(
            ModelValidationError, match="fitted on 5 features but the model takes 6"
        ):
            build_squeeze_graph(model, (squeezer,), output_kind="logits")
    with pytest.raises(SqueezerSpecError, match="not fitted; calibrate first"):
        build_squeeze_graph(model, (QuantileGrid(4),), output_kind="logits")
    for tabular_only in (QuantileGrid(4), RoundDecimals(2)):
        with pytest.raises(ModelValidationError, match="does not apply to image inputs"):
            build_squeeze_graph(random_cnn(), (tabular_only,), output_kind="logits")


def test_batch_of_one_and_empty_batch() -> None:
    fused = build_squeeze_graph(random_cnn(), (MedianFilter(2),), output_kind="logits")
    scorer = SqueezeScorer(fused, device="cpu")
    x = np.random.default_rng(0).random((5, 3, 12, 12), dtype=np.float32)
    together = scorer.score(x).score
    one_by_one = np.concatenate([scorer.score(x[i : i + 1]).score for i in range(5)])
    np.testing.assert_allclose(one_by_one, together, atol=1e-6)


def test_model_exported_with_a_fixed_batch_of_one_is_scored_in_batches() -> None:
    model = random_cnn(batch=1)
    fused = build_squeeze_graph(model, (BitDepth(4),), output_kind="logits")
    x = np.random.default_rng(0).random((6, 3, 12, 12), dtype=np.float32)
    assert SqueezeScorer(fused, device="cpu").score(x).score.shape == (6,)


def test_graph_outputs_and_one_model_copy() -> None:
    model = random_cnn()
    fused = build_squeeze_graph(
        model, parse_squeezer_spec("bit_depth:1,median:2"), output_kind="logits"
    )
    assert [o.name for o in fused.graph.output] == list(FUSED_OUTPUTS)
    convs = [n for n in fused.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1, "the model must run once over the concatenated batch"


def test_inspect_model_describes_image_and_tabular_models() -> None:
    image = inspect_model(random_cnn(channels=1, side=28, softmax=True))
    assert (image.input_kind, image.input_shape, image.num_classes) == ("image", (1, 28, 28), 5)
    assert image.output_kind == "probabilities"
    tabular = inspect_model(random_mlp_tabular(features=6))
    assert (tabular.input_kind, tabular.input_shape, tabular.output_kind) == ("tabular", (6,), None)


def _with_graph(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    opset: int = 17,
) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = 8
    return model


def test_rejects_models_it_cannot_monitor() -> None:
    f32 = TensorProto.FLOAT
    two_inputs = _with_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [
            helper.make_tensor_value_info("a", f32, ["N", 4]),
            helper.make_tensor_value_info("b", f32, ["N", 4]),
        ],
        [helper.make_tensor_value_info("y", f32, ["N", 4])],
    )
    with pytest.raises(ModelValidationError, match="exactly one input; it has: a, b"):
        inspect_model(two_inputs)

    int_input = _with_graph(
        [helper.make_node("Cast", ["a"], ["y"], to=f32)],
        [helper.make_tensor_value_info("a", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", f32, ["N", 4])],
    )
    with pytest.raises(ModelValidationError, match="must be float32"):
        inspect_model(int_input)

    rank5 = _with_graph(
        [helper.make_node("Identity", ["a"], ["y"])],
        [helper.make_tensor_value_info("a", f32, ["N", 1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", f32, ["N", 4])],
    )
    with pytest.raises(ModelValidationError, match=r"\[batch, C, H, W\]"):
        inspect_model(rank5)

    no_scores = _with_graph(
        [helper.make_node("ArgMax", ["a"], ["label"], axis=1)],
        [helper.make_tensor_value_info("a", f32, ["N", 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1])],
    )
    with pytest.raises(ModelValidationError, match="zipmap"):
        inspect_model(no_scores)

    two_scores = _with_graph(
        [helper.make_node("Identity", ["a"], ["s1"]), helper.make_node("Relu", ["a"], ["s2"])],
        [helper.make_tensor_value_info("a", f32, ["N", 4])],
        [
            helper.make_tensor_value_info("s1", f32, ["N", 4]),
            helper.make_tensor_value_info("s2", f32, ["N", 4]),
        ],
    )
    with pytest.raises(ModelValidationError, match="several"):
        inspect_model(two_scores)
    assert inspect_model(two_scores, output_name="s2").output_name == "s2"
    with pytest.raises(ModelValidationError, match="no output 'nope'"):
        inspect_model(two_scores, output_name="nope")

    old = random_mlp_tabular(opset=12)
    with pytest.raises(ModelValidationError, match="opset 12"):
        inspect_model(old)


def test_squeezer_must_fit_the_input_kind() -> None:
    with pytest.raises(ModelValidationError, match="does not apply to tabular"):
        build_squeeze_graph(random_mlp_tabular(), (MedianFilter(2),), output_kind="logits")
    with pytest.raises(ModelValidationError, match="at least one squeezer"):
        build_squeeze_graph(random_cnn(), (), output_kind="logits")


def test_scikit_learn_model_from_skl2onnx() -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    zipmapped = to_onnx(clf, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    with pytest.raises(ModelValidationError, match="zipmap"):
        inspect_model(zipmapped)
    model = to_onnx(clf, x[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    signature = inspect_model(model)
    assert (signature.input_kind, signature.num_classes) == ("tabular", 3)
    quantize = Quantize(0.5).fit(x.mean(axis=0), x.std(axis=0))
    fused = build_squeeze_graph(model, (quantize,), output_kind="probabilities")
    got = SqueezeScorer(fused, device="cpu").score(x)
    np.testing.assert_allclose(got.probabilities, clf.predict_proba(x), atol=1e-5)
    center, spacing = quantize.grid()
    expected = np.abs(
        clf.predict_proba(reference.quantize(x, center, spacing)) - clf.predict_proba(x)
    ).sum(axis=1)
    np.testing.assert_allclose(got.score, expected, atol=1e-5)


def test_initializer_names_do_not_clash_with_ours() -> None:
    # A model whose tensor names look like the fused graph's own still composes.
    model = random_mlp_tabular()
    for init in model.graph.initializer:
        init.name = "advmon/" + init.name
    for node in model.graph.node:
        node.input[:] = ["advmon/" + i if i in ("w1", "w2") else i for i in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "score"))
    fused = build_squeeze_graph(model, (BitDepth(2, -3, 3),), output_kind="logits")
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    assert SqueezeScorer(fused, device="cpu").score(x).score.shape == (3,)

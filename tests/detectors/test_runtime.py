"""Execution provider selection."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from detectors import ExecutionProviderError, SqueezeScorer, build_squeeze_graph
from detectors.runtime import create_session, cuda_device_count
from detectors.squeezers import BitDepth
from tests.detectors.models import random_cnn

no_gpu = pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a GPU")
needs_gpu = pytest.mark.skipif(cuda_device_count() == 0, reason="no CUDA device")


def fused() -> bytes:
    graph = build_squeeze_graph(random_cnn(), (BitDepth(3),), output_kind="logits")
    payload: bytes = graph.SerializeToString()
    return payload


def test_cpu_is_used_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="detectors.runtime"):
        scorer = SqueezeScorer(fused(), device="cpu")
    assert (scorer.provider, scorer.device) == ("CPUExecutionProvider", "cpu")
    assert "feature squeezing runs on CPUExecutionProvider" in caplog.text


@no_gpu
def test_auto_falls_back_to_cpu_without_a_gpu() -> None:
    assert SqueezeScorer(fused(), device="auto").provider == "CPUExecutionProvider"


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ExecutionProviderError, match="CUDA"):
        SqueezeScorer(fused(), device="cuda")


@needs_gpu
def test_cuda_gives_the_cpu_answers() -> None:
    x = np.random.default_rng(0).random((64, 3, 12, 12), dtype=np.float32)
    on_cpu = SqueezeScorer(fused(), device="cpu").score(x)
    on_gpu = SqueezeScorer(fused(), device="cuda")
    assert on_gpu.provider == "CUDAExecutionProvider"
    got = on_gpu.score(x)
    np.testing.assert_allclose(got.score, on_cpu.score, atol=1e-5)
    np.testing.assert_allclose(got.probabilities, on_cpu.probabilities, atol=1e-5)
    np.testing.assert_array_equal(got.prediction, on_cpu.prediction)


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ExecutionProviderError, match="unknown device 'tpu'"):
        create_session(fused(), "tpu")  # type: ignore[arg-type]


@no_gpu
def test_check_device_refuses_cuda_without_a_gpu_before_any_session() -> None:
    from detectors.runtime import check_device

    check_device("cpu")
    check_device("auto")
    with pytest.raises(ExecutionProviderError, match="cuda"):
        check_device("cuda")
    with pytest.raises(ExecutionProviderError, match="unknown device 'tpu'"):
        check_device("tpu")  # type: ignore[arg-type]

"""Run a fused squeeze graph on ONNX Runtime: CUDA when a GPU is there, CPU otherwise."""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from detectors._errors import ExecutionProviderError
from detectors.graph import FUSED_OUTPUTS

__all__ = [
    "Device",
    "SqueezeScorer",
    "SqueezeScores",
    "check_device",
    "create_session",
    "cuda_device_count",
]

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or a GPU).

    Asking the driver first keeps ONNX Runtime from logging a failed CUDA start-up on
    every CPU-only machine where the GPU build of ONNX Runtime is installed.
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def check_device(device: Device) -> None:
    """Raise :class:`ExecutionProviderError` now if ``device`` cannot be used here.

    ``auto`` and ``cpu`` always can; ``cuda`` needs ONNX Runtime's CUDA execution provider
    and a GPU the driver reports.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ExecutionProviderError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device != "cuda":
        return
    if _CUDA not in ort.get_available_providers():
        raise ExecutionProviderError(
            "device 'cuda' requested but this ONNX Runtime build has no CUDA execution "
            "provider; install onnxruntime-gpu"
        )
    if cuda_device_count() == 0:
        raise ExecutionProviderError(
            "device 'cuda' requested but the NVIDIA driver reports no GPU; use "
            "ADVMON_SCORING__DEVICE=auto or cpu"
        )


def create_session(
    model: onnx.ModelProto | bytes,
    device: Device = "auto",
    intra_op_threads: int | None = None,
    *,
    spin_wait: bool = True,
) -> ort.InferenceSession:
    """Create an ONNX Runtime session on the requested device.

    ``auto`` uses CUDA when ONNX Runtime has the CUDA execution provider and the driver
    reports a GPU, else the CPU. ``cuda`` raises :class:`ExecutionProviderError` when
    CUDA cannot be used instead of silently falling back. Without ``spin_wait``, the
    intra-op threads sleep between runs instead of spinning for the next one (ONNX
    Runtime's default): a run may start a little later, but the cores are left to the
    other work of a process (or machine) that does more than score.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ExecutionProviderError(f"unknown device {device!r}; use auto, cpu or cuda")
    payload = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    want_cuda = device == "cuda" or (
        device == "auto" and _CUDA in ort.get_available_providers() and cuda_device_count() > 0
    )
    if device == "cuda" and _CUDA not in ort.get_available_providers():
        raise ExecutionProviderError(
            "device 'cuda' requested but this ONNX Runtime build has no CUDA execution "
            "provider; install onnxruntime-gpu"
        )
    providers = [_CUDA, _CPU] if want_cuda else [_CPU]
    session = ort.InferenceSession(payload, sess_options=options, providers=providers)
    active = session.get_providers()[0]
    if device == "cuda" and active != _CUDA:
        raise ExecutionProviderError(
            "device 'cuda' requested but ONNX Runtime could not start its CUDA execution "
            "provider (check the NVIDIA driver and the CUDA/cuDNN libraries)"
        )
    if want_cuda and active != _CUDA:
        logger.warning("CUDA execution provider failed to start; scoring on the CPU")
    return session


@dataclass(frozen=True)
class SqueezeScores:
    """Per-event outputs of the fused graph for a batch of ``N`` events."""

    score: np.ndarray
    """``[N]`` float32: the squeeze score (max L1 distance)."""
    prediction: np.ndarray
    """``[N]`` int64: predicted class of the original input."""
    probabilities: np.ndarray
    """``[N, C]`` float32: class probabilities of the original input."""
    squeezer_distances: np.ndarray
    """``[N, k]`` float32: L1 distance for each squeezer."""


class SqueezeScorer:
    """Score batches with a fused squeeze graph in one ``InferenceSession.run`` each.

    On CUDA the batch is bound with I/O binding (one host-to-device copy per batch, the
    outputs copied back once); on the CPU it runs directly.

    Parameters
    ----------
    graph
        The fused graph from :func:`detectors.graph.build_squeeze_graph`.
    device
        ``auto``, ``cpu`` or ``cuda`` (see :func:`create_session`).
    intra_op_threads
        ONNX Runtime's intra-op thread count; ``None`` lets it choose.
    spin_wait
        Whether idle intra-op threads spin for the next run (see :func:`create_session`).
    """

    def __init__(
        self,
        graph: onnx.ModelProto | bytes,
        *,
        device: Device = "auto",
        intra_op_threads: int | None = None,
        spin_wait: bool = True,
    ) -> None:
        self._session = create_session(graph, device, intra_op_threads, spin_wait=spin_wait)
        self.provider: str = self._session.get_providers()[0]
        self.device: str = "cuda" if self.provider == _CUDA else "cpu"
        logger.info("feature squeezing runs on %s", self.provider)

    def score(self, batch: np.ndarray) -> SqueezeScores:
        """Score a batch shaped ``[N, *input_shape]`` (converted to float32)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.device == "cuda":
            outputs = self._run_cuda(batch)
        else:
            outputs = self._session.run(list(FUSED_OUTPUTS), {"input": batch})
        return SqueezeScores(*outputs)

    def _run_cuda(self, batch: np.ndarray) -> list[np.ndarray]:
        binding = self._session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        for name in FUSED_OUTPUTS:
            binding.bind_output(name, "cuda", 0)
        self._session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

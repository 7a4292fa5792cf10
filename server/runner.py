"""onnxruntime sessions: provider selection, contract check at load, and the run itself."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mnist_serving.common.contract import INPUT, OUTPUT_LABEL, OUTPUT_PROBABILITIES
from mnist_serving.server.errors import StartupError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ORT_TYPES = {
    INPUT.name: "tensor(uint8)",
    OUTPUT_PROBABILITIES.name: "tensor(float)",
    OUTPUT_LABEL.name: "tensor(int64)",
}


def select_providers(device: str, available: list[str] | None = None) -> list[str]:
    """``auto``: CUDA when onnxruntime-gpu sees a GPU, else CPU; ``cuda`` without one is an error."""
    available = ort.get_available_providers() if available is None else available
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise StartupError(
                f"--device cuda: {CUDA} is not available (providers: {', '.join(available)}); "
                "install onnxruntime-gpu and check the NVIDIA driver, or use --device auto|cpu"
            )
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise StartupError(f"--device: '{device}'; expected auto, cpu or cuda")


def cuda_unavailable_reason() -> str:
    """Why onnxruntime could not start CUDA, in one line: the provider library's own load
    error (a missing libcudnn, libcublas or driver library), else no usable device."""
    import ctypes

    capi = Path(ort.__file__).parent / "capi"
    libraries = sorted(capi.glob("libonnxruntime_providers_cuda.so*"))
    if not libraries:
        return "this onnxruntime has no CUDA provider library (install onnxruntime-gpu)"
    try:
        ctypes.CDLL(str(libraries[0]))
    except OSError as exc:
        return str(exc).strip().splitlines()[0][:300]
    return "no usable CUDA device (driver missing, no GPU visible, or CUDA_VISIBLE_DEVICES empty)"


def check_provider(device: str, requested: list[str], active: list[str], where: object) -> None:
    """A session runs where ``--device`` asked, or the model is not served: with ``cuda``,
    CUDA must be active in the session itself (onnxruntime falls back to the CPU with only a
    log line); with ``auto``, a fallback is a warning."""
    if CUDA not in requested or CUDA in active:
        return
    reason = cuda_unavailable_reason()
    if device == "cuda":
        raise StartupError(f"--device cuda: onnxruntime could not start {CUDA} for {where} ({reason})")
    log.warning(
        "--device auto: %s is installed but not active (%s); serving %s on the CPU", CUDA, reason, where
    )


BIG_RUN = 64  # runs of this many images or more go to the many-thread session


class OnnxRunner:
    """One loaded model version; ``run`` is thread-safe and meant to be called off the event loop.

    Two sessions of the same bytes when the thread counts differ: small runs on ``threads[0]``
    (one thread reaches the gRPC floor for single images and leaves the other cores to the
    event loop and decoding), runs of ``BIG_RUN`` images or more on ``threads[1]`` (a batch of
    256 on one thread of a many-core machine would leave the rest idle).
    """

    def __init__(
        self,
        path: Path,
        providers: list[str],
        threads: int | tuple[int, int] = 0,
        model_bytes: bytes | None = None,
        device: str = "auto",
    ) -> None:
        """``model_bytes``: the exact bytes whose digest was verified (the path only names them).

        Loaded from bytes, a model cannot reach files beside it: external-data initialisers
        have nothing to resolve against, and the load fails.
        """
        small, big = (threads, threads) if isinstance(threads, int) else threads
        source = model_bytes if model_bytes is not None else str(path)
        self.path = path
        self.session = self._session(source, providers, small)
        self.providers = self.session.get_providers()
        check_provider(device, providers, self.providers, path)
        # The second session asks only for what the first one got (CUDA is not tried twice).
        self.big_session = self.session if big == small else self._session(source, self.providers, big)
        self.threads = (small, big)
        self._check_contract()
        self._outputs = [OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name]

    def _session(self, source: bytes | str, providers: list[str], threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if threads != 1:  # its threads sleep between runs instead of spinning on cores gRPC needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise StartupError(f"{self.path}: cannot load model ({type(exc).__name__}: {exc})") from None

    def _check_contract(self) -> None:
        found = {t.name: t for t in [*self.session.get_inputs(), *self.session.get_outputs()]}
        for name, onnx_type in _ORT_TYPES.items():
            if name not in found:
                raise StartupError(f"{self.path}: model has no tensor '{name}' (model contract)")
            if found[name].type != onnx_type:
                raise StartupError(f"{self.path}: '{name}' is {found[name].type}, contract says {onnx_type}")

    @property
    def every_core_from(self) -> int | None:
        """The smallest run that goes to a many-thread session of its own, if there is one."""
        if self.big_session is self.session or self.threads[1] in (0, 1):
            return None
        return BIG_RUN

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N,28,28] → (float32 [N,10], int64 [N])."""
        session = self.big_session if len(images) >= BIG_RUN else self.session
        probabilities, labels = session.run(self._outputs, {INPUT.name: images})
        return probabilities, labels

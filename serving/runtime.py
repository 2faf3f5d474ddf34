"""ONNX Runtime sessions: device selection, thread settings, warm-up.

Everything onnxruntime raises is wrapped here (``raise ... from exc``) into
``ModelLoadError`` or ``InferenceFailed``; nothing above this module sees an
onnxruntime exception.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from serving.datatypes import DATATYPE_BY_ORT_TYPE
from serving.errors import InferenceFailed, ModelLoadError

logger = logging.getLogger(__name__)
#: Seconds between two log lines about failed runs of one session (the rest are counted).
FAILURE_LOG_EVERY_S = 10.0

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A graph input or output: datatype and shape (-1 for dynamic dims)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class Runtime(Protocol):
    """What the batcher needs from a loaded model."""

    @property
    def provider(self) -> str: ...

    @property
    def inputs(self) -> Sequence[TensorInfo]: ...

    @property
    def outputs(self) -> Sequence[TensorInfo]: ...

    @property
    def defaults(self) -> Sequence[TensorInfo]:
        """Inputs the graph has a default for (overridable initializers)."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run every output of the graph, in ``outputs`` order. Thread-safe."""
        ...


def both_onnxruntimes_installed() -> bool:
    """onnxruntime and onnxruntime-gpu side by side overwrite each other's
    module files; the result depends on install order."""
    from importlib.metadata import PackageNotFoundError, distribution

    found = 0
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            distribution(name)
            found += 1
        except PackageNotFoundError:
            pass
    return found == 2


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - install problem
        raise ModelLoadError(
            "onnxruntime is not installed: pip install 'dlserve[cpu]' (or '[gpu]')"
        ) from exc
    return onnxruntime


def cuda_usable() -> tuple[bool, str]:
    """Whether the CUDA execution provider can be used, and why not."""
    ort = _ort()
    if CUDA_EP not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDAExecutionProvider (install dlserve[gpu])"
    return True, ""


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class OnnxRuntime:
    """One onnxruntime session for one model version."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "auto",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        label: str = "",
    ) -> None:
        ort = _ort()
        label = label or str(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads == 1:
            # A single intra-op thread never needs to spin waiting for work.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        providers: list[str]
        if device == "cpu":
            providers = [CPU_EP]
        else:
            ok, why = cuda_usable()
            if ok:
                providers = [CUDA_EP, CPU_EP]
            elif device == "cuda":
                raise ModelLoadError(f"--device cuda cannot be honoured: {why}")
            else:
                logger.info("%s: CUDA not used (%s); falling back to %s", label, why, CPU_EP)
                providers = [CPU_EP]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}") from exc

        active = self._session.get_providers()
        if device == "cuda" and CUDA_EP not in active:
            raise ModelLoadError(
                "--device cuda cannot be honoured: the CUDA provider did not start"
            )
        if device == "auto" and CUDA_EP in providers and CUDA_EP not in active:
            logger.warning("%s: CUDA provider failed to start; falling back to %s", label, CPU_EP)
        self.provider: str = active[0]
        self.inputs = [
            TensorInfo(i.name, DATATYPE_BY_ORT_TYPE.get(i.type, i.type), _dims(i.shape))
            for i in self._session.get_inputs()
        ]
        self.outputs = [
            TensorInfo(o.name, DATATYPE_BY_ORT_TYPE.get(o.type, o.type), _dims(o.shape))
            for o in self._session.get_outputs()
        ]
        self.defaults = [
            TensorInfo(i.name, DATATYPE_BY_ORT_TYPE.get(i.type, i.type), _dims(i.shape))
            for i in self._session.get_overridable_initializers()
        ]
        self._output_names = [o.name for o in self.outputs]
        self._run = _direct_run(self._session) if self.provider == CPU_EP else self._session.run
        self._label = label
        self._failures = 0
        self._logged_at = float("-inf")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run(self._output_names, feeds, None)  # type: ignore[no-any-return]
        except Exception as exc:
            self._log_failure(exc)
            raise InferenceFailed(f"onnxruntime failed: {exc}") from exc

    def _log_failure(self, exc: Exception) -> None:
        """A failed run is the client's answer (INTERNAL) and a log line for
        the operator: the first, then one per ``FAILURE_LOG_EVERY_S`` with
        the count in between, so a client sending what the graph rejects
        cannot flood the log."""
        self._failures += 1
        now = time.monotonic()
        if now - self._logged_at < FAILURE_LOG_EVERY_S:
            return
        logger.warning("%s: onnxruntime run failed (%d time(s) since the last report): %s",
                       self._label, self._failures, exc)  # fmt: skip
        self._failures, self._logged_at = 0, now


def _direct_run(session: Any) -> Any:
    """The C++ session's ``run`` under ``InferenceSession.run``, the same
    arguments (output names, feeds, run options). The Python wrapper adds
    a check of the feed names (validation made them right already) and, on
    a provider failure, a retry on the CPU provider, which a CPU-only
    session has nothing to gain from; it costs 3-6 µs of a tiny model's
    ~15 µs run (timeit, mlp-circle, batch 1). An onnxruntime without that
    inner object gets the public method."""
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run", None)
    return run if callable(run) else session.run

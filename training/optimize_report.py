"""What `dlserve optimize` measures about a variant against its FP32 source.

- `compare`: both files in ONNX Runtime (CPU provider) on the held-out split:
  accuracy before/after, the drop in percentage points, max |Δ| of the
  probabilities, argmax agreement. A variant that ONNX Runtime will not load
  or run raises `VariantLoadError`.
- `latency`: in-process ``InferenceSession.run`` time at batch 1/8/64, with
  the server's session options (`serving.runtime`: one intra-op and one
  inter-op thread, sequential, ``ORT_ENABLE_ALL``, no spinning), before and
  after taking turns batch by batch so that a change in machine load hits
  both. Each figure is the median of the runs in ``seconds``.
- `format_table`: the printed table.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "BATCHES",
    "Comparison",
    "VariantLoadError",
    "compare",
    "format_table",
    "latency",
    "session",
]

BATCHES = (1, 8, 64)
INPUT_NAME = "input"
OUTPUTS = ["logits", "probabilities"]


class VariantLoadError(Exception):
    """ONNX Runtime refused to load or run a model (the message says why)."""


@dataclass(frozen=True)
class Comparison:
    samples: int
    accuracy_before: float
    accuracy_after: float
    max_abs_diff_probabilities: float
    max_abs_diff_logits: float
    argmax_agreement: int

    @property
    def drop_points(self) -> float:
        """Held-out accuracy lost, in percentage points (negative: it rose)."""
        return 100.0 * (self.accuracy_before - self.accuracy_after)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_drop_points": self.drop_points}


def session(onnx_bytes: bytes) -> Any:
    """A CPU session with the server's options; raises `VariantLoadError`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors have no common public base
        raise VariantLoadError(f"ONNX Runtime cannot load it: {exc}") from exc


def _run(sess: Any, x: np.ndarray) -> list[np.ndarray]:
    try:
        out: list[np.ndarray] = sess.run(OUTPUTS, {INPUT_NAME: x})
    except Exception as exc:
        raise VariantLoadError(f"ONNX Runtime cannot run it: {exc}") from exc
    return out


def compare(before: Any, after: Any, X: np.ndarray, y: np.ndarray) -> Comparison:
    """Sessions ``before`` and ``after`` on held-out ``X`` (labels ``y``)."""
    x = np.ascontiguousarray(X, dtype=np.float32)
    logits_a, probs_a = _run(before, x)
    logits_b, probs_b = _run(after, x)
    for name, out in (("logits", logits_b), ("probabilities", probs_b)):
        if out.shape != logits_a.shape or out.dtype != np.float32:
            raise VariantLoadError(
                f"its {name} are {out.dtype}{list(out.shape)}, not "
                f"float32{list(logits_a.shape)} as before"
            )
    return Comparison(
        samples=len(y),
        accuracy_before=float((logits_a.argmax(1) == y).mean()),
        accuracy_after=float((logits_b.argmax(1) == y).mean()),
        max_abs_diff_probabilities=float(np.abs(probs_a - probs_b).max()),
        max_abs_diff_logits=float(np.abs(logits_a - logits_b).max()),
        argmax_agreement=int((logits_a.argmax(1) == logits_b.argmax(1)).sum()),
    )


def _rows(X: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(X))
    return np.ascontiguousarray(np.concatenate([X] * reps)[:n], dtype=np.float32)


def _median_us(sess: Any, x: np.ndarray, seconds: float) -> float:
    feed = {INPUT_NAME: x}
    for _ in range(5):
        sess.run(OUTPUTS, feed)
    times = []
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        sess.run(OUTPUTS, feed)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= deadline and len(times) >= 5:
            break
    return float(np.median(times) * 1e6)


def latency(
    before: Any,
    after: Any,
    X: np.ndarray,
    batches: Sequence[int] = BATCHES,
    seconds: float = 0.3,
) -> dict[str, dict[str, float]]:
    """``{"1": {"before_us": .., "after_us": .., "speedup": ..}, ...}`` per batch size."""
    result = {}
    for batch in batches:
        x = _rows(X, batch)
        a = _median_us(before, x, seconds)
        b = _median_us(after, x, seconds)
        result[str(batch)] = {"before_us": a, "after_us": b, "speedup": a / b}
    return result


def format_table(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for the terminal."""
    cmp, size, lat = report["comparison"], report["bytes"], report["latency"]
    kind = report["variant"]
    rows = [
        ("", "fp32", kind),
        (
            "held-out accuracy",
            f"{cmp['accuracy_before']:.2%}",
            f"{cmp['accuracy_after']:.2%}",
        ),
        ("file size", f"{size['before']:,} B", f"{size['after']:,} B"),
    ]
    for batch, t in lat.items():
        rows.append(
            (
                f"latency batch {batch}",
                f"{t['before_us']:.1f} µs",
                f"{t['after_us']:.1f} µs  (x{t['speedup']:.2f})",
            )
        )
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.append(
        f"accuracy drop {cmp['accuracy_drop_points']:.2f} points (budget "
        f"{report['max_accuracy_drop']:g}); max |Δ probabilities| "
        f"{cmp['max_abs_diff_probabilities']:.3g}; argmax agrees "
        f"{cmp['argmax_agreement']}/{cmp['samples']}"
    )
    return "\n".join(lines)

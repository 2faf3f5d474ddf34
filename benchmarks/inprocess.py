"""The data plane's Python cost per unary request, without gRPC: 20,000
``ModelInfer`` calls straight into dlserve's servicer and into the bare
reference handler, alternating, on ``models/mlp-circle``. CPU time
(getrusage) per call, so the figure is steady on a busy machine.

    .venv/bin/python -m benchmarks.inprocess            # metrics on
    .venv/bin/python -m benchmarks.inprocess --no-metrics
    .venv/bin/python -m benchmarks.inprocess --rounds 20 --calls 2000   # a busy machine
"""

from __future__ import annotations

import argparse
import resource
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from benchmarks.bare_server import Bare
from serving._generated import grpc_service_pb2 as pb
from serving.app import App
from serving.grpc_api.servicer import InferenceServicer
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parent.parent


class _Context:
    def time_remaining(self) -> None:
        return None

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(message)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(figures: dict[str, list[float]]) -> None:
    """Minimum and median over the rounds, and their ratios: on a shared
    machine other work only ever adds CPU time, so the minimum is the
    steadiest figure, and rounds alternate so both sides see the same noise."""
    ours, bare = figures["dlserve"], figures["bare"]
    low, bare_low = min(ours), min(bare)
    print(f"min     dlserve {low:6.1f}  bare {bare_low:6.1f}  ratio {low / bare_low:.2f}")
    print(f"median  dlserve {statistics.median(ours):6.1f}  bare {statistics.median(bare):6.1f}  "
          f"ratio {statistics.median(ours) / statistics.median(bare):.2f}")  # fmt: skip


async def main(metrics: bool, calls: int, rounds: int) -> None:
    settings = ServingSettings(
        model_repository=ROOT / "models", metrics_enabled=metrics, inference_threads=2
    )
    app = App(settings)
    await app.manager.start()
    servicer = InferenceServicer(app.service)
    bare = Bare(ROOT / "models" / "mlp-circle")
    request = pb.ModelInferRequest(model_name="mlp-circle")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    context = _Context()
    figures: dict[str, list[float]] = {"dlserve": [], "bare": []}
    for _ in range(rounds):
        for name, handler in (("dlserve", servicer.ModelInfer), ("bare", bare.ModelInfer)):
            for _ in range(500):
                await handler(request, context)
            start = _cpu()
            for _ in range(calls):
                await handler(request, context)
            figures[name].append((_cpu() - start) / calls * 1e6)
            print(f"{name:8} {figures[name][-1]:6.1f} us of CPU per call")
    _summary(figures)
    await app.manager.stop()
    app.executor.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-metrics", action="store_true")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    uvloop.run(main(not args.no_metrics, args.calls, args.rounds))

"""The data plane's Python cost per unary request, without a network: 20,000
``ModelInfer`` calls straight into dlserve's servicer and into the bare
reference handler, alternating, on ``models/mlp-circle``. CPU time
(getrusage) per call, so the figure is steady on a busy machine. With
``--rest``, the REST edge instead: ``RestApp`` against ``BareAsgi``, each
called as uvicorn calls it (ASGI scope, receive, send) with the request
``perf_analyzer -i http`` sends (binary input and outputs).

    .venv/bin/python -m benchmarks.inprocess            # metrics on
    .venv/bin/python -m benchmarks.inprocess --no-metrics
    .venv/bin/python -m benchmarks.inprocess --rest
    .venv/bin/python -m benchmarks.inprocess --rounds 20 --calls 2000   # a busy machine
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import orjson
import uvloop

from benchmarks.bare_asgi import BareAsgi
from benchmarks.bare_server import Bare
from serving._generated import grpc_service_pb2 as pb
from serving.app import App
from serving.grpc_api.servicer import InferenceServicer
from serving.http_api.routes import RestApp
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parent.parent
#: One request into one handler.
Call = Callable[[], Awaitable[Any]]


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


def _grpc(app: App) -> tuple[Call, Call]:
    servicer = InferenceServicer(app.service)
    bare = Bare(ROOT / "models" / "mlp-circle")
    request = pb.ModelInferRequest(model_name="mlp-circle")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    context = _Context()
    return (
        functools.partial(servicer.ModelInfer, request, context),  # type: ignore[arg-type]
        functools.partial(bare.ModelInfer, request, context),
    )


def _rest(app: App) -> tuple[Call, Call]:
    """Both ASGI apps called with perf_analyzer's binary request: a JSON
    header naming the input's binary size and asking for binary outputs,
    then the input's raw bytes."""
    header = orjson.dumps({
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                    "parameters": {"binary_data_size": 8}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    })  # fmt: skip
    body = header + np.ones((1, 2), np.float32).tobytes()
    scope = {
        "type": "http", "method": "POST", "path": "/v2/models/mlp-circle/infer",
        "raw_path": b"/v2/models/mlp-circle/infer",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/octet-stream"),
                    (b"inference-header-content-length", str(len(header)).encode()),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(event: Any) -> None:
        if event["type"] == "http.response.start" and event["status"] != 200:
            raise RuntimeError(f"HTTP {event['status']}")

    rest = RestApp(app.service, token=None, max_body=app.settings.max_message_bytes)
    bare = BareAsgi(ROOT / "models" / "mlp-circle")
    return (
        functools.partial(rest, scope, receive, send),
        functools.partial(bare, scope, receive, send),
    )


async def main(metrics: bool, calls: int, rounds: int, rest: bool) -> None:
    settings = ServingSettings(
        model_repository=ROOT / "models", metrics_enabled=metrics, inference_threads=2
    )
    app = App(settings)
    await app.manager.start()
    ours, theirs = (_rest if rest else _grpc)(app)
    figures: dict[str, list[float]] = {"dlserve": [], "bare": []}
    for _ in range(rounds):
        for name, handler in (("dlserve", ours), ("bare", theirs)):
            for _ in range(500):
                await handler()
            start = _cpu()
            for _ in range(calls):
                await handler()
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
    parser.add_argument("--rest", action="store_true", help="the REST edge instead of gRPC's")
    args = parser.parse_args()
    uvloop.run(main(not args.no_metrics, args.calls, args.rounds, args.rest))

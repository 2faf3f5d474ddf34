"""What tracing costs the server: CPU time per unary ``ModelInfer`` straight
into dlserve's servicer (as benchmarks/inprocess.py, no gRPC) on
``models/mlp-circle``, with tracing off, at rate 100 and at rate 1,
alternating in rounds, in one process. The CPU is the whole process's
(getrusage: the event loop and the batch span processor's export thread,
which serializes and posts the spans) to an OTLP/HTTP sink in a process of
its own, so the collector's CPU is not counted. Each round runs every
setting once; the figure printed is the median over the rounds (a shared
machine's noise moves single rounds by tens of percent).

    .venv/bin/python -m benchmarks.tracing_cost
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from serving._generated import grpc_service_pb2 as pb
from serving.app import App
from serving.grpc_api.servicer import InferenceServicer
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parent.parent

#: An OTLP/HTTP sink: reads each export and answers 200 (run as a subprocess).
SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""

CONFIGS = {"off": ["OFF"], "rate 100": ["TIMESTAMPS"], "rate 1": ["TIMESTAMPS"]}


class _Context:
    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(message)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(calls: int, rounds: int) -> None:
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    port = int(sink.stdout.readline())
    settings = ServingSettings(
        model_repository=ROOT / "models", inference_threads=2,
        trace_config=[f"opentelemetry,url=http://127.0.0.1:{port}/v1/traces", "level=OFF"],
    )  # fmt: skip
    app = App(settings)
    await app.manager.start()
    tracing = app.service.tracing
    servicer = InferenceServicer(app.service)
    request = pb.ModelInferRequest(model_name="mlp-circle")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    context = _Context()
    figures: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        for _ in range(rounds):
            for name, level in CONFIGS.items():
                rate = "1" if name == "rate 1" else "100"
                tracing.update_settings("", {"trace_level": level, "trace_rate": [rate]})
                for _ in range(500):
                    await servicer.ModelInfer(request, context)
                    await asyncio.sleep(0)  # the loop's turn: spans are written in it
                start = _cpu()
                for _ in range(calls):
                    await servicer.ModelInfer(request, context)
                    await asyncio.sleep(0)
                tracing.flush()
                figures[name].append((_cpu() - start) / calls * 1e6)
    finally:
        await tracing.shutdown()
        await app.manager.stop()
        app.executor.shutdown()
        sink.terminate()
        sink.wait()
    for name, values in figures.items():
        spread = f"{min(values):.1f}..{max(values):.1f}"
        print(f"{name:9} {statistics.median(values):6.1f} us of CPU per call (rounds: {spread})")
    dropped = {s.labels["reason"]: s.value for m in tracing.dropped.collect() for s in m.samples
               if s.name.endswith("_total")}  # fmt: skip
    print(f"spans dropped: {dropped}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    uvloop.run(main(args.calls, args.rounds))

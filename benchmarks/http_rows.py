"""The REST rows of benchmarks/run.py (issue 12): which clients, which
points, the bare ASGI reference (benchmarks/bare_asgi.py), and the issue's
targets with their ratios. Kept apart so run.py stays readable; it imports
nothing from run.py (run.py passes its helpers in).

Clients: ``perf-http-bin`` is ``perf_analyzer -i http`` with its default
binary tensor data in both directions, ``perf-http-json`` the same with
``--input-tensor-format json --output-tensor-format json``, ``bench-http``
is ``dlserve bench --protocol http`` (binary inputs, JSON outputs).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable

#: perf_analyzer client -> its protocol flags
PERF_ARGS = {
    "perf-unary": ["-i", "grpc"],
    "perf-stream": ["-i", "grpc", "--streaming"],
    "perf-http-bin": ["-i", "http"],
    "perf-http-json": ["-i", "http", "--input-tensor-format", "json",
                       "--output-tensor-format", "json"],
}  # fmt: skip
HTTP_CLIENTS = frozenset({"perf-http-bin", "perf-http-json", "bench-http"})
MODEL = "mlp-circle"


def dlserve_plan(concurrency: list[int], grpc_unary: bool) -> list[tuple[str, str, int, bool, int]]:
    """(model, client, concurrency, batching, rows per request) measured on
    dlserve: the REST rows, and first the gRPC unary rows they are compared
    with when ``grpc_unary`` (run.py measures those already otherwise)."""
    plan = [(MODEL, "perf-unary", c, True, 1) for c in concurrency[1:]] if grpc_unary else []
    plan += [(MODEL, client, c, True, 1)
             for client in ("perf-http-bin", "perf-http-json", "bench-http")
             for c in concurrency]  # fmt: skip
    return [*plan, (f"{MODEL}-nobatch", "perf-http-bin", 1, False, 1)]


def bare_plan(concurrency: list[int]) -> list[tuple[str, int]]:
    """(client, concurrency) measured on the bare ASGI reference."""
    return [(client, c) for client in ("perf-http-bin", "bench-http") for c in concurrency]


def bare_asgi_command(folder: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bare_asgi", str(folder), "--port", str(port)]


def live(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def request_count(port: int) -> int:
    """Successful inferences the server counted (its /v2/models/stats)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/stats", timeout=10) as r:
        stats = json.loads(r.read())
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def targets(find: Callable[..., Any], say: Callable[[str, bool | None], None]) -> None:
    """Issue 12's benchmark targets, from the rows ``find`` looks up."""

    def dl(client: str, c: int, batching: bool = True) -> Any:
        return find(server="dlserve", model=MODEL, batching=batching, client=client,
                    concurrency=c, batch_size=1)  # fmt: skip

    for c in (8, 32):
        http, grpc = dl("perf-http-bin", c), dl("perf-unary", c)
        if http and grpc:
            r = http.throughput_rps / grpc.throughput_rps
            say(f"REST c={c}: perf_analyzer -i http binary {http.throughput_rps:.0f} req/s = "
                f"{r:.2f}× gRPC unary ({grpc.throughput_rps:.0f}), target ≥ 1.5×",
                r >= 1.5)  # fmt: skip
        bare = find(server="bare-asgi", model=MODEL, client="perf-http-bin", concurrency=c)
        if http and bare:
            r = http.cpu_us_per_request / bare.cpu_us_per_request
            say(f"REST c={c}: server CPU/req {http.cpu_us_per_request:.0f} µs = {r:.2f}× bare "
                f"ASGI ({bare.cpu_us_per_request:.0f} µs), target ≤ 1.25×", r <= 1.25)  # fmt: skip
        js = dl("perf-http-json", c)
        if http and js:
            r = js.cpu_us_per_request / http.cpu_us_per_request
            say(f"REST c={c}: JSON CPU/req {js.cpu_us_per_request:.0f} µs = {r:.2f}× binary "
                f"({http.cpu_us_per_request:.0f} µs; throughput {js.throughput_rps:.0f} vs "
                f"{http.throughput_rps:.0f} req/s), target ≤ 1.3×", r <= 1.3)  # fmt: skip
    on, off = dl("perf-http-bin", 1), dl("perf-http-bin", 1, batching=False)
    if on and off:
        r = on.throughput_rps / off.throughput_rps
        say(f"REST c=1: batching on/off throughput {r:.3f} ({on.throughput_rps:.0f} vs "
            f"{off.throughput_rps:.0f} req/s), target ≥ 0.95", r >= 0.95)  # fmt: skip

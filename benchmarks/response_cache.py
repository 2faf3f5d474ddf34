"""What the response cache buys on a repeated input: NVIDIA's perf_analyzer
(gRPC, unary) at batch 8 with the same input in every request
(``--input-data zero``), against one ``dlserve serve --cache-config
local,size=64 MiB`` serving two copies of the wide MLP (784 inputs, two
hidden layers of 1024, 10 classes): ``wide-cached`` with ``response_cache
{ enable: true }`` and ``wide`` without. The two models run one after the
other at each concurrency in the same server process; ModelStatistics gives
each run's cache hits and misses and perf_analyzer's own server-side report
is kept. One run, printed as a markdown table with the ratios.

    .venv/bin/python -m benchmarks.response_cache [--concurrency 1,4] [--interval-ms 3000]
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tritonclient.grpc as grpcclient

from benchmarks.run import perf_env
from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import ServerProcess

BIN = Path(sys.executable).parent
BATCH = 8
CACHE_BYTES = 64 * 1024 * 1024
MODELS = ("wide", "wide-cached")


def build(repo: Path) -> None:
    model = mlp(features=784, hidden=(1024, 1024), classes=10, seed=0)
    for name in MODELS:
        config = config_text(name, features=784, classes=10, max_batch_size=64)
        if name == "wide-cached":
            config += "response_cache { enable: true }\n"
        write_model(repo, name, model=model, config=config)


def cache_counts(url: str, model: str) -> tuple[int, int]:
    client = grpcclient.InferenceServerClient(url)
    (stats,) = client.get_inference_statistics(model).model_stats
    client.close()
    return stats.inference_stats.cache_hit.count, stats.inference_stats.cache_miss.count


def perf_analyzer(url: str, model: str, concurrency: int, interval_ms: int) -> dict[str, str]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        command = [
            str(BIN / "perf_analyzer"), "-m", model, "-u", url, "-i", "grpc", "-b", str(BATCH),
            "--input-data", "zero", "--concurrency-range", str(concurrency),
            "--measurement-interval", str(interval_ms),
            "--stability-percentage", "1000", "--max-trials", "3", "-f", f.name,
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, env=perf_env(), timeout=300)
        if out.returncode != 0:
            raise SystemExit(f"perf_analyzer failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        row = dict(next(csv.DictReader(open(f.name))))
    hits = re.findall(r"Cache hit count: (\d+)", out.stdout)
    row["perf_analyzer cache hits"] = hits[-1] if hits else "not reported"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--interval-ms", type=int, default=3000)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        build(repo)
        with ServerProcess(repo, "--cache-config", f"local,size={CACHE_BYTES}") as server:
            print("| concurrency | model | response_cache | infer/s (rows) | p50 ms | p99 ms "
                  "| cache hits | cache misses | perf_analyzer's cache hit count |")  # fmt: skip
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for c in levels:
                rates = {}
                for model in MODELS:
                    before = cache_counts(server.url, model)
                    row = perf_analyzer(server.url, model, c, args.interval_ms)
                    hits, misses = (a - b for a, b in zip(cache_counts(server.url, model), before,
                                                          strict=True))  # fmt: skip
                    rates[model] = float(row["Inferences/Second"])
                    print(f"| {c} | {model} | {'on' if model == 'wide-cached' else 'off'} "
                          f"| {rates[model]:.0f} | {float(row['p50 latency']) / 1e3:.3f} "
                          f"| {float(row['p99 latency']) / 1e3:.3f} | {hits} | {misses} "
                          f"| {row['perf_analyzer cache hits']} |")  # fmt: skip
                print(f"| {c} | ratio on/off | | {rates['wide-cached'] / rates['wide']:.2f}x "
                      "| | | | | |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

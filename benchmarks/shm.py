"""System shared memory against tensors in the message: perf_analyzer on
gRPC, batch 8, on a wide MLP (784 -> 1024 -> 1024 -> 10, random weights,
seed 0; other widths with --features/--hidden), with
``--shared-memory=system`` and without, against one dlserve started with
``--allow-client-shm``. For each concurrency the two modes run
back to back, ``--repeats`` times in alternation (so a busy machine's drift
hits both); printed per pair: perf_analyzer's throughput and latencies, and
the server's CPU time per request (from /proc, over the requests
dlserve_requests_total counted); then the median of each ratio.

    .venv/bin/python -m benchmarks.shm [--concurrency 1,4] [--interval-ms 2000] [--repeats 5]

``--features 262144 --hidden 4`` measures a model whose input is 1 MiB a row
(8 MiB a request) and whose compute is small: where the bytes dominate.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from benchmarks.run import BIN, TICK, perf_env
from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import ServerProcess

MODEL = "wide-mlp"
BATCH = 8


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def requests(server: ServerProcess) -> int:
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("dlserve_requests_total{") and f'model="{MODEL}"' in line
    )


def run(server: ServerProcess, mode: str, concurrency: int, interval_ms: int) -> dict[str, float]:
    assert server.proc is not None
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        command = [str(BIN / "perf_analyzer"), "-m", MODEL, "-u", server.url, "-i", "grpc",
                   "-b", str(BATCH), "--shared-memory", mode,
                   "--concurrency-range", str(concurrency),
                   "--measurement-interval", str(interval_ms),
                   "--stability-percentage", "1000", "--max-trials", "3", "-f", f.name]  # fmt: skip
        cpu, count = cpu_seconds(server.proc.pid), requests(server)
        out = subprocess.run(command, capture_output=True, text=True, env=perf_env(), timeout=300)
        cpu, count = cpu_seconds(server.proc.pid) - cpu, requests(server) - count
        if out.returncode != 0:
            raise SystemExit(f"perf_analyzer failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        row = list(csv.DictReader(open(f.name)))[0]
    return {
        "rps": float(row["Inferences/Second"]) / BATCH,
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
        "cpu_us": cpu / max(count, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels")
    parser.add_argument("--interval-ms", type=int, default=2000, help="measurement window")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each mode per level")
    parser.add_argument("--features", type=int, default=784, help="input width")
    parser.add_argument("--hidden", default="1024,1024", help="hidden layer widths")
    args = parser.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp), MODEL, model=mlp(features=args.features, hidden=hidden, classes=10),
                    config=config_text(MODEL, args.features, 10, max_batch_size=256))  # fmt: skip
        with ServerProcess(tmp, "--allow-client-shm", "--log-level", "WARNING",
                           allow_loop_stalls=True) as server:  # fmt: skip
            print(f"MLP {args.features}->{args.hidden}->10, batch {BATCH}, gRPC; "
                  f"requests/s (x{BATCH} rows), ms, server CPU")  # fmt: skip
            print(f"{'c':>3} {'run':>3} {'shared memory':<14} {'req/s':>8} {'p50':>7} {'p99':>7}"
                  f" {'CPU µs/req':>11}")  # fmt: skip
            medians = []
            for c in (int(x) for x in args.concurrency.split(",")):
                ratios: list[tuple[float, float, float]] = []
                for repeat in range(args.repeats):
                    got = {}
                    for mode in ("none", "system"):
                        r = got[mode] = run(server, mode, c, args.interval_ms)
                        print(f"{c:>3} {repeat + 1:>3} {mode:<14} {r['rps']:8.1f} "
                              f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                              f"{r['cpu_us']:11.0f}")  # fmt: skip
                    ratios.append(tuple(got["system"][k] / got["none"][k]  # type: ignore[misc]
                                        for k in ("rps", "p50_ms", "cpu_us")))  # fmt: skip
                medians.append((c, *(statistics.median(r[i] for r in ratios) for i in range(3))))
            print("system / none, medians over the pairs:")
            for c, rps, p50, cpu in medians:
                print(f"  c={c}: throughput {rps:.2f}×, p50 latency {p50:.2f}×, "
                      f"server CPU per request {cpu:.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()

"""INT8 vs FP32 (issue 16): `dlserve optimize --to int8` on the wide MLP and
digits-cnn, measured in-process and through the server, in one run.

The models: ``models/digits-cnn`` (copied) and a wide MLP trained here on the
same digits (``dlserve train --name wide-mlp --dataset digits --model mlp
--hidden 1024,1024 --epochs 100 --batch-size 64``: 64->1024->1024->10, seed
0), so that its INT8 variant has a held-out set to be gated on (the
784-input wide MLP of benchmarks/run.py has random weights and no data).
Each is optimized with ``dlserve optimize --to int8 --name NAME-int8``, so
both variants are served side by side by one ``dlserve serve``.

- in-process: ``InferenceSession.run`` with the server's session options
  (`training.optimize_report.latency`: median per run, FP32 and INT8 taking
  turns) at batch 1 and 32, on held-out digits;
- server: perf_analyzer (gRPC unary) at concurrency 1 and 8 with 1 and 32
  rows per request, ``--rounds`` times over every point with FP32 and INT8
  taking turns; each figure is the median over the rounds (the machine's
  other load moves single windows by 2x and more).

    .venv/bin/python -m benchmarks.optimize [--interval-ms 1500] [--rounds 3] [--json out.json]

Prints a markdown report; docs/performance.md holds the latest one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from benchmarks.run import BIN, Row, measure, start_dlserve  # noqa: E402
from training import datasets  # noqa: E402
from training.optimize_report import latency, session  # noqa: E402

MODELS = ("wide-mlp", "digits-cnn")
WIDE = ["--name", "wide-mlp", "--dataset", "digits", "--model", "mlp", "--hidden", "1024,1024",
        "--epochs", "100", "--batch-size", "64"]  # fmt: skip


def dlserve(*args: str) -> None:
    subprocess.run([str(BIN / "dlserve"), *args], check=True, stdout=subprocess.DEVNULL)


def prepare(repo: Path, runs: Path) -> dict[str, Any]:
    """The two FP32 models and their INT8 twins; returns each optimize report."""
    shutil.copytree(ROOT / "models" / "digits-cnn", repo / "digits-cnn",
                    ignore=shutil.ignore_patterns(".*"))  # fmt: skip
    print("training the wide MLP ...", file=sys.stderr, flush=True)
    dlserve("train", *WIDE, "--repository", str(repo), "--runs-dir", str(runs), "--no-progress")
    reports = {}
    for name in MODELS:
        print(f"dlserve optimize {name} --to int8 ...", file=sys.stderr, flush=True)
        dlserve("optimize", "--repository", str(repo), "--model", name, "--to", "int8",
                "--name", f"{name}-int8", "--runs-dir", str(runs))  # fmt: skip
        reports[name] = json.loads((runs / f"{name}-int8" / "v1" / "optimize.json").read_text())
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval-ms", type=int, default=1500,
                        help="perf_analyzer measurement window")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="in-process: time per figure")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3,
                        help="server: rounds over every point (FP32 and INT8 take turns); "
                        "the table shows each figure's median over the rounds")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    X = datasets.load_digits().X_val
    load_before = os.getloadavg()
    rows: list[Row] = []
    local: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dlserve-opt-bench-") as tmp:
        repo, runs = Path(tmp) / "models", Path(tmp) / "runs"
        reports = prepare(repo, runs)
        print("in-process onnxruntime ...", file=sys.stderr, flush=True)
        for name in MODELS:
            fp32 = session((repo / name / "1" / "model.onnx").read_bytes())
            int8 = session((repo / f"{name}-int8" / "1" / "model.onnx").read_bytes())
            local[name] = latency(fp32, int8, X, batches=(1, 32), seconds=args.seconds)
        server = start_dlserve(repo, 1)
        try:
            for r in range(args.rounds):
                print(f"server, round {r + 1} of {args.rounds} ...", file=sys.stderr, flush=True)
                for name in MODELS:
                    for batch in (1, 32):
                        for c in (1, 8):
                            for model in (name, f"{name}-int8"):
                                rows.append(measure(server, model, "perf-unary", c, args, batch))
        finally:
            server.stop()

    args.load = (load_before, os.getloadavg())
    print(render(reports, local, rows, args))
    if args.json:
        args.json.write_text(json.dumps({"reports": reports, "in_process": local,
                                         "rows": [asdict(r) for r in rows]}, indent=1))  # fmt: skip
    return 0


def render(reports: dict[str, Any], local: dict[str, Any], rows: list[Row],
           args: argparse.Namespace) -> str:  # fmt: skip
    out = [
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}. "
        f"Command: `.venv/bin/python -m benchmarks.optimize --interval-ms {args.interval_ms} "
        f"--rounds {args.rounds}`. "
        "Load average (1 min) at start and end: "
        f"{args.load[0][0]:.1f}, {args.load[1][0]:.1f}.",
        "",
        "### The gate (held-out digits, 450 rows)",
        "",
        "| model | FP32 accuracy | INT8 accuracy | max abs Δ probabilities | argmax agrees "
        "| FP32 bytes | INT8 bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        c, b = r["comparison"], r["bytes"]
        out.append(f"| {name} | {c['accuracy_before']:.2%} | {c['accuracy_after']:.2%} | "
                   f"{c['max_abs_diff_probabilities']:.3g} | {c['argmax_agreement']}/"
                   f"{c['samples']} | {b['before']:,} | {b['after']:,} |")  # fmt: skip
    out += [
        "",
        "### In-process onnxruntime (1 thread, median µs per run)",
        "",
        "| model | batch | FP32 µs | INT8 µs | INT8 speed-up |",
        "|---|---|---|---|---|",
    ]
    for name, by_batch in local.items():
        for batch, t in by_batch.items():
            out.append(f"| {name} | {batch} | {t['before_us']:.1f} | {t['after_us']:.1f} | "
                       f"x{t['speedup']:.2f} |")  # fmt: skip
    out += ["", f"### Through the server (perf_analyzer, gRPC unary; median of {args.rounds} "
            "rounds)", "",
            "| model | conc | rows/req | FP32 req/s | INT8 req/s | INT8/FP32 | FP32 p50 ms "
            "| INT8 p50 ms | FP32 p99 ms | INT8 p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    by_key: dict[tuple[str, int, int], list[Row]] = {}
    for r in rows:
        by_key.setdefault((r.model, r.concurrency, r.batch_size), []).append(r)

    def med(key: tuple[str, int, int], field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in by_key[key]))

    for name in MODELS:
        for batch in (1, 32):
            for c in (1, 8):
                a, q = (name, c, batch), (f"{name}-int8", c, batch)
                rps_a, rps_q = med(a, "throughput_rps"), med(q, "throughput_rps")
                out.append(f"| {name} | {c} | {batch} | {rps_a:.0f} | {rps_q:.0f} | "
                           f"x{rps_q / rps_a:.2f} | {med(a, 'p50_ms'):.3f} | "
                           f"{med(q, 'p50_ms'):.3f} | {med(a, 'p99_ms'):.3f} | "
                           f"{med(q, 'p99_ms'):.3f} |")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())

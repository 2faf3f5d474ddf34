"""The benchmark of issue 4, in one run on the same model files.

Measures (a) in-process onnxruntime (the limit), (b) dlserve with
perf_analyzer (unary and --streaming) and with ``dlserve bench``, at
concurrency 1, 8 and 32, dynamic batching on and off, for mlp-circle,
digits-cnn and a wide MLP (784->1024->1024->10, random weights, seed 0),
and (c) the bare reference server (benchmarks/bare_server.py); then the
REST rows of issue 12 (benchmarks/http_rows.py). Server CPU
per request comes from /proc (utime+stime of the server processes) divided
by the requests the server counted over the same interval.

    .venv/bin/python -m benchmarks.run [--interval-ms 1500] [--quick | --http-only]
        [--json out.json]

Prints a markdown report (tables, then the issue's targets with the ratios);
docs/performance.md holds the latest one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import http_rows  # noqa: E402
from devtools.onnx_models import config_text, mlp  # noqa: E402
from devtools.ports import free_port  # noqa: E402
from dlserve.processes import terminate  # noqa: E402
from serving._generated import model_config_pb2 as mc  # noqa: E402

BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    server: str  # dlserve, dlserve-w2, bare, bare-asgi
    model: str
    batching: bool
    client: str  # perf-unary, perf-stream, bench-unary; perf-http-bin|json, bench-http
    concurrency: int
    batch_size: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int = 0


# -- model files ---------------------------------------------------------------


def prepare(repo: Path) -> dict[str, Path]:
    """Copy the default models, add the wide MLP, and a no-batching twin of each."""
    names = []
    for name in ("mlp-circle", "digits-cnn"):
        src = ROOT / "models" / name
        if not (src / "config.pbtxt").is_file():
            raise SystemExit(f"{src} is missing: run `make models` first")
        shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns(".*"))
        names.append(name)
    wide = repo / "wide-mlp"
    (wide / "1").mkdir(parents=True)
    onnx.save(mlp(features=784, hidden=(1024, 1024), classes=10, seed=0),
              str(wide / "1" / "model.onnx"))  # fmt: skip
    (wide / "config.pbtxt").write_text(config_text("wide-mlp", 784, 10, max_batch_size=256))
    (wide / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    names.append("wide-mlp")
    for name in names:
        twin = repo / f"{name}-nobatch"
        shutil.copytree(repo / name, twin)
        config = text_format.Parse((twin / "config.pbtxt").read_text(), mc.ModelConfig())
        config.name = twin.name
        config.ClearField("dynamic_batching")
        (twin / "config.pbtxt").write_text(text_format.MessageToString(config))
    return {name: repo / name for name in names}


def latest_model_file(folder: Path) -> Path:
    version = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    return folder / str(version) / "model.onnx"


def input_shape(folder: Path) -> list[int]:
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    return list(config.input[0].dims)


# -- (a) in-process onnxruntime ------------------------------------------------


def in_process(folder: Path, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(latest_model_file(folder)), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    dims = input_shape(folder)
    result: dict[str, Any] = {}
    for b in batch_sizes:
        x = np.random.default_rng(0).standard_normal([b, *dims]).astype(np.float32)
        for _ in range(20):
            session.run(outputs, {name: x})
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            session.run(outputs, {name: x})
            times.append(time.perf_counter() - t0)
        total = sum(times)
        result[str(b)] = {
            "runs_per_s": len(times) / total,
            "samples_per_s": len(times) * b / total,
            "p50_us": float(np.percentile(times, 50) * 1e6),
        }
    return result


# -- servers -------------------------------------------------------------------


class Proc:
    def __init__(self, command: list[str], port: int, kind: str, model: str = "",
                 http_port: int = 0) -> None:  # fmt: skip
        """``port``: gRPC (0: none, then the server is waited for over HTTP)."""
        self.port = port
        self.http_port = http_port
        self.kind = kind
        self.model = model
        self.metrics_port = 0
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        import tritonclient.grpc as tc

        while time.monotonic() < deadline:
            try:
                client = tc.InferenceServerClient(f"127.0.0.1:{port}") if port else None
                if client.is_server_live() if client else http_rows.live(http_port):
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{kind} server did not start: {' '.join(command)}")

    def pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [self.proc.pid, *(int(p) for p in out.stdout.split())]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError):
                pass
        return total / TICK

    def requests(self, model: str) -> int:
        if self.kind == "bare-asgi":
            return http_rows.request_count(self.http_port)
        if self.kind == "bare":
            import tritonclient.grpc as tc

            stats = tc.InferenceServerClient(f"127.0.0.1:{self.port}").get_inference_statistics()
            return sum(s.inference_stats.success.count for s in stats.model_stats)
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        count = 0
        for line in text.splitlines():
            if line.startswith("dlserve_requests_total{") and f'model="{model}"' in line:
                count += int(float(line.rsplit(" ", 1)[1]))
        return count

    def stop(self) -> None:
        terminate(self.proc, 60)


def start_dlserve(repo: Path, workers: int) -> Proc:
    port, metrics, http = free_port(), free_port(), free_port()
    command = [str(BIN / "dlserve"), "serve", "--model-repository", str(repo), "--host",
               "127.0.0.1", "--grpc-port", str(port), "--metrics-port", str(metrics),
               "--http-port", str(http), "--workers", str(workers),
               "--log-level", "WARNING"]  # fmt: skip
    proc = Proc(command, port, "dlserve" if workers == 1 else f"dlserve-w{workers}",
                http_port=http)  # fmt: skip
    proc.metrics_port = metrics
    return proc


def start_bare(folder: Path) -> Proc:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.bare_server", str(folder), "--port", str(port)]
    return Proc(command, port, "bare", folder.name)


def start_bare_asgi(folder: Path) -> Proc:
    port = free_port()
    return Proc(http_rows.bare_asgi_command(folder, port), 0, "bare-asgi", folder.name, port)


# -- clients -------------------------------------------------------------------


def perf_env() -> dict[str, str]:
    import nvidia.cuda_runtime

    lib = Path(list(nvidia.cuda_runtime.__path__)[0]) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


def perf_analyzer(
    server: Proc, model: str, concurrency: int, client: str, interval_ms: int, batch: int
) -> tuple[float, float, float]:
    port = server.http_port if client in http_rows.HTTP_CLIENTS else server.port
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        command = [str(BIN / "perf_analyzer"), "-m", model, "-u", f"127.0.0.1:{port}",
                   *http_rows.PERF_ARGS[client], "--concurrency-range", str(concurrency),
                   "-b", str(batch), "--measurement-interval", str(interval_ms),
                   "--stability-percentage", "1000", "--max-trials", "3", "-f", f.name]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, env=perf_env(), timeout=300)
        if out.returncode != 0:
            print(f"perf_analyzer failed: {out.stdout[-500:]} {out.stderr[-500:]}", file=sys.stderr)
            return float("nan"), float("nan"), float("nan")
        rows = list(csv.DictReader(open(f.name)))
    row = rows[0]
    return (float(row["Inferences/Second"]) / batch, float(row["p50 latency"]) / 1e3,
            float(row["p99 latency"]) / 1e3)  # fmt: skip


def dlserve_bench(
    server: Proc, model: str, concurrency: int, seconds: float, batch: int, client: str
) -> tuple[float, float, float, int]:
    http = client in http_rows.HTTP_CLIENTS
    url = f"http://127.0.0.1:{server.http_port}" if http else f"127.0.0.1:{server.port}"
    streaming = client == "bench-stream"
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        command = [str(BIN / "dlserve"), "bench", "--url", url, "--model",
                   model, "--concurrency", str(concurrency), "--duration", str(seconds),
                   "--warmup", "0.5", "--batch-size", str(batch), "--json", f.name]  # fmt: skip
        if streaming:
            command.append("--streaming")
        subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
        record = json.loads(Path(f.name).read_text())[0]
    return record["throughput_rps"], record["p50_ms"], record["p99_ms"], record["errors"]


def measure(server: Proc, model: str, client: str, c: int, args: argparse.Namespace,
            batch: int = 1, batching: bool = True) -> Row:  # fmt: skip
    n0, t0 = server.requests(model), server.cpu_seconds()
    errors = 0
    if client.startswith("perf"):
        rps, p50, p99 = perf_analyzer(server, model, c, client, args.interval_ms, batch)
    else:
        rps, p50, p99, errors = dlserve_bench(server, model, c, args.interval_ms / 1000 * 2, batch,
                                              client)  # fmt: skip
    n1, t1 = server.requests(model), server.cpu_seconds()
    cpu = (t1 - t0) / max(n1 - n0, 1) * 1e6
    row = Row(server.kind, model.removesuffix("-nobatch"), batching, client, c, batch, rps, p50,
              p99, cpu, errors)  # fmt: skip
    print(f"  {row.server:11} {row.model:11} batching={'on ' if batching else 'off'} "
          f"{client:12} c={c:<3} b={batch} {rps:9.1f} req/s  p50 {p50:7.3f} ms  "
          f"p99 {p99:7.3f} ms  cpu {cpu:6.1f} us/req", file=sys.stderr, flush=True)  # fmt: skip
    return row


def grpc_plan(models: list[str], concurrency: list[int]) -> list[tuple[str, str, int, bool, int]]:
    """(model, client, concurrency, batching, rows per request) over gRPC on dlserve."""
    plan = []
    for name in models:
        for on in (True, False):
            plan += [(name if on else f"{name}-nobatch", client, c, on, 1)
                     for client in ("perf-unary", "perf-stream", "bench-unary")
                     for c in concurrency]  # fmt: skip
        if name == "wide-mlp":
            plan += [(name if on else f"{name}-nobatch", "perf-unary", 32, on, 8)
                     for on in (True, False)]  # fmt: skip
    return plan


# -- report --------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--interval-ms",
        type=int,
        default=1500,
        help="perf_analyzer measurement window; bench runs 2 windows",
    )
    parser.add_argument("--quick", action="store_true", help="mlp-circle only, fewer points")
    parser.add_argument("--http-only", action="store_true",
                        help="mlp-circle only: the REST rows and the gRPC unary rows they are "
                        "compared with (issue 12's targets)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()

    concurrency = [1, 8] if args.quick else [1, 8, 32]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dlserve-bench-") as tmp:
        repo = Path(tmp)
        models = prepare(repo)
        if args.quick or args.http_only:
            models = {"mlp-circle": models["mlp-circle"]}
        print("in-process onnxruntime ...", file=sys.stderr)
        local = {name: in_process(folder, [1, 8, 32, 64, 256], 1.0)
                 for name, folder in models.items()}  # fmt: skip

        plan = [] if args.http_only else grpc_plan(list(models), concurrency)
        plan += http_rows.dlserve_plan(concurrency, grpc_unary=args.http_only)
        server = start_dlserve(repo, 1)
        try:
            rows += [measure(server, m, cl, c, args, b, on) for m, cl, c, on, b in plan]
        finally:
            server.stop()
        bare = start_bare_asgi(models["mlp-circle"])
        try:
            rows += [measure(bare, "mlp-circle", cl, c, args, 1, False)
                     for cl, c in http_rows.bare_plan(concurrency)]  # fmt: skip
        finally:
            bare.stop()
        if not args.http_only:  # the gRPC references: two workers, the bare server
            server = start_dlserve(repo, 2)
            try:
                rows += [measure(server, "mlp-circle", cl, c, args) for c in concurrency[1:]
                         for cl in ("perf-unary", "perf-stream")]  # fmt: skip
            finally:
                server.stop()
            for name, folder in models.items():
                bare = start_bare(folder)
                try:
                    rows += [measure(bare, name, "perf-unary", c, args, 1, False)
                             for c in concurrency]  # fmt: skip
                finally:
                    bare.stop()

    report = render(rows, local, args)
    print(report)
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                         "in_process": local}, indent=1))  # fmt: skip
    return 0


def render(rows: list[Row], local: dict[str, Any], args: argparse.Namespace) -> str:
    cpu = os.cpu_count()
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = [f"Machine: {cpu} cores ({model_name}), Python {platform.python_version()}, "
           f"onnxruntime {ort.__version__}. Command: `.venv/bin/python -m benchmarks.run"
           f"{' --quick' if args.quick else ''}{' --http-only' if args.http_only else ''}"
           f" --interval-ms {args.interval_ms}`.",
           ""]  # fmt: skip
    out += ["### In-process onnxruntime (1 thread)", "",
            "| model | batch | runs/s | samples/s | p50 µs |", "|---|---|---|---|---|"]  # fmt: skip
    for name, per_batch in local.items():
        for b, r in per_batch.items():
            out.append(f"| {name} | {b} | {r['runs_per_s']:.0f} | {r['samples_per_s']:.0f} | "
                       f"{r['p50_us']:.1f} |")  # fmt: skip
    out += ["", "### Servers", "",
            "| server | model | batching | client | conc | rows/req | req/s | p50 ms | p99 ms | "
            "server CPU µs/req | vs in-process b=1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        limit = local.get(r.model, {}).get("1", {}).get("runs_per_s", float("nan"))
        out.append(f"| {r.server} | {r.model} | {'on' if r.batching else 'off'} | {r.client} | "
                   f"{r.concurrency} | {r.batch_size} | {r.throughput_rps:.0f} | {r.p50_ms:.3f} | "
                   f"{r.p99_ms:.3f} | {r.cpu_us_per_request:.0f} | "
                   f"{r.throughput_rps * r.batch_size / limit:.3f} |")  # fmt: skip
    out += ["", "### Targets", ""] + targets(rows, local)
    return "\n".join(out)


def _find(rows: list[Row], **kw: Any) -> Row | None:
    for r in rows:
        if all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def targets(rows: list[Row], local: dict[str, Any]) -> list[str]:
    lines = []

    def say(text: str, ok: bool | None) -> None:
        mark = "n/a" if ok is None else ("met" if ok else "NOT met")
        lines.append(f"- {text}: **{mark}**")

    for c in (8, 32):
        for server in ("dlserve", "dlserve-w2"):
            d = _find(rows, server=server, model="mlp-circle", batching=True,
                      client="perf-unary", concurrency=c)  # fmt: skip
            b = _find(rows, server="bare", model="mlp-circle", client="perf-unary",
                      concurrency=c)  # fmt: skip
            if d and b:
                ratio = d.cpu_us_per_request / b.cpu_us_per_request
                say(f"unary circle c={c} ({server}): CPU/req {d.cpu_us_per_request:.0f} µs = "
                    f"{ratio:.2f}× bare ({b.cpu_us_per_request:.0f} µs), target ≤ 1.05×",
                    ratio <= 1.05)  # fmt: skip
                say(f"unary circle c={c} ({server}): {d.throughput_rps:.0f} req/s, target "
                    "≥ 3,300 (2× MLServer's best)", d.throughput_rps >= 3300)  # fmt: skip
    for server in ("dlserve", "dlserve-w2"):
        s = _find(rows, server=server, model="mlp-circle", batching=True, client="perf-stream",
                  concurrency=32)  # fmt: skip
        if s:
            say(f"stream circle c=32 ({server}): CPU/req {s.cpu_us_per_request:.0f} µs, target "
                "≤ 160", s.cpu_us_per_request <= 160)  # fmt: skip
            say(f"stream circle c=32 ({server}): {s.throughput_rps:.0f} req/s, target ≥ 6,000",
                s.throughput_rps >= 6000)  # fmt: skip
    on = _find(rows, server="dlserve", model="mlp-circle", batching=True, client="perf-unary",
               concurrency=1)  # fmt: skip
    off = _find(rows, server="dlserve", model="mlp-circle", batching=False, client="perf-unary",
                concurrency=1)  # fmt: skip
    if on and off:
        say(f"c=1 batching on/off throughput {on.throughput_rps / off.throughput_rps:.3f}, "
            "target ≥ 0.95", on.throughput_rps / off.throughput_rps >= 0.95)  # fmt: skip
        say(f"c=1 p50 {on.p50_ms:.3f} ms, target ≤ 0.45", on.p50_ms <= 0.45)
    won = _find(rows, server="dlserve", model="wide-mlp", batching=True, client="perf-unary",
                concurrency=32, batch_size=1)  # fmt: skip
    woff = _find(rows, server="dlserve", model="wide-mlp", batching=False, client="perf-unary",
                 concurrency=32, batch_size=1)  # fmt: skip
    if won and woff:
        r = won.throughput_rps / woff.throughput_rps
        say(f"wide MLP c=32 batching on/off throughput {r:.2f}, target ≥ 1.25", r >= 1.25)
    w8 = _find(rows, server="dlserve", model="wide-mlp", batching=True, client="perf-unary",
               concurrency=32, batch_size=8)  # fmt: skip
    if w8 and "wide-mlp" in local:
        limit = local["wide-mlp"]["8"]["samples_per_s"]
        r = w8.throughput_rps * 8 / limit
        say(f"wide MLP c=32, 8-row requests: {w8.throughput_rps * 8:.0f} samples/s = {r:.2f}× "
            f"in-process batch-8 ({limit:.0f}), target ≥ 0.5", r >= 0.5)  # fmt: skip
    http_rows.targets(lambda **kw: _find(rows, **kw), say)
    return lines


if __name__ == "__main__":
    sys.exit(main())

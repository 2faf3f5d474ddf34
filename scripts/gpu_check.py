"""The body of scripts/gpu_check.sh: CUDA vs CPU on a real GPU machine.

Starts `dlserve serve --device cuda` and `--device cpu` on a copy of the
committed models plus the wide MLP (784->1024->1024->10), asserts every model
is ready on CUDAExecutionProvider (from /metrics), compares each model's
outputs with the CPU server's within 1e-4 (REST, stdlib only), and prints
one JSON record of `dlserve bench` throughput for the wide MLP at batch 1 and
64 on both. `--device cpu-as-cuda` runs the "CUDA" server with --device auto
and expects the CPU fallback (on a machine without a GPU: checks the script;
there --device cuda refuses every model with a clear log line instead).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from devtools.onnx_models import config_text, mlp  # noqa: E402
from devtools.ports import free_port  # noqa: E402

CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
DLSERVE = [sys.executable, "-m", "dlserve"]


def repository(repo: Path) -> list[str]:
    shutil.copytree(ROOT / "models", repo, ignore=shutil.ignore_patterns(".*"))
    wide = repo / "wide-mlp"
    (wide / "1").mkdir(parents=True)
    model = mlp(features=784, hidden=(1024, 1024), classes=10, seed=0)
    onnx.save(model, str(wide / "1" / "model.onnx"))
    (wide / "config.pbtxt").write_text(config_text("wide-mlp", 784, 10, max_batch_size=256))
    (wide / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())


class Server:
    def __init__(self, repo: Path, device: str, log: Path) -> None:
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        args = ["serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                "--http-port", str(self.http), "--grpc-port", str(self.grpc),
                "--metrics-port", str(self.metrics), "--device", device]  # fmt: skip
        self.log = log
        self.proc = subprocess.Popen(DLSERVE + args, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.read().decode()

    def wait_ready(self) -> None:
        for _ in range(240):
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.get(self.http, "/v2/health/ready")
                return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"server not ready:\n{self.log.read_text()[-3000:]}")

    def providers(self) -> dict[str, str]:
        found = {}
        for line in self.get(self.metrics, "/metrics").splitlines():
            if line.startswith("dlserve_model_ready{") and line.endswith(" 1.0"):
                labels = dict(
                    part.split("=", 1)
                    for part in line[line.index("{") + 1 : line.index("}")].split(",")
                )
                found[labels["model"].strip('"')] = labels["provider"].strip('"')
        return found

    def infer(self, model: str) -> dict[str, np.ndarray]:
        meta = json.loads(self.get(self.http, f"/v2/models/{model}"))
        inputs = []
        for spec in meta["inputs"]:
            shape = [4 if d == -1 else d for d in spec["shape"]]
            data = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
            inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"],
                           "data": data.ravel().tolist()})  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http}/v2/models/{model}/infer",
            data=json.dumps({"inputs": inputs}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            outputs = json.loads(reply.read())["outputs"]
        return {o["name"]: np.asarray(o["data"], np.float64) for o in outputs}

    def bench(self, batch: int) -> object:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run(
                DLSERVE + ["bench", "--url", f"127.0.0.1:{self.grpc}", "--model", "wide-mlp",
                           "--batch-size", str(batch), "--concurrency", "8", "--duration", "10",
                           "--json", out.name],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            text = Path(out.name).read_text()
        return json.loads(text)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def main() -> int:
    fallback = "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu-as-cuda"
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        names = repository(repo)
        cuda = Server(repo, "auto" if fallback else "cuda", Path(tmp) / "cuda.log")
        cpu = Server(repo, "cpu", Path(tmp) / "cpu.log")
        try:
            cuda.wait_ready()
            cpu.wait_ready()
            want = CPU_EP if fallback else CUDA_EP
            providers = cuda.providers()
            bad = {n: providers.get(n) for n in names if providers.get(n) != want}
            assert not bad, f"not ready on {want}: {bad}\n{cuda.log.read_text()[-3000:]}"
            worst = 0.0
            for name in names:
                a, b = cuda.infer(name), cpu.infer(name)
                for key in b:
                    worst = max(worst, float(np.max(np.abs(a[key] - b[key]))))
                    assert np.allclose(a[key], b[key], rtol=0, atol=1e-4), (name, key)
            record = {"models": names, "cuda_provider": want, "max_abs_diff": worst, "bench": {}}
            for batch in (1, 64):
                for label, server in (("cpu", cpu), ("cuda", cuda)):
                    record["bench"][f"{label}_batch{batch}"] = server.bench(batch)  # type: ignore[index]
            if fallback:
                record["fallback_log"] = [
                    line for line in cuda.log.read_text().splitlines() if "CUDA" in line
                ][:5]
        finally:
            codes = (cuda.stop(), cpu.stop())
    assert codes == (0, 0), codes
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())

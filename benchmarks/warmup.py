"""What model_warmup buys: the latency of the first request after a model
is ready against the hundredth, with and without a warm-up sample at the
requests' batch size. For each variant a fresh server starts on a copy of
``models/digits-cnn`` and of a wide MLP (784 inputs, two hidden layers of
1024), and one client sends 100 batch-8 requests one after another
(tritonclient.grpc); repeated ``--starts`` times, medians printed.

    .venv/bin/python -m benchmarks.warmup [--starts 5]

Without ``model_warmup`` dlserve still runs one row of zeros at load time
(``serving.warmup``); the variant "none" is that default.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8
REQUESTS = 100


def warmup_text(dims: str, count: int) -> str:
    return (
        f'model_warmup [ {{ name: "b{BATCH}" batch_size: {BATCH} count: {count} inputs {{ '
        f'key: "input" value {{ data_type: TYPE_FP32 dims: [ {dims} ] random_data: true }} '
        "} } ]\n"
    )


def build(repo: Path, count: int) -> dict[str, tuple[int, ...]]:
    """The two models (with a warm-up sample when ``count`` > 0); name -> sample shape."""
    cnn = repo / "digits-cnn"
    shutil.copytree(ROOT / "models" / "digits-cnn", cnn)
    if count:
        with (cnn / "config.pbtxt").open("a") as f:
            f.write(warmup_text("1, 8, 8", count))
    config = config_text("wide", features=784, classes=10, max_batch_size=64)
    write_model(repo, "wide", model=mlp(features=784, hidden=(1024, 1024), classes=10),
                config=config + (warmup_text("784", count) if count else ""))  # fmt: skip
    return {"digits-cnn": (1, 8, 8), "wide": (784,)}


def latencies(url: str, model: str, shape: tuple[int, ...]) -> list[float]:
    client = grpcclient.InferenceServerClient(url)
    x = np.random.default_rng(1).random((BATCH, *shape)).astype(np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client.is_model_ready(model)  # the channel is up: what follows is the model's cost
    out = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        client.infer(model, [tensor])
        out.append(time.perf_counter() - start)
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="fresh servers per variant")
    args = parser.parse_args()
    print(f"batch {BATCH}, {REQUESTS} sequential gRPC requests per server start, "
          f"median over {args.starts} starts (ms)")  # fmt: skip
    print(f"{'model':<11} {'warm-up':<22} {'1st':>8} {'100th':>8} {'1st/100th':>10}")
    for label, count in (("none (one zero row)", 0), (f"batch {BATCH}, count 3", 3)):
        runs: dict[str, list[list[float]]] = {}
        for _ in range(args.starts):
            with tempfile.TemporaryDirectory() as tmp:
                shapes = build(Path(tmp), count)
                with ServerProcess(tmp, env={"SERVING_INFERENCE_THREADS": "1"}) as server:
                    for model, shape in shapes.items():
                        runs.setdefault(model, []).append(latencies(server.url, model, shape))
        for model, per_start in runs.items():
            first = statistics.median(r[0] for r in per_start) * 1e3
            last = statistics.median(r[-1] for r in per_start) * 1e3
            print(f"{model:<11} {label:<22} {first:8.2f} {last:8.2f} {first / last:10.2f}")


if __name__ == "__main__":
    main()

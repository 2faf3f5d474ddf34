"""Dynamic batching end to end: many concurrent clients, each answer equal
to in-process onnxruntime on the same file, and batches really formed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model

CLIENTS = 64


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching")
    model = mlp(features=16, hidden=(64, 64), classes=5, seed=3)
    # A long queue delay and a preferred size make the server wait for
    # company, so 64 concurrent clients are batched however slow the machine.
    delay = "preferred_batch_size: [ 32 ]\n  max_queue_delay_microseconds: 500000"
    write_model(root, "batched", model=model, max_batch_size=64, extra_dynamic=delay)
    write_model(root, "direct", model=model, max_batch_size=64, dynamic_batching=False)
    return root


@pytest.fixture(scope="module")
def server(repo: Path):  # type: ignore[no-untyped-def]
    with InProcessServer(repo) as s:
        yield s


def reference(repo: Path, name: str, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
    return session.run(["logits", "probabilities"], {"input": x})  # type: ignore[no-any-return]


async def _clients(url: str, model: str, inputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    client = tca.InferenceServerClient(url)
    try:

        async def one(i: int, x: np.ndarray) -> dict[str, np.ndarray]:
            inp = tca.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            r = await client.infer(model, [inp], request_id=str(i))
            assert r.get_response().id == str(i)
            return {"logits": r.as_numpy("logits"), "probabilities": r.as_numpy("probabilities")}

        return await asyncio.gather(*(one(i, x) for i, x in enumerate(inputs)))
    finally:
        await client.close()


@pytest.mark.parametrize("model", ["batched", "direct"])
def test_64_concurrent_clients_each_get_their_own_answer(server, repo: Path, model: str) -> None:
    rng = np.random.default_rng(7)
    # Different row counts per request: 1..4 rows, so batches mix sizes.
    inputs = [rng.standard_normal((1 + i % 4, 16)).astype(np.float32) for i in range(CLIENTS)]
    before = tc.InferenceServerClient(server.url).get_inference_statistics(model).model_stats[0]
    results = asyncio.run(_clients(server.url, model, inputs))
    for x, got in zip(inputs, results, strict=True):
        logits, probs = reference(repo, model, x)
        np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["probabilities"], probs, rtol=0, atol=1e-6)
    after = tc.InferenceServerClient(server.url).get_inference_statistics(model).model_stats[0]
    rows = sum(x.shape[0] for x in inputs)
    assert after.inference_count - before.inference_count == rows
    executions = after.execution_count - before.execution_count
    if model == "batched":
        # 64 requests cannot have run as 64 separate executions when the
        # server waits up to 0.5 s for 32 rows.
        assert executions < CLIENTS
        assert max(b.batch_size for b in after.batch_stats) > 4
    else:
        assert executions == CLIENTS
        assert {b.batch_size for b in after.batch_stats} <= {1, 2, 3, 4}

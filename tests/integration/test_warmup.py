"""model_warmup on a real server: a warmed model is ready and answers as
onnxruntime does, its samples ran as configured (the server's log says so),
and a sample that does not fit leaves the model not ready with the reason,
over tritonclient gRPC and HTTP."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import ServerProcess
from tests.integration.helpers import infer_input, model_file, reference, rows

WARMUP = """
model_warmup [
  { name: "zeros" batch_size: 4 count: 2
    inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } },
  { name: "sample" batch_size: 8
    inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "x.bin" } } }
]
"""
BAD = WARMUP.replace("dims: [ 2 ] zero_data", "dims: [ 5 ] zero_data")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = tmp_path_factory.mktemp("warmup")
    for name, warmup in (("warm", WARMUP), ("warm-bad", BAD)):
        folder = write_model(repo, name, model=mlp(seed=7), config=config_text(name) + warmup)
        (folder / "warmup").mkdir()
        (folder / "warmup" / "x.bin").write_bytes(np.array([0.5, -1.0], np.float32).tobytes())
    with ServerProcess(repo) as proc:
        yield proc


def test_a_warmed_model_is_ready_after_its_samples_ran_and_answers_correctly(
    server: ServerProcess,
) -> None:
    log = server.log()
    assert "warm-up sample 'zeros' ran 2 times at batch size 4" in log
    assert "warm-up sample 'sample' ran 1 times at batch size 8" in log
    # Each sample's line comes before the model's "ready" line.
    assert log.index("warm-up sample 'sample'") < log.index("model warm:1 ready")
    client = grpcclient.InferenceServerClient(server.url)
    assert client.is_model_ready("warm")
    x = rows(3)
    got = client.infer("warm", [infer_input(x)]).as_numpy("logits")
    np.testing.assert_allclose(got, reference(model_file(server.repository, "warm"), x)["logits"],
                               rtol=1e-5)  # fmt: skip
    client.close()


def test_a_sample_that_does_not_fit_leaves_the_model_not_ready_with_the_reason(
    server: ServerProcess,
) -> None:
    gclient = grpcclient.InferenceServerClient(server.url)
    assert not gclient.is_model_ready("warm-bad")
    (row,) = [r for r in gclient.get_model_repository_index().models if r.name == "warm-bad"]
    assert row.state == "UNAVAILABLE"
    assert "model_warmup 'zeros'" in row.reason and "has dims [5]" in row.reason
    gclient.close()
    hclient = httpclient.InferenceServerClient(server.http_url)
    assert not hclient.is_model_ready("warm-bad")
    assert hclient.is_model_ready("warm")
    hclient.close()

"""Explicit model control and a failing model over REST, on a real in-process
server (``--model-control-mode explicit``).

- ``POST /v2/repository/models/{m}/load|unload`` through tritonclient.http
  and raw HTTP: after an unload the model is known but not ready (ready ->
  503, infer -> 503 with a JSON error naming it, as the contract maps
  UNAVAILABLE); after a load it answers what onnxruntime computes. Unknown
  names are 404, a model that cannot load or a body the server cannot honour
  400, each with a JSON error.
- A model whose graph raises inside onnxruntime for some inputs (a Reshape
  that only fits an even number of rows): the data plane maps the run
  failure to INTERNAL, which REST answers 500 with a JSON error; the same
  request over gRPC gets INTERNAL; the model and the server keep serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from devtools.inprocess import InProcessServer
from devtools.onnx_models import IR_VERSION, OPSET
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import build_repo, model_file, reference, request, rows
from tests.integration.http_helpers import Http, counter, error_of

ODD = "even_rows_only"


def even_rows_only() -> onnx.ModelProto:
    """``output = input`` ([B, 2] FP32), computed through a Reshape to
    [4, -1]: onnxruntime raises at run time when 2 * B is not a multiple of
    4 (B odd), and cannot tell at load time (B is symbolic)."""
    nodes = [
        helper.make_node("Reshape", ["input", "four_rows"], ["folded"]),
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Reshape", ["folded", "shape"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "even_rows_only",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.array([4, -1], dtype=np.int64), "four_rows")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


ODD_CONFIG = f"""name: "{ODD}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 2 ] }} ]
model_warmup [ {{
  name: "two_rows" batch_size: 2
  inputs {{ key: "input" value: {{ data_type: TYPE_FP32 dims: [ 2 ] zero_data: true }} }}
}} ]
"""  # warm-up with an even batch: the default one (one row of zeros) would fail the load


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = build_repo(tmp_path_factory.mktemp("control"))
    (repo / ODD / "1").mkdir(parents=True)
    onnx.save(even_rows_only(), str(repo / ODD / "1" / "model.onnx"))
    (repo / ODD / "config.pbtxt").write_text(ODD_CONFIG)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(repo, "--model-control-mode", "explicit", "--load-model", ODD) as proc:
        yield proc


@pytest.fixture
def triton(server: InProcessServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


def infer_body(x: np.ndarray) -> str:
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
            ]
        }  # fmt: skip
    )


def infer(api: Http, model: str, x: np.ndarray) -> tuple[int, dict[str, str], bytes]:
    return api.request("POST", f"/v2/models/{model}/infer", infer_body(x))


def output(body: bytes, name: str) -> np.ndarray:
    answer: dict[str, Any] = json.loads(body)
    found = next(o for o in answer["outputs"] if o["name"] == name)
    return np.asarray(found["data"], dtype=np.float32).reshape(found["shape"])


def assert_serves(api: Http, repo: Path, model: str = "classifier") -> None:
    x = rows(3, seed=5)
    status, _, body = infer(api, model, x)
    assert status == 200, body
    want = reference(model_file(repo, model), x)["logits"]
    np.testing.assert_allclose(output(body, "logits"), want, atol=1e-6)


def assert_known_but_not_ready(api: Http, model: str) -> None:
    status, headers, body = api.request("GET", f"/v2/models/{model}/ready")
    assert status == 503, body
    error_of(status, headers, body)  # a JSON error
    status, headers, body = infer(api, model, rows(1))
    assert status == 503, body
    assert f"'{model}'" in error_of(status, headers, body)


# --- explicit model control ---------------------------------------------------


def test_load_and_unload_with_tritonclient_http(
    triton: httpclient.InferenceServerClient, api: Http, repo: Path
) -> None:
    assert not triton.is_model_ready("classifier")  # explicit: nothing but --load-model
    assert_known_but_not_ready(api, "classifier")

    triton.load_model("classifier")
    assert triton.is_model_ready("classifier")
    assert_serves(api, repo)

    triton.unload_model("classifier")
    assert not triton.is_model_ready("classifier")
    assert_known_but_not_ready(api, "classifier")
    index = {row["name"]: row for row in triton.get_model_repository_index()}
    assert (index["classifier"]["state"], index["classifier"]["reason"]) == (
        "UNAVAILABLE", "unloaded",
    )  # fmt: skip

    triton.load_model("classifier")  # and back
    assert triton.is_model_ready("classifier")
    assert_serves(api, repo)
    assert triton.is_model_ready(ODD)  # untouched throughout


def test_load_and_unload_over_raw_http(api: Http, repo: Path) -> None:
    for _ in range(2):  # unload, load, twice: each change is whole
        status, headers, body = api.request("POST", "/v2/repository/models/autocomplete/load", "")
        assert (status, body) == (200, b""), body
        assert api.request("GET", "/v2/models/autocomplete/ready")[0] == 200
        assert_serves(api, repo, "autocomplete")

        status, _, body = api.request("POST", "/v2/repository/models/autocomplete/unload", "{}")
        assert (status, body) == (200, b""), body
        assert_known_but_not_ready(api, "autocomplete")
        status, headers, body = infer(api, "autocomplete", rows(1))
        assert "unloaded" in error_of(status, headers, body)


@pytest.mark.parametrize(
    ("path", "body", "status", "fragments"),
    [
        ("/v2/repository/models/nope/load", "", 404, ("'nope'", "not in the repository")),
        ("/v2/repository/models/nope/unload", "", 404, ("'nope'",)),
        ("/v2/repository/models/broken/load", "", 400, ("'broken'",)),
        ("/v2/repository/models/classifier/load",
         json.dumps({"parameters": {"config": "{}"}}), 400, ("not supported",)),
        ("/v2/repository/models/classifier/load", "{not json", 400, ("JSON",)),
    ],
)  # fmt: skip
def test_load_errors_are_json(
    api: Http, path: str, body: str, status: int, fragments: tuple[str, ...]
) -> None:
    got, headers, data = api.request("POST", path, body)
    assert got == status, data
    message = error_of(got, headers, data)
    for fragment in fragments:
        assert fragment in message, message


def test_tritonclient_http_reports_load_errors(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="not in the repository"):
        triton.load_model("nope")
    with pytest.raises(InferenceServerException, match="'broken'"):
        triton.load_model("broken")
    assert not triton.is_model_ready("broken")
    assert triton.is_server_ready()


# --- a run-time failure inside onnxruntime --------------------------------------


def test_a_failing_run_is_a_500_with_a_json_error(api: Http, server: InProcessServer) -> None:
    even = rows(2, seed=1)
    status, _, body = infer(api, ODD, even)
    assert status == 200, body
    np.testing.assert_array_equal(output(body, "output"), even)  # the graph itself is sound

    before = counter(server, ODD, "INTERNAL")
    for n in (1, 3):  # odd rows: the Reshape raises in session.run
        status, headers, body = infer(api, ODD, rows(n, seed=n))
        assert status == 500, body
        message = error_of(status, headers, body)
        assert "onnxruntime failed" in message and "Reshape" in message, message
    assert counter(server, ODD, "INTERNAL") == before + 2

    with grpc.insecure_channel(server.url) as channel:  # the same on the other transport
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request(ODD, rows(1)), timeout=30)
        assert info.value.code() == grpc.StatusCode.INTERNAL

    # ...and the model and the server go on serving
    status, _, body = infer(api, ODD, even)
    assert status == 200, body
    np.testing.assert_array_equal(output(body, "output"), even)
    assert api.request("GET", "/v2/health/ready")[0] == 200
    assert api.request("GET", f"/v2/models/{ODD}/ready")[0] == 200

"""The KServe V2 REST API end to end: a real server process, real clients
(http.client, tritonclient.http 2.41, perf_analyzer -i http).

Every route and its statuses; tritonclient.http with binary and JSON
tensors at batch 1, 7 and max_batch_size against onnxruntime;
classification; gzip and deflate both ways; statistics and /metrics
counting HTTP requests exactly as gRPC ones; a gRPC and an HTTP request in
one batch. The guarantees (token, TLS, 413, drain, fuzz) are in
test_http_guarantees.py.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient

from devtools.inprocess import InProcessServer
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import (
    CLASSIFIER_LABELS,
    CLASSIFIER_MAX_BATCH,
    build_repo,
    model_file,
    raw_request,
    reference,
    request,
    rows,
)  # fmt: skip
from tests.integration.http_helpers import Http, counter, error_of
from tests.integration.perf_helpers import find_perf_analyzer

X1 = [[0.5, -1.0]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("http"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(repo) as proc:
        yield proc


def infer_body(x: list[list[float]], **extra: Any) -> dict[str, Any]:
    shape = [len(x), len(x[0])]
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": x}], **extra}


# --- routes -------------------------------------------------------------------


def test_health_and_server_metadata(api: Http) -> None:
    assert api.request("GET", "/v2/health/live")[0] == 200
    assert api.request("GET", "/v2/health/ready")[0] == 200
    status, meta = api.json("GET", "/v2")
    assert status == 200 and meta["name"] == "dlserve"
    for extension in ("binary_tensor_data", "classification", "model_configuration",
                      "statistics", "model_repository", "schedule_policy"):  # fmt: skip
        assert extension in meta["extensions"]


@pytest.mark.parametrize("prefix", ["/v2/models/classifier", "/v2/models/classifier/versions/1"])
def test_model_routes(api: Http, prefix: str) -> None:
    status, meta = api.json("GET", prefix)
    assert status == 200
    assert meta["name"] == "classifier" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}]
    assert api.request("GET", f"{prefix}/ready")[0] == 200
    status, config = api.json("GET", f"{prefix}/config")
    assert status == 200
    assert config["name"] == "classifier" and config["max_batch_size"] == CLASSIFIER_MAX_BATCH
    assert config["input"][0]["dims"] == [2]  # int64 as numbers, as Triton writes them
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    status, stats = api.json("GET", f"{prefix}/stats")
    assert status == 200 and [s["name"] for s in stats["model_stats"]] == ["classifier"]
    status, everything = api.json("GET", "/v2/models/stats")
    assert status == 200 and "classifier" in {s["name"] for s in everything["model_stats"]}


def test_repository_index(api: Http) -> None:
    status, index = api.json("POST", "/v2/repository/index")
    assert status == 200
    states = {row["name"]: row["state"] for row in index}
    assert states["classifier"] == "READY" and states["broken"] != "READY"
    status, ready = api.json("POST", "/v2/repository/index", {"ready": True})
    assert status == 200 and "broken" not in {row["name"] for row in ready}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("GET", "/v2/models/nope", None, 404, "nope"),
        ("GET", "/v2/models/classifier/versions/9", None, 404, "9"),
        ("GET", "/v2/models/nope/ready", None, 404, "nope"),
        ("GET", "/v2/models/broken/ready", None, 503, ""),
        ("POST", "/v2/models/broken/infer", json.dumps(infer_body(X1)), 503, ""),
        ("POST", "/v2/models/nope/infer", json.dumps(infer_body(X1)), 404, "nope"),
        ("GET", "/v3/anything", None, 404, "/v2"),
        ("GET", "/v2/models/classifier/nonsense", None, 404, "nonsense"),
        ("GET", "/v2/models/classifier/infer", None, 405, "POST"),
        ("POST", "/v2/health/live", "", 405, "GET"),
        ("DELETE", "/v2/models/classifier", None, 405, "GET"),
        ("POST", "/v2/models/classifier/infer", "{not json", 400, "JSON"),
        ("POST", "/v2/models/classifier/infer", "[1, 2]", 400, "object"),
        ("POST", "/v2/models/classifier/infer", json.dumps(infer_body([[1.0, 2.0, 3.0]])), 400,
         "input"),
        ("POST", "/v2/repository/models/classifier/load", "", 400, "explicit"),
        ("GET", "/v2/systemsharedmemory/status", None, 400, "--allow-client-shm"),
        ("POST", "/v2/cudasharedmemory/region/x/register", "{}", 400, "--allow-client-shm"),
        ("DELETE", "/v2/trace/setting", None, 405, "POST"),
        ("GET", "/v2/trace", None, 404, "/v2/trace"),
    ],
)  # fmt: skip
def test_error_statuses(
    api: Http, method: str, path: str, body: str | None, status: int, fragment: str
) -> None:
    got, headers, data = api.request(method, path, body)
    assert got == status, data
    assert fragment in error_of(got, headers, data)
    if status == 405:
        assert headers["allow"] in ("GET", "POST", "GET, POST")


def test_json_data_nested_flat_and_typed(api: Http, repo: Path) -> None:
    x = np.asarray(X1 * 3, dtype=np.float32)
    want = reference(model_file(repo, "classifier"), x)["logits"].reshape(-1)
    for data in (x.tolist(), x.reshape(-1).tolist()):
        status, body = api.json("POST", "/v2/models/classifier/infer", {
            "id": "r1", "inputs": [{"name": "input", "shape": [3, 2], "datatype": "FP32",
                                    "data": data}]})  # fmt: skip
        assert status == 200, body
        assert body["id"] == "r1" and body["model_version"] == "1"
        logits = next(o for o in body["outputs"] if o["name"] == "logits")
        assert logits["shape"] == [3, 3] and logits["datatype"] == "FP32"
        np.testing.assert_allclose(logits["data"], want, atol=1e-6)
    for bad in (["0.5", "1"], [True, False], [[0.5, None]]):
        status, body = api.json(
            "POST",
            "/v2/models/classifier/infer",
            {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": bad}]},
        )
        assert status == 400 and "must be numbers" in body["error"], body
    status, body = api.json(
        "POST",
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]}]},
    )
    assert status == 400 and "FP16" in body["error"] and "binary" in body["error"]


# --- tritonclient.http --------------------------------------------------------


@pytest.fixture(scope="module")
def triton(server: InProcessServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.mark.parametrize("batch", [1, 7, CLASSIFIER_MAX_BATCH])
@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
def test_tritonclient_infer(
    triton: httpclient.InferenceServerClient, repo: Path, batch: int, binary_in: bool,
    binary_out: bool | None,
) -> None:  # fmt: skip
    x = rows(batch, seed=batch)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None  # None: binary_data_output for all outputs
    if binary_out is not None:
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out)
                   for n in ("logits", "probabilities")]  # fmt: skip
    result = triton.infer("classifier", [tensor], outputs=outputs)
    want = reference(model_file(repo, "classifier"), x)
    for name in ("logits", "probabilities"):
        got = result.as_numpy(name)
        assert got.shape == want[name].shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want[name], atol=1e-6)


def test_tritonclient_metadata_config_and_health(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("classifier") and not triton.is_model_ready("broken")
    assert triton.get_model_metadata("classifier")["platform"] == "onnxruntime_onnx"
    assert triton.get_model_config("classifier")["max_batch_size"] == CLASSIFIER_MAX_BATCH
    stats = triton.get_inference_statistics("classifier")["model_stats"][0]
    assert {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"} <= set(
        stats["inference_stats"]
    )
    assert triton.get_model_repository_index()


@pytest.mark.parametrize("binary", [True, False])
def test_classification(triton: httpclient.InferenceServerClient, repo: Path, binary: bool) -> None:
    x = rows(4, seed=11)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
    result = triton.infer("classifier", [tensor], outputs=[out])
    top = result.as_numpy("probabilities")
    assert top.shape == (4, 2)
    want = reference(model_file(repo, "classifier"), x)["probabilities"]
    for row, probabilities in zip(top, want, strict=True):
        first = (row[0].decode() if isinstance(row[0], bytes) else row[0]).split(":")
        index = int(np.argmax(probabilities))
        assert int(first[1]) == index and first[2] == CLASSIFIER_LABELS[index]
        assert float(first[0]) == pytest.approx(float(probabilities[index]), abs=1e-5)


@pytest.mark.parametrize("request_algorithm", ["gzip", "deflate", None])
@pytest.mark.parametrize("response_algorithm", ["gzip", "deflate", None])
def test_compression(
    triton: httpclient.InferenceServerClient, repo: Path, request_algorithm: str | None,
    response_algorithm: str | None,
) -> None:  # fmt: skip
    x = rows(7, seed=3)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer(
        "classifier", [tensor], request_compression_algorithm=request_algorithm,
        response_compression_algorithm=response_algorithm,
    )  # fmt: skip
    want = reference(model_file(repo, "classifier"), x)
    np.testing.assert_allclose(result.as_numpy("logits"), want["logits"], atol=1e-6)


def test_compressed_answers_say_so(api: Http) -> None:
    body = json.dumps(infer_body(X1)).encode()
    for name, pack, unpack in (("gzip", gzip.compress, gzip.decompress),
                               ("deflate", zlib.compress, zlib.decompress)):  # fmt: skip
        status, headers, data = api.request(
            "POST", "/v2/models/classifier/infer", pack(body),
            {"Content-Encoding": name, "Accept-Encoding": name},
        )  # fmt: skip
        assert status == 200 and headers["content-encoding"] == name
        assert json.loads(unpack(data))["model_name"] == "classifier"
    status, headers, data = api.request(
        "POST", "/v2/models/classifier/infer", b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "gzip" in error_of(status, headers, data)
    status, headers, data = api.request(
        "POST", "/v2/models/classifier/infer", body, {"Content-Encoding": "br"}
    )
    assert status == 400 and "br" in error_of(status, headers, data)


# --- counting -----------------------------------------------------------------


def _books(api: Http, server: InProcessServer) -> tuple[float, ...]:
    stats = api.json("GET", "/v2/models/counted/stats")[1]["model_stats"][0]
    s = stats["inference_stats"]
    return (
        counter(server, "counted", "OK"), counter(server, "counted", "INVALID_ARGUMENT"),
        s["success"]["count"], s["fail"]["count"], stats["inference_count"],
    )  # fmt: skip


def test_http_requests_are_counted_as_grpc_ones(api: Http, server: InProcessServer) -> None:
    x = np.asarray(X1, dtype=np.float32)
    before = _books(api, server)
    for _ in range(3):
        assert api.json("POST", "/v2/models/counted/infer", infer_body(X1))[0] == 200
    for _ in range(2):  # refused by validation
        assert api.json("POST", "/v2/models/counted/infer", infer_body([[1.0, 2.0, 3.0]]))[0] == 400
    status, _, _ = api.request("POST", "/v2/models/counted/infer", "{")  # does not decode
    assert status == 400
    over_http = _books(api, server)
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            stub.ModelInfer(request("counted", x), timeout=30)
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(request("counted", np.ones((1, 3), np.float32)), timeout=30)
        with pytest.raises(grpc.RpcError):  # does not decode: 7 bytes of FP32
            stub.ModelInfer(raw_request("counted", [1, 2], b"1234567"), timeout=30)
    over_grpc = _books(api, server)
    http_delta = [b - a for a, b in zip(before, over_http, strict=True)]
    grpc_delta = [b - a for a, b in zip(over_http, over_grpc, strict=True)]
    assert http_delta == [3, 3, 3, 0, 3]
    assert http_delta == grpc_delta


def test_grpc_and_http_requests_share_a_batch(api: Http, server: InProcessServer) -> None:
    """``delayed`` waits up to 0.5 s for a batch of 8: one request from each
    transport, sent together, run as one batch of 2."""
    x = np.asarray(X1, dtype=np.float32)

    def batches() -> dict[int, int]:
        stats = api.json("GET", "/v2/models/delayed/stats")[1]["model_stats"][0]
        return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}

    before = batches()
    answers: list[Any] = []
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        future = stub.ModelInfer.future(request("delayed", x), timeout=30)
        other = Http(server.http_url)
        thread = threading.Thread(
            target=lambda: answers.append(
                other.json("POST", "/v2/models/delayed/infer", infer_body(X1))
            )
        )
        thread.start()
        future.result()
        thread.join(30)
        other.close()
    assert answers and answers[0][0] == 200
    after = batches()
    assert after.get(2, 0) == before.get(2, 0) + 1, (before, after)


# --- perf_analyzer --------------------------------------------------------------


def test_perf_analyzer_over_http(server: InProcessServer, tmp_path: Path) -> None:
    binary, env = find_perf_analyzer()  # skips, or fails under DLSERVE_REQUIRE_SYSTEM_TOOLS=1
    csv_path = tmp_path / "http.csv"
    command = [
        binary, "-m", "classifier", "-u", server.http_url, "-i", "http",
        "--concurrency-range", "1:2", "--measurement-interval", "500",
        "--stability-percentage", "100", "--max-trials", "20", "-f", str(csv_path),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Server:" in run.stdout and "Inference count" in run.stdout, run.stdout
    assert "error" not in run.stdout.lower(), run.stdout
    assert len(csv_path.read_text().strip().splitlines()) == 3  # header + 2 levels


# --- dlserve predict / bench over HTTP -----------------------------------------


def test_predict_and_bench_over_http(server: InProcessServer, repo: Path, tmp_path: Path) -> None:
    from devtools.serverproc import run_cli

    x = [[0.5, -1.0]]
    by_url = run_cli("predict", "--url", f"http://{server.http_url}", "--model", "classifier",
                     "--data", json.dumps(x))  # fmt: skip
    assert by_url.returncode == 0, by_url.stderr
    by_flag = run_cli("predict", "--url", server.http_url, "--protocol", "http", "--model",
                      "classifier", "--data", json.dumps(x))  # fmt: skip
    over_grpc = run_cli("predict", "--url", server.url, "--model", "classifier", "--data",
                        json.dumps(x))  # fmt: skip
    assert json.loads(by_url.stdout) == json.loads(by_flag.stdout) == json.loads(over_grpc.stdout)
    want = reference(model_file(repo, "classifier"), np.asarray(x, np.float32))["logits"]
    got = json.loads(by_url.stdout)["outputs"]["logits"]["data"]
    np.testing.assert_allclose(got, want, atol=1e-6)
    missing = run_cli("predict", "--url", f"http://{server.http_url}", "--model", "nope",
                      "--data", "[1, 2]")  # fmt: skip
    assert missing.returncode != 0 and "404" in missing.stderr and "Traceback" not in missing.stderr
    out = tmp_path / "bench.json"
    bench = run_cli("bench", "--url", f"http://{server.http_url}", "--model", "classifier",
                    "--concurrency", "1,4", "--duration", "0.5", "--warmup", "0.1",
                    "--batch-size", "3", "--json", str(out))  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    records = json.loads(out.read_text())
    assert [r["concurrency"] for r in records] == [1, 4]
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in records), records

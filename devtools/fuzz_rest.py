"""Malformed REST input (KServe V2 over HTTP) for Hypothesis, and the
checks on what the server answers: ``tests/integration/test_http_guarantees.py``
runs them briefly, ``scripts/fuzz_ports.py --target rest`` for long.

The contract: a malformed body, header or path gets a 4xx with a JSON
``{"error": ...}`` body, never a 5xx; a path that names a GET route taking no
body may get 200.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from hypothesis import strategies as st

from devtools.onnx_models import mlp, write_model
from devtools.rest_client import Http, error_of

MODEL = "classifier"
INFER = f"/v2/models/{MODEL}/infer"
X = [[0.25, -0.75]]
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": X}]}
).encode()
#: What the fuzzed server is given (the tests' small_server): a small limit,
#: so that 413 is reached too.
SERVE_ARGS = ("--max-message-bytes", "8192")


def build_repo(repo: Path) -> Path:
    """A repository with the one model the fuzz targets (the tests use a
    bigger one with the same "classifier")."""
    write_model(repo, MODEL, model=mlp(classes=3, seed=1), labels=("red", "green", "blue"),
                max_batch_size=16)  # fmt: skip
    return repo


# --- generators ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
an_input = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x", ""]) | json_values,
        "shape": st.lists(st.integers(-3, 2**40), max_size=4) | json_values,
        "datatype": st.sampled_from(["FP32", "FP16", "BYTES", "INT8", "BOOL", "nope"]),
        "data": json_values,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-5, 64)})
        | json_values,
    },
)
requests_ = st.fixed_dictionaries(
    {"inputs": st.lists(an_input, min_size=1, max_size=3) | json_values},
    optional={"outputs": json_values, "parameters": json_values, "id": json_values},
)
bodies = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | requests_.map(lambda v: json.dumps(v).encode())
    | st.tuples(requests_, st.binary(max_size=32)).map(lambda t: json.dumps(t[0]).encode() + t[1])
)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
lengths = st.integers(-2, 200).map(str) | header_values
encodings = st.sampled_from(["gzip", "deflate", "identity", "br", ""]) | header_values
accepts = st.sampled_from(["gzip", "deflate", "gzip;q=0", "*"]) | header_values

WORDS = ["v2", "models", "classifier", "versions", "1", "infer", "ready", "stats", "config",
         "repository", "index", "load", "unload", "health", "%ff", ""]  # fmt: skip
segment = st.text(
    st.sampled_from("abcv2%0123456789ABCDEF._-~!$&'()*+,;=:@"), max_size=10
) | st.sampled_from(WORDS)
path_parts = st.lists(segment, max_size=6)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])


# --- checks -------------------------------------------------------------------


def assert_4xx(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, data = answer
    assert 400 <= status < 500, (status, data[:300])
    error_of(status, headers, data)


def check_body(api: Http, body: bytes) -> None:
    assert_4xx(api.request("POST", INFER, body))


def check_headers(api: Http, body: bytes, length: str, encoding: str, accept: str) -> None:
    headers = {"Inference-Header-Content-Length": length, "Content-Encoding": encoding,
               "Accept-Encoding": accept}  # fmt: skip
    assert_4xx(api.request("POST", INFER, body, headers))


def check_path(api: Http, parts: list[str], method: str) -> None:
    path = "/" + "/".join(parts)
    status, headers, data = api.request(method, path, b"{")
    if status == 200:  # a GET route that takes no body (health, metadata)
        assert method == "GET", (method, path)
        return
    assert_4xx((status, headers, data))


def assert_correct(api: Http, model_file: Path) -> None:
    """A valid request is answered, and its logits match onnxruntime's."""
    status, _, data = api.request("POST", INFER, BODY)
    assert status == 200, data
    logits = next(o for o in json.loads(data)["outputs"] if o["name"] == "logits")
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    want = session.run(["logits"], {"input": np.asarray(X, np.float32)})[0]
    np.testing.assert_allclose(logits["data"], want.reshape(-1), atol=1e-6)
    assert api.request("GET", "/v2/health/ready")[0] == 200

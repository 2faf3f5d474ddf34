"""Helpers shared by the end-to-end server tests (no fixtures here: those
live in conftest.py): the session repository, request builders, reading
answers, comparing with onnxruntime, expecting an RPC error."""

from __future__ import annotations

import contextlib
import functools
import re
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import ServerProcess
from serving._generated import grpc_service_pb2 as pb

#: The five default models committed to the repository (contract: presets).
DEFAULT_MODELS = Path(__file__).resolve().parents[2] / "models"
DEFAULT_NAMES = ("digits-cnn", "mlp-circle", "mlp-spiral", "mlp-xor", "perceptron-linear")

CLASSIFIER_LABELS = ("red", "green", "blue")
CLASSIFIER_MAX_BATCH = 16


def build_repo(repo: Path) -> Path:
    write_model(
        repo, "classifier", model=mlp(classes=3, seed=1), labels=CLASSIFIER_LABELS,
        max_batch_size=CLASSIFIER_MAX_BATCH,
    )  # fmt: skip
    write_model(repo, "autocomplete", model=mlp(seed=2), config=None)
    write_model(repo, "counted", model=mlp(seed=3))
    fixed = config_text("fixed", max_batch_size=0, dynamic_batching=False).replace(
        "dims: [ 2 ]", "dims: [ 3, 2 ]"
    )
    write_model(repo, "fixed", model=mlp(seed=4, batch=3), config=fixed)
    delayed = config_text("delayed", max_batch_size=8, dynamic_batching=False) + (
        "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 500000 }\n"
    )
    write_model(repo, "delayed", model=mlp(seed=6), config=delayed)
    broken = write_model(repo, "broken", model=mlp(seed=5))
    (broken / "1" / "model.onnx").write_bytes(b"this is not an ONNX protobuf")
    return repo


# --- requests and answers ---------------------------------------------------


def model_file(repo: Path, name: str, version: int = 1) -> Path:
    return repo / name / str(version) / "model.onnx"


def reference(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the ONNX file, run in-process by onnxruntime."""
    session = _session(str(path))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


@functools.lru_cache(maxsize=32)
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def rows(n: int, features: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, features)).astype(np.float32)


def infer_input(
    array: np.ndarray, name: str = "input", datatype: str = "FP32"
) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def raw_request(
    model: str,
    shape: Sequence[int],
    raw: bytes,
    name: str = "input",
    datatype: str = "FP32",
    version: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest with exactly the shape and bytes given (no checks)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(raw)
    return request


@contextlib.contextmanager
def rpc_error(code: grpc.StatusCode, *fragments: str) -> Iterator[None]:
    """Expect a tritonclient or grpc error with ``code`` whose message
    contains every fragment."""
    try:
        yield
    except InferenceServerException as exc:
        status, message = exc.status(), exc.message()
        assert status == str(code), f"expected {code}, got {status}: {message}"
    except grpc.RpcError as exc:
        status, message = str(exc.code()), exc.details()
        assert status == str(code), f"expected {code}, got {status}: {message}"
    else:
        pytest.fail(f"expected {code}, the call succeeded")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def request(model: str, x: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=model, model_version=version)
    r.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    r.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return r


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, dtype=np.float32).reshape(list(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def expected(seed: int, x: np.ndarray) -> dict[str, np.ndarray]:
    """What the fast twin of ``slow_mlp(seed)`` answers, run in-process."""
    session = ort.InferenceSession(
        mlp(seed=seed).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    logits, probabilities = session.run(["logits", "probabilities"], {"input": x})
    return {"logits": logits, "probabilities": probabilities}


def inflight(server: ServerProcess, model: str) -> float:
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
    match = re.search(
        rf'^dlserve_inflight_requests{{model="{re.escape(model)}"}} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0

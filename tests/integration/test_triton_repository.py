"""A model repository written the way Triton users write one, not by dlserve:
hand-written config.pbtxt files in Triton's own style (colons, brackets,
instance_group, version_policy, dynamic_batching with a queue delay,
parameters, a custom model file name and label file), a model folder with
no config at all, the three version policies, and broken folders next to
good ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper

from devtools.inprocess import InProcessServer
from devtools.onnx_models import IR_VERSION, OPSET, mlp
from devtools.serverproc import wait_for
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import infer_input, reference, rows, rpc_error

# Triton's documentation style, as found in its model repositories.
HAND_WRITTEN = """
name: "iris_like"
platform: "onnxruntime_onnx"
max_batch_size : 8
default_model_filename: "classifier.onnx"
version_policy: { all { }}
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NONE
    dims: [ 2 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 3 ]
    label_filename: "classes.txt"
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "cudnn_conv_algo_search" value: { string_value: "0" } }
"""

# The newer style: backend instead of platform; no batching, a fixed shape.
BACKEND_STYLE = """
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "input", data_type: TYPE_FP32, dims: [ 3, 2 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 3, 4 ] } ]
"""

VERSIONED = """
platform: "onnxruntime_onnx"
max_batch_size: 4
version_policy: {policy}
"""


def _save(folder: Path, version: int, model: onnx.ModelProto, file: str = "model.onnx") -> Path:
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    path = folder / str(version) / file
    onnx.save(model, str(path))
    return path


def _reshape_to_four_rows() -> onnx.ModelProto:
    """input [N, 2] reshaped to [4, -1]: a single row cannot be."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["logits"])],
        "four_rows",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, "n"])],
        [numpy_helper.from_array(np.array([4, -1], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def build(repo: Path) -> dict[str, Path]:
    """Write the repository; returns the model files by "name:version"."""
    files: dict[str, Path] = {}
    hand = repo / "iris_like"
    hand.mkdir(parents=True)
    (hand / "config.pbtxt").write_text(HAND_WRITTEN)
    (hand / "classes.txt").write_text("setosa\nversicolor\nvirginica\n")
    for v in (1, 2):
        files[f"iris_like:{v}"] = _save(hand, v, mlp(classes=3, seed=10 + v), "classifier.onnx")
    (hand / "README.md").write_text("not a version\n")
    (hand / "notes").mkdir()

    files["bare:1"] = _save(repo / "bare", 1, mlp(classes=2, seed=20))

    backend = repo / "backend_style"
    backend.mkdir()
    (backend / "config.pbtxt").write_text(BACKEND_STYLE)
    files["backend_style:1"] = _save(backend, 1, mlp(classes=4, seed=30, batch=3))

    policies = {
        "all_versions": "{ all: {} }",
        "specific_versions": "{ specific: { versions: [1, 3] } }",
        "latest_two": "{ latest: { num_versions: 2 } }",
    }
    for name, policy in policies.items():
        folder = repo / name
        folder.mkdir()
        (folder / "config.pbtxt").write_text(VERSIONED.format(policy=policy))
        for v in (1, 2, 3):
            files[f"{name}:{v}"] = _save(folder, v, mlp(seed=40 + v))

    # Broken folders, each next to the good ones.
    corrupt = repo / "corrupt_onnx"
    _save(corrupt, 1, mlp())
    (corrupt / "1" / "model.onnx").write_bytes(b"\x08\x07garbage")
    bad = repo / "bad_config"
    _save(bad, 1, mlp())
    (bad / "config.pbtxt").write_text('name: "bad_config"\nmax_batch_size: eight\n')
    renamed = repo / "wrong_name"
    _save(renamed, 1, mlp())
    (renamed / "config.pbtxt").write_text('name: "something_else"\nmax_batch_size: 4\n')
    dims = repo / "dims_mismatch"
    _save(dims, 1, mlp())
    (dims / "config.pbtxt").write_text(
        'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_FP32, dims: [ 5 ] } ]\n'
    )
    other = repo / "tensorflow_model"
    _save(other, 1, mlp())
    (other / "config.pbtxt").write_text('platform: "tensorflow_savedmodel"\nmax_batch_size: 4\n')
    (repo / "empty_model").mkdir()
    # Loads fine, fails when run: only the warm-up inference finds out.
    _save(repo / "fails_warmup", 1, _reshape_to_four_rows())

    (repo / "README.md").write_text("a Triton model repository\n")
    (repo / ".hidden").mkdir()
    return files


GOOD = {"iris_like", "bare", "backend_style", "all_versions", "specific_versions", "latest_two"}
BROKEN = {
    "corrupt_onnx": "Protobuf parsing failed",
    "bad_config": "config.pbtxt is not a valid ModelConfig",
    "wrong_name": "'something_else'",
    "dims_mismatch": "dims [5]",
    "tensorflow_model": "'tensorflow_savedmodel'",
    "empty_model": "model.onnx",
    "fails_warmup": "warm-up inference failed",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("triton-repo"))


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[InProcessServer]:
    with InProcessServer(files["bare:1"].parents[2]) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: InProcessServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url)
    yield c
    c.close()


def test_index_lists_every_model_folder(client: triton.InferenceServerClient) -> None:
    names = {m.name for m in client.get_model_repository_index().models}
    assert names == GOOD | set(BROKEN)


def test_hand_written_config_is_served_as_written(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("iris_like").config
    assert config.max_batch_size == 8
    assert config.default_model_filename == "classifier.onnx"
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 2)]  # KIND_CPU
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert config.parameters["cudnn_conv_algo_search"].string_value == "0"
    assert config.parameters["execution_provider"].string_value == "CPUExecutionProvider"
    assert [o.name for o in config.output] == ["probabilities"]  # a subset of the graph's
    assert config.output[0].label_filename == "classes.txt"


def test_hand_written_model_serves_both_versions(
    client: triton.InferenceServerClient, files: dict[str, Path]
) -> None:
    x = rows(8, seed=1)
    meta = client.get_model_metadata("iris_like")
    assert list(meta.versions) == ["1", "2"]
    assert [o.name for o in meta.outputs] == ["probabilities"]
    for version in ("1", "2"):
        result = client.infer("iris_like", [infer_input(x)], model_version=version)
        want = reference(files[f"iris_like:{version}"], x)["probabilities"]
        np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-6)
        assert result.as_numpy("logits") is None  # not in the config: not served
    latest = client.infer("iris_like", [infer_input(x)])
    assert latest.get_response().model_version == "2"


def test_hand_written_labels_file(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "iris_like",
        [infer_input(rows(2))],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
    )
    labels = {entry.decode().split(":")[2] for entry in result.as_numpy("probabilities").ravel()}
    assert labels == {"setosa", "versicolor", "virginica"}


def test_folder_without_config_is_completed_and_served(
    client: triton.InferenceServerClient, files: dict[str, Path]
) -> None:
    config = client.get_model_config("bare").config
    assert config.name == "bare"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4  # Triton's auto-complete default
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [2])]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("logits", [2]),
        ("probabilities", [2]),
    ]
    x = rows(4, seed=2)
    result = client.infer("bare", [infer_input(x)])
    want = reference(files["bare:1"], x)
    for name in ("logits", "probabilities"):
        np.testing.assert_allclose(result.as_numpy(name), want[name], atol=1e-6)


def test_backend_style_config_without_batching(
    client: triton.InferenceServerClient, files: dict[str, Path]
) -> None:
    config = client.get_model_config("backend_style").config
    assert (config.backend, config.max_batch_size) == ("onnxruntime", 0)
    assert [list(o.dims) for o in config.output] == [[3, 4]]
    x = rows(3, seed=3)
    result = client.infer("backend_style", [infer_input(x)])
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference(files["backend_style:1"], x)["logits"], atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "served"),
    [("all_versions", [1, 2, 3]), ("specific_versions", [1, 3]), ("latest_two", [2, 3])],
)
def test_version_policy(
    client: triton.InferenceServerClient, files: dict[str, Path], name: str, served: list[int]
) -> None:
    assert list(client.get_model_metadata(name).versions) == [str(v) for v in served]
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    x = rows(2, seed=4)
    for version in (1, 2, 3):
        ready = client.is_model_ready(name, str(version))
        assert ready is (version in served), version
        if ready:
            assert index[(name, str(version))] == "READY"
            result = client.infer(name, [infer_input(x)], model_version=str(version))
            want = reference(files[f"{name}:{version}"], x)["logits"]
            np.testing.assert_allclose(result.as_numpy("logits"), want, atol=1e-6)
        else:
            with rpc_error(grpc.StatusCode.NOT_FOUND, f"'{name}'", str(version)):
                client.infer(name, [infer_input(x)], model_version=str(version))
    # No version asked: the highest served one.
    assert client.infer(name, [infer_input(x)]).get_response().model_version == str(served[-1])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_folder_is_not_ready_with_its_reason(
    client: triton.InferenceServerClient, name: str
) -> None:
    reason = BROKEN[name]
    assert not client.is_model_ready(name)
    entries = [m for m in client.get_model_repository_index().models if m.name == name]
    assert entries and all(m.state == "UNAVAILABLE" for m in entries)
    assert all(reason in m.reason for m in entries), [m.reason for m in entries]
    with rpc_error(grpc.StatusCode.UNAVAILABLE, f"'{name}'", reason):
        client.infer(name, [infer_input(rows(1))])


def test_good_models_serve_next_to_broken_ones(
    client: triton.InferenceServerClient, server: InProcessServer
) -> None:
    assert client.is_server_ready()
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10)
    assert {m.name for m in index.models} == GOOD
    assert {m.state for m in index.models} == {"READY"}


# --- poll mode: the repository changes under a running server --------------------------


def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "polled"
    a1 = _save(repo / "a", 1, mlp(seed=50))
    with InProcessServer(
        repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2"
    ) as proc:
        c = triton.InferenceServerClient(proc.url)
        x = rows(2, seed=6)

        def logits(name: str) -> np.ndarray:
            return c.infer(name, [infer_input(x)]).as_numpy("logits")

        np.testing.assert_allclose(logits("a"), reference(a1, x)["logits"], atol=1e-6)

        # A new model folder, without a config, appears.
        b1 = _save(repo / "b", 1, mlp(seed=51))
        assert wait_for(lambda: c.is_model_ready("b"))
        np.testing.assert_allclose(logits("b"), reference(b1, x)["logits"], atol=1e-6)

        # A new version replaces the old one (default policy: latest 1).
        a2 = _save(repo / "a", 2, mlp(seed=52))
        assert wait_for(lambda: c.is_model_ready("a", "2") and not c.is_model_ready("a", "1"))
        np.testing.assert_allclose(logits("a"), reference(a2, x)["logits"], atol=1e-6)

        # A broken rewrite of the serving version does not take it down.
        want = reference(a2, x)["logits"]
        a2.write_bytes(b"truncated")

        def reload_failed() -> bool:
            index = {(m.name, m.version): m for m in c.get_model_repository_index().models}
            return "reload failed" in index[("a", "2")].reason

        assert wait_for(reload_failed)
        assert c.is_model_ready("a", "2")
        np.testing.assert_allclose(logits("a"), want, atol=1e-6)

        # A removed folder leaves the index.
        shutil.rmtree(repo / "b")
        assert wait_for(lambda: "b" not in {m.name for m in c.get_model_repository_index().models})
        with rpc_error(grpc.StatusCode.NOT_FOUND, "'b'"):
            logits("b")
        c.close()

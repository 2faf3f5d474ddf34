"""Security of a real ``dlserve serve``: TLS and mutual TLS with certificates
made here, bearer-token auth (health exempt), the repository API off by
default, and request names that never become file system paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.onnx_models import mlp, write_model
from devtools.serverproc import ServerFailed, ServerProcess, run_cli
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import expected, outputs, request
from tests.pki import Pem, issue, make_ca
from tests.support import free_port

TOKEN = "tok-3f9a81c2d4e5"
X = np.array([[0.25, -0.5], [1.0, 2.0]], np.float32)


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    rogue_ca: Pem
    rogue_client: Pem
    files: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, ca_key, ca_cert = make_ca("dlserve test CA")
    rogue_ca, rogue_key, rogue_cert = make_ca("someone else's CA")
    pki = Pki(
        ca=ca,
        server=issue(ca_key, ca_cert, "dlserve", server=True),
        client=issue(ca_key, ca_cert, "a client", server=False),
        rogue_ca=rogue_ca,
        rogue_client=issue(rogue_key, rogue_cert, "a stranger", server=False),
        files={},
    )
    folder = tmp_path_factory.mktemp("pki")
    for name, data in {
        "ca.pem": pki.ca.cert, "server.pem": pki.server.cert, "server.key": pki.server.key,
    }.items():  # fmt: skip
        (folder / name).write_bytes(data)
        pki.files[name] = folder / name
    return pki


# --- servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security")
    repo = root / "models"
    write_model(repo, "model", model=mlp(seed=1))
    # A valid model just outside the repository: nothing may ever load it.
    write_model(root, "outside", model=mlp(seed=2))
    return repo


def secure(url: str, pki: Pki, client: Pem | None = None, ca: bytes | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca or pki.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.secure_channel(url, credentials)


def assert_infers(channel: grpc.Channel, **kwargs: object) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    reply = stub.ModelInfer(request("model", X), timeout=30, **kwargs)  # type: ignore[arg-type]
    np.testing.assert_allclose(outputs(reply)["logits"], expected(1, X)["logits"], rtol=1e-6)


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    """The status of a call that must not get through."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request("model", X), timeout=10)
    return info.value.code()


def test_tls(repo: Path, pki: Pki) -> None:
    f = pki.files
    with ServerProcess(
        repo, "--tls-cert", str(f["server.pem"]), "--tls-key", str(f["server.key"]),
        tls_ca=pki.ca.cert,
    ) as server:  # fmt: skip
        with secure(server.url, pki) as channel:
            assert_infers(channel)
        # tritonclient speaks TLS to it as well.
        client = triton.InferenceServerClient(
            server.url, ssl=True, root_certificates=str(f["ca.pem"])
        )
        assert client.is_model_ready("model")
        client.close()
        with grpc.insecure_channel(server.url) as channel:  # plaintext to a TLS port
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE
        with secure(server.url, pki, ca=pki.rogue_ca.cert) as channel:  # untrusted server cert
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def wait_serving(server: ServerProcess, pki: Pki) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise ServerFailed(server.log())
        try:
            with secure(server.url, pki, client=pki.client) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            if health.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise ServerFailed(f"not serving:\n{server.log()}")


def test_mutual_tls(repo: Path, pki: Pki) -> None:
    f = pki.files
    with ServerProcess(
        repo, "--tls-cert", str(f["server.pem"]), "--tls-key", str(f["server.key"]),
        "--tls-client-ca", str(f["ca.pem"]), wait_ready=False,
    ) as server:  # fmt: skip
        wait_serving(server, pki)
        with secure(server.url, pki, client=pki.client) as channel:
            assert_infers(channel)
        with secure(server.url, pki) as channel:  # no client certificate
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE
        with secure(server.url, pki, client=pki.rogue_client) as channel:  # signed by a stranger
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(server.url) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE


# --- bearer token -------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline is not part of the token
    with ServerProcess(
        repo, "--auth-token-file", str(token_file), "--model-control-mode", "explicit",
        "--load-model", "*",
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def auth_channel(auth_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(auth_server.url) as channel:
        yield channel


PROTECTED = [
    ("ModelInfer", lambda: request("model", X)),
    ("ModelMetadata", lambda: pb.ModelMetadataRequest(name="model")),
    ("ModelConfig", lambda: pb.ModelConfigRequest(name="model")),
    ("ModelStatistics", lambda: pb.ModelStatisticsRequest(name="model")),
    ("ModelReady", lambda: pb.ModelReadyRequest(name="model")),
    ("ServerMetadata", lambda: pb.ServerMetadataRequest()),
    ("RepositoryIndex", lambda: pb.RepositoryIndexRequest()),
    ("RepositoryModelLoad", lambda: pb.RepositoryModelLoadRequest(model_name="model")),
    ("TraceSetting", lambda: pb.TraceSettingRequest()),
    ("LogSettings", lambda: pb.LogSettingsRequest()),
]
BAD_HEADERS = [
    None,
    ("authorization", f"Bearer {TOKEN}x"),
    ("authorization", f"Bearer {TOKEN[:-1]}"),
    ("authorization", TOKEN),
    ("authorization", f"Basic {TOKEN}"),
    ("authorization", "Bearer "),
    ("authorization", "Bearer   "),
    ("x-api-key", TOKEN),
]

GOOD_HEADERS = [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN}", f"BEARER   {TOKEN}"]


@pytest.mark.parametrize(("method", "make"), PROTECTED, ids=[m for m, _ in PROTECTED])
def test_protected_rpcs_need_the_token(auth_channel: grpc.Channel, method: str, make) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.GRPCInferenceServiceStub(auth_channel)
    call = getattr(stub, method)
    for header in BAD_HEADERS:
        with pytest.raises(grpc.RpcError) as info:
            call(make(), timeout=30, metadata=[header] if header else None)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (header, info.value.details())
        assert "Bearer" in info.value.details()
    # RFC 6750: "Bearer" 1*SP token, the scheme case-insensitive.
    for value in GOOD_HEADERS:
        call(make(), timeout=30, metadata=[("authorization", value)])


def test_two_spaces_after_bearer_are_accepted(auth_server: ServerProcess) -> None:
    """What curl-style clients and tritonclient send when a template adds a space."""
    client = triton.InferenceServerClient(auth_server.url)
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer("model", [tensor], headers={"authorization": f"Bearer  {TOKEN}"})
    np.testing.assert_allclose(result.as_numpy("logits"), expected(1, X)["logits"], rtol=1e-6)
    client.close()


def test_stream_needs_the_token(auth_channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(auth_channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ModelStreamInfer(iter([request("model", X)]), timeout=30))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answers = list(
        stub.ModelStreamInfer(
            iter([request("model", X)]),
            timeout=30,
            metadata=[("authorization", f"Bearer {TOKEN}")],
        )  # fmt: skip
    )
    assert len(answers) == 1 and not answers[0].error_message


def test_health_and_liveness_are_open(auth_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(auth_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=30
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = pb_grpc.GRPCInferenceServiceStub(auth_channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready


def test_tritonclient_with_the_token(auth_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(auth_server.url)
    headers = {"authorization": f"Bearer {TOKEN}"}
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer("model", [tensor], headers=headers)
    np.testing.assert_allclose(result.as_numpy("logits"), expected(1, X)["logits"], rtol=1e-6)
    with pytest.raises(Exception, match="UNAUTHENTICATED|bearer"):
        client.infer("model", [tensor])
    client.close()


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_token_file_is_refused_at_start(repo: Path, tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    result = run_cli(
        "serve", "--model-repository", str(repo), "--host", "127.0.0.1", "--http-port", "0",
        "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
        "--auth-token-file", str(token_file), timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "empty" in result.stderr.strip().splitlines()[-1]


# --- client-supplied names in error messages -------------------------------------

LONG = "n" * 16384  # echoed whole, a 16 KiB name overflows the 8 KiB gRPC trailer


def long_named(kind: str) -> pb.ModelInferRequest:
    r = request("model", X)
    if kind == "input":
        r.inputs[0].name = LONG
    elif kind == "datatype":  # refused by the codec, before the model is looked at
        r.inputs[0].name = LONG
        r.inputs[0].datatype = "D" * 16384
    else:
        r.outputs.add(name=LONG)
    return r


@pytest.mark.parametrize("kind", ["input", "datatype", "output"])
def test_long_names_are_capped_in_messages(auth_channel: grpc.Channel, kind: str) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(auth_channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(
            long_named(kind), timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")]
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details()
    assert f"'{'n' * 64}...' (16384 characters)" in details
    assert LONG not in details and len(details) < 1000, details[:200]


# --- repository control and paths ---------------------------------------------


def test_repository_control_is_off_by_default(repo: Path) -> None:
    with ServerProcess(repo) as server, grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, message in (
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="model")),
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="model")),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="../outside")),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(message, timeout=30)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--model-control-mode explicit" in info.value.details()
        assert_infers(channel)  # the unload did nothing


def hostile_names(repo: Path) -> list[str]:
    outside = repo.parent / "outside"
    return [
        "../outside", "..", ".", "", "./model", "model/", "model/1", "model/../model",
        str(outside), "/etc/passwd", "/", "model\0", "\0", "model\0/../../outside",
        "x" * 255, "x" * 256, "x" * 300, "y" * 5000, "\\..\\outside", "%2e%2e/outside",
        ".hidden", "~", "model\n",
    ]  # fmt: skip


HOSTILE_VERSIONS = ["../1", "1/..", "/1", "1\0", "\0", "..", ".", "-1", "0", "1 ", "9" * 5000,
                    "\uff11", "1e0", "0x1"]  # fmt: skip


def test_request_names_never_become_paths(repo: Path) -> None:
    with ServerProcess(
        repo, "--model-control-mode", "explicit", "--load-model", "model"
    ) as server, grpc.insecure_channel(server.url) as channel:  # fmt: skip
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in hostile_names(repo):
            for call, message in (
                (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name)),
                (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=name)),
                (stub.ModelInfer, request(name, X)),
                (stub.ModelMetadata, pb.ModelMetadataRequest(name=name)),
                (stub.ModelConfig, pb.ModelConfigRequest(name=name)),
                # (ModelStatistics with no name means "every model")
                *([(stub.ModelStatistics, pb.ModelStatisticsRequest(name=name))] if name else []),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call(message, timeout=30)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND, (
                    name[:40],
                    call,
                    info.value.details(),
                )
                assert not stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=30).ready
        for version in HOSTILE_VERSIONS:
            for call, message in (
                (stub.ModelInfer, request("model", X, version)),
                (stub.ModelMetadata, pb.ModelMetadataRequest(name="model", version=version)),
                (stub.ModelConfig, pb.ModelConfigRequest(name="model", version=version)),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call(message, timeout=30)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND, (
                    version[:40],
                    info.value.details(),
                )
        # Nothing outside the repository was ever loaded or even listed.
        listed = {
            m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models
        }
        assert listed == {"model"}
        assert "outside" not in server.log()
        assert "Traceback" not in server.log(), server.log()[-4000:]
        assert_infers(channel)

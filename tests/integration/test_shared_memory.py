"""System shared memory end to end: tritonclient.grpc and tritonclient.http
with ``tritonclient.utils.shared_memory`` regions against a server started
with ``--allow-client-shm`` (inputs and outputs in shared memory, results
equal to onnxruntime), perf_analyzer ``--shared-memory=system``, hostile
registrations and requests (contract errors, the server still serving),
unregister while a request is in flight, and the session server (flag off)
refusing with a message that names the flag."""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from devtools.inprocess import InProcessServer
from devtools.onnx_models import config_text, mlp, write_model
from tests.integration.helpers import inflight, model_file, reference, rows, rpc_error
from tests.integration.http_helpers import Http, error_of
from tests.integration.perf_helpers import find_perf_analyzer
from tests.integration.shm_helpers import Regions, regions

FLAG = "--allow-client-shm"
#: ``held`` waits up to a minute for a batch of 8 rows: a request of fewer
#: rows stays in flight until the test sends the rest.
HELD = config_text("held", max_batch_size=8, dynamic_batching=False) + (
    "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 60000000 }\n"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shm-repo")
    write_model(root, "classifier", model=mlp(classes=3, seed=1), max_batch_size=16)
    write_model(root, "held", model=mlp(seed=6), config=HELD)
    return root


@pytest.fixture(scope="module")
def shm_server(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(repo, FLAG) as server:
        yield server


@pytest.fixture
def grpc_client(shm_server: InProcessServer) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(shm_server.url)
    yield client
    client.unregister_system_shared_memory()  # each test starts with none
    client.close()


@pytest.fixture
def http_client(shm_server: InProcessServer) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(shm_server.http_url)
    yield client
    client.close()


@pytest.fixture
def made() -> Iterator[Regions]:
    with regions() as r:
        yield r


def _serves(server: InProcessServer, repo: Path) -> None:
    """The server is ready and answers a plain request correctly."""
    client = tgrpc.InferenceServerClient(server.url)
    try:
        assert client.is_server_ready()
        x = rows(2)
        tensor = tgrpc.InferInput("input", [2, 2], "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("classifier", [tensor]).as_numpy("logits")
        np.testing.assert_allclose(got, reference(model_file(repo, "classifier"), x)["logits"],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    finally:
        client.close()


# --- inputs and outputs in shared memory ------------------------------------------


def test_extensions_list_system_shared_memory_only_when_on(
    shm_server: InProcessServer, server: InProcessServer
) -> None:
    on = tgrpc.InferenceServerClient(shm_server.url).get_server_metadata().extensions
    off = tgrpc.InferenceServerClient(server.url).get_server_metadata().extensions
    assert "system_shared_memory" in on and "system_shared_memory" not in off
    assert "cuda_shared_memory" not in on  # no CUDA regions can be registered


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inputs_and_outputs_in_shared_memory_match_onnxruntime(
    protocol: str,
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
    made: Regions,
    repo: Path,
) -> None:
    lib: Any = tgrpc if protocol == "grpc" else thttp
    client = grpc_client if protocol == "grpc" else http_client
    x = rows(5, seed=3)
    want = reference(model_file(repo, "classifier"), x)
    # The input at an offset inside its region; both outputs in one region.
    in_key, in_name, _ = made.create(4096 + x.nbytes, x, offset=4096)
    out_key, out_name, out_handle = made.create(1024)
    client.register_system_shared_memory(in_name, in_key, 4096 + x.nbytes)
    client.register_system_shared_memory(out_name, out_key, 1024)
    tensor = lib.InferInput("input", [5, 2], "FP32")
    tensor.set_shared_memory(in_name, x.nbytes, offset=4096)
    logits = lib.InferRequestedOutput("logits")
    logits.set_shared_memory(out_name, 60)
    probabilities = lib.InferRequestedOutput("probabilities")
    probabilities.set_shared_memory(out_name, 60, offset=512)
    result = client.infer("classifier", [tensor], outputs=[logits, probabilities])

    got_logits = made.read(out_handle, np.float32, [5, 3])
    got_probabilities = made.read(out_handle, np.float32, [5, 3], offset=512)
    np.testing.assert_allclose(got_logits, want["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_probabilities, want["probabilities"], rtol=1e-5, atol=1e-6)
    # The answer carries the regions, not the data (as Triton answers).
    for name, offset in (("logits", 0), ("probabilities", 512)):
        output = result.get_output(name)
        if protocol == "grpc":
            params = {k: v.string_param or v.int64_param for k, v in output.parameters.items()}
            index = [o.name for o in result.get_response().outputs].index(name)
            assert result.get_response().raw_output_contents[index] == b""
        else:
            params = output["parameters"]
            assert "data" not in output
        assert params == {
            "shared_memory_region": out_name,
            "shared_memory_byte_size": 60,
            "shared_memory_offset": offset,
        }
        assert list(output["shape"] if protocol == "http" else output.shape) == [5, 3]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_output_in_the_answer_beside_one_in_shared_memory(
    protocol: str,
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
    made: Regions,
    repo: Path,
) -> None:
    lib: Any = tgrpc if protocol == "grpc" else thttp
    client = grpc_client if protocol == "grpc" else http_client
    x = rows(3, seed=4)
    want = reference(model_file(repo, "classifier"), x)
    key, name, handle = made.create(x.nbytes + 64, x)
    client.register_system_shared_memory(name, key, x.nbytes + 64)
    tensor = lib.InferInput("input", [3, 2], "FP32")
    tensor.set_shared_memory(name, x.nbytes)
    logits = lib.InferRequestedOutput("logits")
    logits.set_shared_memory(name, 36, offset=x.nbytes + 16)
    result = client.infer(
        "classifier", [tensor], outputs=[lib.InferRequestedOutput("probabilities"), logits]
    )
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(made.read(handle, np.float32, [3, 3], offset=x.nbytes + 16),
                               want["logits"], rtol=1e-5, atol=1e-6)  # fmt: skip


def test_regions_are_shared_by_both_protocols(
    grpc_client: tgrpc.InferenceServerClient,
    http_client: thttp.InferenceServerClient,
    made: Regions,
    repo: Path,
) -> None:
    x = rows(2, seed=5)
    key, name, _ = made.create(x.nbytes, x)
    http_client.register_system_shared_memory(name, key, x.nbytes)
    status = grpc_client.get_system_shared_memory_status(as_json=True)
    assert status["regions"][name] == {"name": name, "key": key, "byte_size": str(x.nbytes)}
    assert http_client.get_system_shared_memory_status(name) == [
        {"name": name, "key": key, "offset": 0, "byte_size": x.nbytes}
    ]
    tensor = tgrpc.InferInput("input", [2, 2], "FP32")
    tensor.set_shared_memory(name, x.nbytes)
    got = grpc_client.infer("classifier", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(got, reference(model_file(repo, "classifier"), x)["logits"],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    grpc_client.unregister_system_shared_memory(name)
    assert http_client.get_system_shared_memory_status() == []


def test_stream_requests_use_shared_memory(
    grpc_client: tgrpc.InferenceServerClient, made: Regions, repo: Path
) -> None:
    x = rows(4, seed=6)
    key, name, handle = made.create(1024, x)
    grpc_client.register_system_shared_memory(name, key, 1024)
    answers: queue.Queue[Any] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        tensor = tgrpc.InferInput("input", [4, 2], "FP32")
        tensor.set_shared_memory(name, x.nbytes)
        logits = tgrpc.InferRequestedOutput("logits")
        logits.set_shared_memory(name, 48, offset=256)
        grpc_client.async_stream_infer("classifier", [tensor], outputs=[logits])
        missing = tgrpc.InferInput("input", [4, 2], "FP32")
        missing.set_shared_memory("no-such-region", x.nbytes)
        grpc_client.async_stream_infer("classifier", [missing])
        got = [answers.get(timeout=30), answers.get(timeout=30)]  # in either order
    finally:
        grpc_client.stop_stream()
    results = [result for result, error in got if error is None]
    errors = [error for result, error in got if error is not None]
    assert len(results) == 1 and len(errors) == 1, got
    assert "no-such-region" in errors[0].message()
    want = reference(model_file(repo, "classifier"), x)["logits"]
    np.testing.assert_allclose(made.read(handle, np.float32, [4, 3], offset=256), want,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


# --- unregister while a request holds its region ----------------------------------


def test_unregister_while_a_request_is_in_flight(
    shm_server: InProcessServer, grpc_client: tgrpc.InferenceServerClient, made: Regions
) -> None:
    """The request keeps reading and writing its regions; the names are
    gone at once; the mappings close when it is answered."""
    x = rows(1, seed=7)
    in_key, in_name, _ = made.create(x.nbytes, x)
    out_key, out_name, out_handle = made.create(64)
    grpc_client.register_system_shared_memory(in_name, in_key, x.nbytes)
    grpc_client.register_system_shared_memory(out_name, out_key, 64)
    tensor = tgrpc.InferInput("input", [1, 2], "FP32")
    tensor.set_shared_memory(in_name, x.nbytes)
    logits = tgrpc.InferRequestedOutput("logits")
    logits.set_shared_memory(out_name, 8)
    answers: queue.Queue[Any] = queue.Queue()
    grpc_client.async_infer(
        "held", [tensor], lambda result, error: answers.put((result, error)), outputs=[logits]
    )
    while inflight(shm_server, "held") < 1:  # queued, waiting for 7 more rows
        time.sleep(0.01)
    grpc_client.unregister_system_shared_memory()
    assert grpc_client.get_system_shared_memory_status().regions == {}
    with rpc_error(grpc.StatusCode.NOT_FOUND, in_name):
        grpc_client.infer("held", [tensor])
    # Seven more rows complete the batch of 8: the held request runs now.
    rest = rows(7, seed=8)
    filler = tgrpc.InferInput("input", [7, 2], "FP32")
    filler.set_data_from_numpy(rest)
    grpc_client.infer("held", [filler])
    result, error = answers.get(timeout=60)
    assert error is None, error
    want = reference(model_file(shm_server.repository, "held"), x)["logits"]
    np.testing.assert_allclose(made.read(out_handle, np.float32, [1, 2]), want,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert result.get_output("logits").parameters["shared_memory_region"].string_param == out_name
    registry = shm_server.app.service.shm
    assert registry.status() == []
    # The names are free again.
    grpc_client.register_system_shared_memory(in_name, in_key, x.nbytes)


# --- hostile registrations and requests -------------------------------------------


def _register_error(protocol: str, server: InProcessServer, name: str, key: str,
                    byte_size: int, offset: int = 0) -> tuple[str, str]:  # fmt: skip
    """(status, message) of a registration that must fail."""
    try:
        if protocol == "grpc":
            tgrpc.InferenceServerClient(server.url).register_system_shared_memory(
                name, key, byte_size, offset
            )
        else:
            thttp.InferenceServerClient(server.http_url).register_system_shared_memory(
                name, key, byte_size, offset
            )
    except InferenceServerException as exc:
        return str(exc.status()), str(exc.message())
    pytest.fail("the registration succeeded")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    ("case", "code", "fragment"),
    [
        ("no such object", "INVALID_ARGUMENT", "no POSIX shared-memory object"),
        ("outside /dev/shm", "INVALID_ARGUMENT", "not a POSIX shared-memory name"),
        ("oversized byte_size", "INVALID_ARGUMENT", "runs past the end"),
        ("offset past the end", "INVALID_ARGUMENT", "runs past the end"),
        ("duplicate name", "ALREADY_EXISTS", "already registered"),
    ],
)
def test_hostile_registrations_are_refused(
    protocol: str,
    case: str,
    code: str,
    fragment: str,
    shm_server: InProcessServer,
    grpc_client: tgrpc.InferenceServerClient,
    made: Regions,
    repo: Path,
) -> None:
    key, name, _ = made.create(256)
    grpc_client.register_system_shared_memory("taken", key, 256)
    args = {
        "no such object": ("r", "/dlserve-no-such-object", 8),
        "outside /dev/shm": ("r", "/../etc/passwd", 8),
        "oversized byte_size": ("r", key, 257),
        "offset past the end": ("r", key, 8, 300),
        "duplicate name": ("taken", key, 8),
    }[case]
    status, message = _register_error(protocol, shm_server, *args)  # type: ignore[arg-type]
    assert fragment in message, message
    assert status == (f"StatusCode.{code}" if protocol == "grpc" else "400"), (status, message)
    assert [r.name for r in shm_server.app.service.shm.status()] == ["taken"]
    _serves(shm_server, repo)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    ("case", "code", "fragment"),
    [
        ("unknown region", "NOT_FOUND", "no system shared-memory region 'nope'"),
        ("offset past the end", "INVALID_ARGUMENT", "past the end of region"),
        ("byte_size too small", "INVALID_ARGUMENT", "is 16 bytes of FP32, but its"),
        ("output too small", "INVALID_ARGUMENT", "is 12 bytes, but its"),
        ("output past the end", "INVALID_ARGUMENT", "runs past the end of region"),
    ],
)
def test_requests_outside_their_regions_are_refused(
    protocol: str,
    case: str,
    code: str,
    fragment: str,
    shm_server: InProcessServer,
    grpc_client: tgrpc.InferenceServerClient,
    made: Regions,
    repo: Path,
) -> None:
    lib: Any = tgrpc if protocol == "grpc" else thttp
    client: Any = (
        grpc_client if protocol == "grpc" else thttp.InferenceServerClient(shm_server.http_url)
    )
    x = rows(2)
    key, name, _ = made.create(64, x)
    grpc_client.register_system_shared_memory(name, key, 64)
    tensor = lib.InferInput("input", [2, 2], "FP32")
    tensor.set_shared_memory("nope" if case == "unknown region" else name,
                             12 if case == "byte_size too small" else 16,
                             offset=100 if case == "offset past the end" else 0)  # fmt: skip
    out = lib.InferRequestedOutput("logits")
    if case == "output too small":
        out.set_shared_memory(name, 8, offset=32)
    if case == "output past the end":
        out.set_shared_memory(name, 24, offset=48)
    if case == "byte_size too small":
        fragment = "is 16 bytes of FP32, but its shared_memory_byte_size is 12"
    if case == "output too small":
        fragment = "'logits' is 24 bytes, but its shared_memory_byte_size is 8"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("classifier", [tensor], outputs=[out])
    http_code = {"NOT_FOUND": "404", "INVALID_ARGUMENT": "400"}[code]
    assert str(caught.value.status()) == (f"StatusCode.{code}" if protocol == "grpc" else http_code)
    assert fragment in caught.value.message(), caught.value.message()
    _serves(shm_server, repo)


def test_an_object_shrunk_after_registration_is_an_error_not_a_crash(
    shm_server: InProcessServer, grpc_client: tgrpc.InferenceServerClient, made: Regions,
    repo: Path,
) -> None:  # fmt: skip
    key, name, _ = made.create(8192)
    grpc_client.register_system_shared_memory(name, key, 8192)
    Path("/dev/shm", key.lstrip("/")).write_bytes(b"")  # the client shrinks it to 0 bytes
    tensor = tgrpc.InferInput("input", [1, 2], "FP32")
    tensor.set_shared_memory(name, 8, offset=4096)
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "now holds 0 bytes"):
        grpc_client.infer("classifier", [tensor])
    _serves(shm_server, repo)


# --- CUDA shared memory: status and unregister only --------------------------------


def test_cuda_shared_memory_status_and_unregister_answer_register_does_not(
    shm_server: InProcessServer, grpc_client: tgrpc.InferenceServerClient
) -> None:
    assert list(grpc_client.get_cuda_shared_memory_status().regions) == []
    grpc_client.unregister_cuda_shared_memory()
    grpc_client.unregister_cuda_shared_memory("any")
    with rpc_error(grpc.StatusCode.UNIMPLEMENTED, "no CUDA shared memory"):
        grpc_client.register_cuda_shared_memory("c", b"\0" * 64, 0, 64)
    api = Http(shm_server.http_url)
    assert api.json("GET", "/v2/cudasharedmemory/status") == (200, [])
    assert api.request("POST", "/v2/cudasharedmemory/unregister")[0] == 200
    body = {"raw_handle": {"b64": base64.b64encode(b"\0" * 64).decode()}, "device_id": 0,
            "byte_size": 64}  # fmt: skip
    got, headers, data = api.request("POST", "/v2/cudasharedmemory/region/c/register",
                                     json.dumps(body))  # fmt: skip
    assert got == 501 and "no CUDA shared memory" in error_of(got, headers, data)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("POST", "/v2/systemsharedmemory/status", None, 405, "GET"),
        ("GET", "/v2/systemsharedmemory/region/r/register", None, 405, "POST"),
        ("GET", "/v2/systemsharedmemory/region/r", None, 404, "no such path"),
        ("GET", "/v2/systemsharedmemory/region/r/status", None, 404, "'r'"),
        ("POST", "/v2/systemsharedmemory/region/r/register", "[1]", 400, "JSON object"),
        ("POST", "/v2/systemsharedmemory/region/r/register", '{"key": 3, "byte_size": 8}', 400,
         "'key' must be a string"),
        ("POST", "/v2/systemsharedmemory/region/r/register", '{"key": "/k"}', 400,
         "'byte_size' must be"),
        ("POST", "/v2/systemsharedmemory/region/r/register", "{not json", 400, "JSON"),
    ],
)  # fmt: skip
def test_http_route_errors(
    shm_server: InProcessServer, method: str, path: str, body: str | None, status: int,
    fragment: str,
) -> None:  # fmt: skip
    api = Http(shm_server.http_url)
    got, headers, data = api.request(method, path, body)
    assert got == status, data
    assert fragment in error_of(got, headers, data)


# --- off by default ----------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_system_shared_memory_status(),
        lambda c: c.register_system_shared_memory("r", "/k", 8),
        lambda c: c.unregister_system_shared_memory(),
        lambda c: c.get_cuda_shared_memory_status(),
        lambda c: c.unregister_cuda_shared_memory(),
    ],
)
def test_off_the_grpc_calls_are_unavailable_naming_the_flag(
    client: tgrpc.InferenceServerClient, call: Any
) -> None:
    with rpc_error(grpc.StatusCode.UNAVAILABLE, FLAG):
        call(client)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v2/systemsharedmemory/status", None),
        ("GET", "/v2/systemsharedmemory/region/r/status", None),
        ("POST", "/v2/systemsharedmemory/region/r/register", '{"key": "/k", "byte_size": 8}'),
        ("POST", "/v2/systemsharedmemory/unregister", ""),
        ("GET", "/v2/cudasharedmemory/status", None),
    ],
)
def test_off_the_http_routes_are_400_naming_the_flag(
    server: InProcessServer, method: str, path: str, body: str | None
) -> None:
    got, headers, data = Http(server.http_url).request(method, path, body)
    assert got == 400 and FLAG in error_of(got, headers, data)


def test_off_an_infer_naming_a_region_is_refused(server: InProcessServer) -> None:
    tensor = tgrpc.InferInput("input", [1, 2], "FP32")
    tensor.set_shared_memory("r", 8)
    with rpc_error(grpc.StatusCode.UNAVAILABLE, FLAG):
        tgrpc.InferenceServerClient(server.url).infer("classifier", [tensor])
    http_tensor = thttp.InferInput("input", [1, 2], "FP32")
    http_tensor.set_shared_memory("r", 8)
    with pytest.raises(InferenceServerException) as caught:
        thttp.InferenceServerClient(server.http_url).infer("classifier", [http_tensor])
    assert caught.value.status() == "400" and FLAG in caught.value.message()


# --- perf_analyzer --------------------------------------------------------------------


def test_perf_analyzer_with_system_shared_memory(shm_server: InProcessServer,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """perf_analyzer unregisters every region (system and CUDA), registers
    one per input and output, and sends every request by reference."""
    binary, env = find_perf_analyzer()
    command = [
        binary, "-m", "classifier", "-u", shm_server.url, "-i", "grpc", "-b", "4",
        "--shared-memory", "system", "--output-shared-memory-size", "1024",
        "--concurrency-range", "2", "--measurement-interval", "500",
        "--stability-percentage", "100", "--max-trials", "20",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Failed" not in output and "error" not in output.lower(), output
    assert "Concurrency: 2, throughput:" in output, output
    stats = tgrpc.InferenceServerClient(shm_server.url).get_inference_statistics("classifier")
    assert stats.model_stats[0].inference_stats.fail.count == 0
    assert stats.model_stats[0].inference_stats.success.count > 0

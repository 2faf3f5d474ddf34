"""Graceful shutdown of a real ``dlserve serve``: SIGTERM/SIGINT while
clients are sending. Every request the server accepted is answered with
the right numbers, the rest are refused with UNAVAILABLE (never cancelled
half-way or failed with INTERNAL), and the process exits 0.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from devtools.onnx_models import mlp, slow_mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import expected, inflight, outputs, request, rpc_error

CLIENTS = 8
SEED = 21


@dataclass
class Client:
    """One client with its own connection that sends back to back until the
    server refuses it once, as a client that backs off would."""

    url: str
    index: int
    answered: list[tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)
    errors: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    thread: threading.Thread | None = None

    @property
    def ok(self) -> int:
        return len(self.answered)

    def run(self) -> None:
        rng = np.random.default_rng(self.index)
        with grpc.insecure_channel(self.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while True:
                x = rng.uniform(-3, 3, (int(rng.integers(1, 5)), 2)).astype(np.float32)
                try:
                    reply = stub.ModelInfer(request("model", x), timeout=120)
                except grpc.RpcError as error:
                    self.errors.append((error.code(), error.details() or ""))
                    return
                self.answered.append((x, outputs(reply)))

    def wrong_answers(self, reference: ort.InferenceSession) -> list[str]:
        wrong = []
        for x, got in self.answered:
            logits, probabilities = reference.run(["logits", "probabilities"], {"input": x})
            for name, want in (("logits", logits), ("probabilities", probabilities)):
                if not np.allclose(got[name], want, rtol=1e-5, atol=1e-6):
                    wrong.append(f"{name}: {got[name]} != {want}")
        return wrong


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    # Slow enough that requests are always queued and in flight, batched.
    write_model(tmp_path, "model", model=slow_mlp(seed=SEED, matmuls=12, n=384))
    return tmp_path


def start_clients(server: ServerProcess) -> list[Client]:
    clients = [Client(server.url, i) for i in range(CLIENTS)]
    for client in clients:
        client.thread = threading.Thread(target=client.run, daemon=True)
        client.thread.start()
    return clients


def join(clients: list[Client]) -> None:
    for client in clients:
        assert client.thread is not None
        client.thread.join(120)
        assert not client.thread.is_alive(), "a client hung after the server stopped"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_clients_send(repo: Path, sig: int) -> None:
    server = ServerProcess(repo, "--exit-timeout-secs", "30", "--inference-threads", "1")
    with server:
        clients = start_clients(server)
        assert wait_for(lambda: all(c.ok >= 2 for c in clients), timeout=120), [
            (c.ok, c.errors) for c in clients
        ]
        code = server.stop(sig, timeout=90)
        join(clients)
        log = server.log()
    assert code == 0, log[-3000:]
    reference = ort.InferenceSession(
        mlp(seed=SEED).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for client in clients:
        # Everything accepted was answered right; the one refusal is clean.
        assert not client.wrong_answers(reference)
        assert [code for code, _ in client.errors] == [grpc.StatusCode.UNAVAILABLE], (
            client.errors,
            log[-3000:],
        )
    assert "draining" in log and "stopped" in log, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


def test_exit_timeout_bounds_the_drain(tmp_path: Path) -> None:
    """Work that cannot finish within --exit-timeout-secs does not hold the
    process: it exits 0, and the unfinished requests fail cleanly."""
    write_model(tmp_path, "model", model=slow_mlp(seed=SEED, matmuls=300), dynamic_batching=False)
    server = ServerProcess(tmp_path, "--exit-timeout-secs", "1", "--inference-threads", "1")
    with server, grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        x = np.zeros((1, 2), np.float32)
        futures = [stub.ModelInfer.future(request("model", x), timeout=300) for _ in range(6)]
        # Queued and running work far beyond one second.
        assert wait_for(lambda: inflight(server, "model") >= 6, timeout=60)
        code = server.stop(signal.SIGTERM, timeout=60)
        log = server.log()
        results = []
        for future in futures:
            try:
                future.result()
                results.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                results.append(error.code())
    assert code == 0, log[-3000:]
    # Not all of it ran; what was still queued or running at the deadline was
    # refused cleanly. (An answer that cannot be sent within the last half
    # second is cancelled by grpc's stop: allowed, not expected.)
    assert grpc.StatusCode.UNAVAILABLE in results, results
    assert set(results) <= {
        grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED
    }, (results, log[-3000:])  # fmt: skip
    assert "did not drain in time" in log, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


def test_stop_with_nothing_in_flight_exits_zero(tmp_path: Path) -> None:
    write_model(tmp_path, "model", model=mlp(seed=SEED))
    with ServerProcess(tmp_path) as server:
        assert server.stop(signal.SIGTERM, timeout=60) == 0


def test_stop_signals_after_the_drain_keep_exit_code_zero(tmp_path: Path) -> None:
    """An orchestrator may repeat SIGTERM. Once the drain is over ("stopped"
    logged), further signals must not turn exit code 0 into death by signal
    (asyncio restores the default handlers when its loop closes)."""
    import time

    write_model(tmp_path, "model", model=mlp(seed=SEED))
    with ServerProcess(tmp_path) as server:
        proc = server.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stopped" in server.log(), 60), server.log()
        while proc.poll() is None:  # keep signalling through the whole exit
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.0005)
        assert proc.wait(60) == 0, server.log()


# --- the repository API during the drain (probe findings F19, F22) -----------


def explicit_server(repo: Path, *args: str) -> ServerProcess:
    return ServerProcess(repo, "--model-control-mode", "explicit", *args)


def test_a_repository_load_during_the_drain_is_refused(tmp_path: Path) -> None:
    """F19: RepositoryModelLoad while SIGTERM drains requests in flight must
    not reopen the server: the load is refused with UNAVAILABLE, the model
    never becomes ready, no inference after SIGTERM is answered, and the
    requests accepted before it are all answered right; exit code 0."""
    write_model(tmp_path, "slow", model=slow_mlp(seed=SEED, matmuls=300), dynamic_batching=False)
    write_model(tmp_path, "later", model=mlp(seed=3))
    server = explicit_server(
        tmp_path, "--load-model", "slow", "--exit-timeout-secs", "120", "--inference-threads", "1"
    )
    x = np.ones((1, 2), np.float32)
    with server, grpc.insecure_channel(server.url) as channel:
        proc = server.proc
        assert proc is not None
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        client = triton.InferenceServerClient(server.url)
        # Seconds of queued work: the drain lasts while the test asks.
        futures = [stub.ModelInfer.future(request("slow", x), timeout=300) for _ in range(6)]
        assert wait_for(lambda: inflight(server, "slow") >= 6, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "draining" in server.log(), 60), server.log()
        with rpc_error(grpc.StatusCode.UNAVAILABLE, "shutting down"):
            client.load_model("later")
        for model in ("later", "slow"):  # nothing new is answered, loaded or not
            with rpc_error(grpc.StatusCode.UNAVAILABLE):
                stub.ModelInfer(request(model, x), timeout=30)
        # Not vacuous: all this happened while the drain still ran.
        assert not all(f.done() for f in futures), "the drain ended before the test asked"
        client.close()
        code = proc.wait(timeout=120)  # one signal: a second would cancel the drain
        answers = [outputs(f.result()) for f in futures]  # accepted before SIGTERM: answered
        log = server.log()
    assert code == 0, log[-3000:]
    want = expected(SEED, x)
    for got in answers:
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert "model later:1 ready" not in log, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


#: Warm-up runs of the slow-to-load model (slow_mlp: a few tenths of a second each).
WARMUP_RUNS = 30
SLOW_LOAD = f"""
model_warmup [
  {{ name: "long" batch_size: 1 count: {WARMUP_RUNS}
    inputs {{ key: "input" value {{ data_type: TYPE_FP32 dims: [ 2 ] zero_data: true }} }} }}
]
"""


def version_state(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> str:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return next((m.state for m in index.models if m.name == model and m.version == "1"), "")


def test_sigterm_during_a_model_load_does_not_wait_for_it(tmp_path: Path) -> None:
    """F22: a load cannot be interrupted (its warm-up runs in a thread), so
    SIGTERM must not wait for it. The same model's load is timed first;
    then a second load of it is under way when SIGTERM arrives with
    --exit-timeout-secs 1: the process exits 0 sooner than that load could
    have finished, and the model never reported ready a second time."""
    write_model(tmp_path, "slowload", model=slow_mlp(seed=SEED), extra=SLOW_LOAD)
    write_model(tmp_path, "model", model=mlp(seed=SEED))
    server = explicit_server(tmp_path, "--load-model", "model", "--exit-timeout-secs", "1")
    ready_line = "model slowload:1 ready"
    outcome: list[BaseException | None] = []
    with server, grpc.insecure_channel(server.url) as channel:
        proc = server.proc
        assert proc is not None
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        client = triton.InferenceServerClient(server.url)
        started = time.monotonic()
        client.load_model("slowload")
        load_secs = time.monotonic() - started
        assert client.is_model_ready("slowload") and server.log().count(ready_line) == 1
        client.unload_model("slowload")
        assert not client.is_model_ready("slowload")

        def load_again() -> None:
            try:
                triton.InferenceServerClient(server.url).load_model("slowload")
                outcome.append(None)
            except Exception as exc:  # the server went away under it
                outcome.append(exc)

        loader = threading.Thread(target=load_again, daemon=True)
        loader.start()
        assert wait_for(lambda: version_state(stub, "slowload") == "LOADING", 30)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        exit_secs = time.monotonic() - signalled
        client.close()
        loader.join(60)
        log = server.log()
    assert code == 0, log[-3000:]
    assert exit_secs < load_secs, (
        f"SIGTERM took {exit_secs:.1f} s to exit during a load that takes {load_secs:.1f} s: "
        f"it waited for the load\n{log[-3000:]}"
    )
    assert log.count(ready_line) == 1, log[-3000:]  # the second load never finished
    assert outcome and outcome[0] is not None, outcome  # the interrupted load did not succeed
    assert "stopped" in log, log[-3000:]
    assert "Traceback" not in log, log[-5000:]

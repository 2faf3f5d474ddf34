"""Priority levels and queue policies end to end, through tritonclient over
gRPC and HTTP: a slow model (one worker) runs one request at a time, the
test queues others behind it (watching dlserve_queue_depth per priority
level) and checks the order they complete in and each policy's answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from devtools.onnx_models import config_text, slow_mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import inflight, request, rpc_error
from tests.integration.queue_helpers import Requests, infer, queue_depths

POLICIES = {
    # Level 2 (the default) holds at most two queued requests.
    "prio": "priority_levels: 2 default_priority_level: 2 "
    "priority_queue_policy { key: 2 value { max_queue_size: 2 } }",
    "reject": "default_queue_policy { timeout_action: REJECT allow_timeout_override: true }",
    "delay": "default_queue_policy { timeout_action: DELAY allow_timeout_override: true }",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = tmp_path_factory.mktemp("priorities")
    for i, (name, policy) in enumerate(POLICIES.items()):
        config = config_text(name, max_batch_size=1, extra_dynamic=policy)
        config += "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        write_model(repo, name, model=slow_mlp(seed=i, matmuls=160), config=config)
    # One worker per model, so the queue, not parallel runs, decides the order.
    with ServerProcess(repo, env={"SERVING_INFERENCE_THREADS": "1"}) as proc:
        yield proc


def queued(server: ServerProcess, model: str, want: dict[int, float]) -> None:
    assert wait_for(lambda: queue_depths(server, model) == want, timeout=30, interval=0.01), (
        f"queue of {model} never reached {want}: {queue_depths(server, model)}"
    )


def running_alone(server: ServerProcess, model: str) -> None:
    """The blocker has arrived (one request in flight) and runs (none queued)."""
    assert wait_for(
        lambda: inflight(server, model) == 1 and sum(queue_depths(server, model).values()) == 0,
        timeout=30, interval=0.01,
    )  # fmt: skip


def status_of(protocol: str, exc: InferenceServerException) -> str:
    return str(exc.status())


UNAVAILABLE = {"grpc": "StatusCode.UNAVAILABLE", "http": "503"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_higher_priority_overtakes_and_a_full_level_answers_unavailable(
    server: ServerProcess, protocol: str
) -> None:
    requests = Requests(server, protocol, "prio")
    requests.send("blocker")
    running_alone(server, "prio")
    requests.send("low1", priority=2)
    queued(server, "prio", {1: 0, 2: 1})
    requests.send("low2")  # priority 0: the default level, 2
    queued(server, "prio", {1: 0, 2: 2})
    requests.send("high", priority=1)
    queued(server, "prio", {1: 1, 2: 2})  # all three wait behind the blocker
    with pytest.raises(InferenceServerException) as full:
        infer(server, protocol, "prio", priority=2)
    assert status_of(protocol, full.value) == UNAVAILABLE[protocol]
    assert "priority level 2" in full.value.message() and "max_queue_size" in full.value.message()
    requests.join()
    assert requests.errors == {}
    assert requests.done == ["blocker", "high", "low1", "low2"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_rejected_timeout_answers_unavailable_and_others_run(
    server: ServerProcess, protocol: str
) -> None:
    requests = Requests(server, protocol, "reject")
    requests.send("blocker")
    running_alone(server, "reject")
    requests.send("timed", timeout=1000)  # 1 ms: it expires behind the blocker
    queued(server, "reject", {1: 1})
    requests.send("untimed")
    queued(server, "reject", {1: 2})
    requests.join()
    assert set(requests.errors) == {"timed"}, (requests.errors, requests.done)
    error = requests.errors["timed"]
    assert status_of(protocol, error) == UNAVAILABLE[protocol]
    assert "deadline" in error.message()
    # The rejection is answered when the blocker's batch ends, with its answer.
    assert [tag for tag in requests.done if tag != "timed"] == ["blocker", "untimed"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_delayed_timeout_runs_after_the_others(server: ServerProcess, protocol: str) -> None:
    requests = Requests(server, protocol, "delay")
    requests.send("blocker")
    running_alone(server, "delay")
    requests.send("timed", timeout=1000)  # 1 ms: it expires and goes to the back
    queued(server, "delay", {1: 1})
    requests.send("untimed")
    queued(server, "delay", {1: 2})
    requests.join()
    assert requests.errors == {}  # a delayed request still runs
    assert requests.done == ["blocker", "untimed", "timed"]


def test_a_priority_that_is_not_a_whole_number_is_a_clear_bad_request(
    server: ServerProcess,
) -> None:
    message = request("prio", np.zeros((1, 2), np.float32))
    message.parameters["priority"].string_param = "high"
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "parameter 'priority'", "whole number"):
            stub.ModelInfer(message, timeout=30)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}],
        "parameters": {"priority": -1},
    }
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/prio/infer", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(req, timeout=30)
    assert bad.value.code == 400
    assert "parameter 'priority'" in json.loads(bad.value.read())["error"]

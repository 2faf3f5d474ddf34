#!/usr/bin/env python3
"""Fuzzing where the adversarial probe went: requests that must not share a
batch, and stream clients that read slowly or never.

    .venv/bin/python scripts/fuzz_batching.py --requests 50000 [-- SERVE FLAGS]

Hypothesis draws concurrent bursts of requests of random shapes (config dims
of -1, so valid requests differ in their non-batch dims), optional-input
subsets and near misses against models that batch with a queue delay, so the
requests really meet in one batcher. Every request must be answered: a valid
one with the right numbers, a broken one with INVALID_ARGUMENT (UNAVAILABLE /
RESOURCE_EXHAUSTED only where the oracle says so). Streams carry bursts too,
read at random paces; some never read, and the server's RSS must stay bounded
while they hang. At the end every model answers a plain request (no dead
batcher worker) and the log holds no traceback and no event-loop stall.

Self-contained: it imports no test module. The models, the generators, the
oracle and a small server launcher live here, and
``tests/integration/test_fuzz_batching.py`` runs the same generators, bounded,
in ``make test`` (``from scripts import fuzz_batching``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from devtools.onnx_models import slow_nodes  # noqa: E402
from devtools.procs import rss_kb  # noqa: E402
from dlserve.processes import terminate  # noqa: E402
from serving._generated import grpc_service_pb2 as pb  # noqa: E402
from serving._generated import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

IR_VERSION = 10  # what onnxruntime 1.31/1.32 accepts
OPSET = 17

# --- the models -----------------------------------------------------------------
#
#   rowsum        x [-1]                       -> y [1] = sum(x)             batch 16, 20 ms delay
#   rowsum-multi  the same, 4 instances (workers), 5 ms delay
#   pair          x [-1], z [-1]               -> y = sum(x) + sum(z)        batch 16, 20 ms delay
#   biased        x [-1], bias [1] optional     -> y = sum(x) + bias          batch 16, 20 ms delay
#                 (bias is an overridable initializer: DEFAULT_BIAS when omitted)
#   needsbias     like biased, optional: true, but the graph has no default
#   tiled         x [4] -> y [4 * TILE] (x repeated): answers 1024x their request
#   slowsum       rowsum, slow (a chain of matmuls that adds 0), no batching

MAX_BATCH = 16
TILE = 1024
TILED_MAX_BATCH = 64
DEFAULT_BIAS = 100.0
DELAY_US = 20_000
#: Seconds a request may take before it counts as never answered.
REQUEST_TIMEOUT = 20
#: Values are small integers: float32 sums are exact, answers compare equal.
VALUE_RANGE = 8


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: tuple[int, ...]  # without the batch dim; -1 = any
    optional: bool = False
    default: float | None = None  # the graph's value when omitted (None: required)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[InputSpec, ...]
    max_batch: int = MAX_BATCH
    fuzzed: bool = True  # drawn by the generators


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("rowsum", (InputSpec("x", (-1,)),)),
        ModelSpec("rowsum-multi", (InputSpec("x", (-1,)),)),
        ModelSpec("pair", (InputSpec("x", (-1,)), InputSpec("z", (-1,)))),
        ModelSpec("biased", (InputSpec("x", (-1,)), InputSpec("bias", (1,), True, DEFAULT_BIAS))),
        ModelSpec("needsbias", (InputSpec("x", (-1,)), InputSpec("bias", (1,), True))),
        ModelSpec("tiled", (InputSpec("x", (4,)),), max_batch=TILED_MAX_BATCH, fuzzed=False),
        ModelSpec("slowsum", (InputSpec("x", (-1,)),), fuzzed=False),
    )
}


def _finish(nodes: list[Any], inputs: list[Any], inits: list[Any], name: str) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])
    graph = helper.make_graph(nodes, name, inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _vector(name: str, width: int | str = "w") -> Any:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])


def sum_model(names: Sequence[str] = ("x",), bias: str | None = None) -> onnx.ModelProto:
    """y [batch, 1] = the row sums of every input (+ a [batch, 1] ``bias``:
    an overridable initializer of DEFAULT_BIAS when ``bias == "default"``,
    a plain graph input when ``bias == "input"``)."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes, inputs, inits, terms = [], [], [axes], []
    for i, name in enumerate(names):
        inputs.append(_vector(name, f"w{i}"))
        nodes.append(helper.make_node("ReduceSum", [name, "axes"], [f"s{i}"], keepdims=1))
        terms.append(f"s{i}")
    if bias is not None:
        inputs.append(_vector("bias", 1))
        terms.append("bias")
        if bias == "default":  # listed as an input *and* an initializer: overridable
            inits.append(numpy_helper.from_array(np.full((1, 1), DEFAULT_BIAS, np.float32), "bias"))
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [total, term], [f"t{i}"]))
        total = f"t{i}"
    nodes.append(helper.make_node("Identity", [total], ["y"]))
    return _finish(nodes, inputs, inits, "sum")


def tiled_model(repeats: int = TILE) -> onnx.ModelProto:
    """y [batch, 4 * repeats] = x [batch, 4] repeated along its row."""
    reps = numpy_helper.from_array(np.array([1, repeats], np.int64), "reps")
    nodes = [helper.make_node("Tile", ["x", "reps"], ["y"])]
    return _finish(nodes, [_vector("x", 4)], [reps], "tiled")


def slow_sum_model(matmuls: int = 40, n: int = 384) -> onnx.ModelProto:
    """``sum_model()``'s answers, slowly: plus 0 * sum(M^matmuls), where M
    (n x n) depends on the input so it cannot be folded away at load."""
    model = sum_model()
    graph = model.graph
    graph.node[-1].output[0] = "fast_y"
    nodes = slow_nodes(graph, "x", "fast_y", "y", matmuls, n)
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def config_text(
    spec: ModelSpec,
    out_dims: Sequence[int] = (1,),
    delay_us: int | None = DELAY_US,
    instances: int = 1,
) -> str:
    def dims(d: Sequence[int]) -> str:
        return ", ".join(str(x) for x in d)

    inputs = ",\n".join(
        f'  {{ name: "{i.name}" data_type: TYPE_FP32 dims: [ {dims(i.dims)} ]'
        + (" optional: true" if i.optional else "")
        + " }"
        for i in spec.inputs
    )
    text = (
        f'name: "{spec.name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {spec.max_batch}\n'
        f"input [\n{inputs}\n]\n"
        f'output [\n  {{ name: "y" data_type: TYPE_FP32 dims: [ {dims(out_dims)} ] }}\n]\n'
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
    )
    if delay_us is not None:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
    return text


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(config)


def build_repo(repo: Path) -> Path:
    """Every model of MODELS into ``repo`` (Triton's layout)."""
    m = MODELS
    write_model(repo, "rowsum", sum_model(), config_text(m["rowsum"]))
    write_model(
        repo, "rowsum-multi", sum_model(),
        config_text(m["rowsum-multi"], delay_us=5_000, instances=4),
    )  # fmt: skip
    write_model(repo, "pair", sum_model(("x", "z")), config_text(m["pair"]))
    write_model(repo, "biased", sum_model(bias="default"), config_text(m["biased"]))
    write_model(repo, "needsbias", sum_model(bias="input"), config_text(m["needsbias"]))
    write_model(repo, "tiled", tiled_model(), config_text(m["tiled"], (4 * TILE,), delay_us=0))
    write_model(repo, "slowsum", slow_sum_model(), config_text(m["slowsum"], delay_us=None))
    return repo


# --- requests and the oracle ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request and what the server must answer: ``expect`` (the y rows)
    when it is valid, else the status code name ``error``."""

    model: str
    tensors: tuple[tuple[str, str, tuple[int, ...], bytes], ...]  # name, datatype, shape, raw
    expect: np.ndarray | None = None
    error: str | None = None
    why: str = "valid"

    def request(self, request_id: str = "") -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name=self.model, id=request_id)
        for name, datatype, shape, raw in self.tensors:
            r.inputs.add(name=name, datatype=datatype, shape=list(shape))
            r.raw_input_contents.append(raw)
        return r

    @property
    def nbytes(self) -> int:
        return sum(len(t[3]) for t in self.tensors)


def values(seed: int, shape: Sequence[int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-VALUE_RANGE, VALUE_RANGE + 1, size=tuple(shape)).astype(np.float32)


def valid_case(
    model: str, rows: int, widths: dict[str, int], seed: int, omit: Sequence[str] = ()
) -> Case:
    """A valid request: ``widths`` per -1 input; ``omit`` optional inputs left out."""
    spec = MODELS[model]
    tensors, total = [], np.zeros((rows, 1), np.float32)
    for k, i in enumerate(spec.inputs):
        if i.name in omit:
            total += np.float32(i.default if i.default is not None else 0.0)
            continue
        shape = (rows, *(widths.get(i.name, 1) if d == -1 else d for d in i.dims))
        x = values(seed + k, shape)
        tensors.append((i.name, "FP32", shape, x.tobytes()))
        total += x.reshape(rows, -1).sum(axis=1, keepdims=True)
    if model == "tiled":
        x = np.frombuffer(tensors[0][3], np.float32).reshape(rows, 4)
        return Case(model, tuple(tensors), np.tile(x, (1, TILE)))
    return Case(model, tuple(tensors), total)


MUTATIONS = (
    "rows0", "rows over max", "datatype", "missing input", "extra input", "rows disagree",
    "bytes short", "bytes long", "rank", "fixed dim",
)  # fmt: skip


def broken_case(case: Case, how: str, seed: int) -> Case:
    """``case`` with one thing wrong: the server must say INVALID_ARGUMENT."""
    spec = MODELS[case.model]
    tensors = [list(t) for t in case.tensors]
    first = tensors[0]
    rows = first[2][0]
    if how == "rows0":
        first[2] = (0, *first[2][1:])
        first[3] = b""
    elif how == "rows over max":
        n = spec.max_batch + 1
        for t in tensors:
            t[2] = (n, *t[2][1:])
            t[3] = values(seed, t[2]).tobytes()
    elif how == "datatype":
        first[1] = "FP64"
        first[3] = np.frombuffer(first[3], np.float32).astype(np.float64).tobytes()
    elif how == "missing input":
        required = [i.name for i in spec.inputs if i.default is None]
        tensors = [t for t in tensors if t[0] not in required[:1]]
    elif how == "extra input":
        tensors.append(["nope", "FP32", (rows, 1), values(seed, (rows, 1)).tobytes()])
    elif how == "rows disagree":
        if len(tensors) < 2:
            tensors.append(["nope", "FP32", (rows + 1, 1), values(seed, (rows + 1, 1)).tobytes()])
        else:
            t = tensors[-1]
            t[2] = (rows + 1, *t[2][1:])
            t[3] = values(seed, t[2]).tobytes()
    elif how == "bytes short":
        first[3] = first[3][:-4]
    elif how == "bytes long":
        first[3] = first[3] + b"\0\0\0\0"
    elif how == "rank":
        first[2] = (*first[2], 1)
    elif how == "fixed dim":
        fixed = [k for k, t in enumerate(tensors) if -1 not in _dims_of(spec, t[0])]
        k = fixed[0] if fixed else 0
        t = tensors[k]
        t[2] = (rows, t[2][1] + 1) if fixed else (rows,)  # a fixed dim off, or a dim missing
        t[3] = values(seed, t[2]).tobytes()
    else:  # pragma: no cover
        raise ValueError(how)
    return Case(
        case.model,
        tuple((t[0], t[1], tuple(t[2]), t[3]) for t in tensors),
        error="INVALID_ARGUMENT",
        why=how,
    )


def _dims_of(spec: ModelSpec, name: str) -> tuple[int, ...]:
    for i in spec.inputs:
        if i.name == name:
            return i.dims
    return (-1,)


@st.composite
def cases(draw: st.DrawFn, models: Sequence[str] | None = None) -> Case:
    """A request to a variable-dims model: mostly valid, of random rows and
    widths and optional-input subsets; sometimes one thing wrong."""
    names = list(models) if models is not None else [n for n, m in MODELS.items() if m.fuzzed]
    model = draw(st.sampled_from(names))
    spec = MODELS[model]
    rows = draw(st.integers(1, spec.max_batch))
    widths = {i.name: draw(st.integers(1, 8)) for i in spec.inputs if -1 in i.dims}
    omit = [i.name for i in spec.inputs if i.optional and draw(st.booleans())]
    seed = draw(st.integers(0, 2**31))
    case = valid_case(model, rows, widths, seed, omit)
    if any(i.name in omit and i.default is None for i in spec.inputs):
        return Case(model, case.tensors, error="INVALID_ARGUMENT", why="optional, no default")
    if draw(st.integers(0, 4)) == 0:
        return broken_case(case, draw(st.sampled_from(MUTATIONS)), seed)
    return case


def check(case: Case, response: pb.ModelInferResponse | None, code: str, message: str) -> None:
    """Raise AssertionError unless the answer is what ``case`` says."""
    what = f"{case.model} [{case.why}] {[(t[0], t[1], t[2]) for t in case.tensors]}"
    if case.error is not None:
        assert code == case.error, f"{what}: expected {case.error}, got {code}: {message}"
        return
    assert code == "OK" and response is not None, f"{what}: expected OK, got {code}: {message}"
    assert [o.name for o in response.outputs] == ["y"], f"{what}: outputs {response.outputs}"
    got = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert case.expect is not None
    got = got.reshape(list(response.outputs[0].shape))
    assert got.shape == case.expect.shape, f"{what}: shape {got.shape} != {case.expect.shape}"
    assert np.array_equal(got, case.expect), (
        f"{what}: {got.ravel()[:8]} != {case.expect.ravel()[:8]}"
    )


# --- sending ----------------------------------------------------------------------


@dataclass
class Tally:
    codes: Counter[str] = field(default_factory=Counter)
    streamed: int = 0

    @property
    def total(self) -> int:
        return sum(self.codes.values())


def unary_burst(
    stub: pb_grpc.GRPCInferenceServiceStub, burst: Sequence[Case], tally: Tally
) -> None:
    """Send every case at once (they meet in the batchers), check each answer."""
    futures = [
        stub.ModelInfer.future(c.request(str(i)), timeout=REQUEST_TIMEOUT)
        for i, c in enumerate(burst)
    ]
    failures = []
    for case, future in zip(burst, futures, strict=True):
        try:
            response, code, message = future.result(), "OK", ""
        except grpc.RpcError as error:
            response, code, message = None, error.code().name, error.details() or ""
        tally.codes[code] += 1
        try:
            check(case, response, code, message)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures[:10])


def stream_burst(
    stub: pb_grpc.GRPCInferenceServiceStub,
    burst: Sequence[Case],
    tally: Tally,
    pause_s: Sequence[float] = (),
) -> None:
    """Send every case on one stream, read the answers with ``pause_s[k]``
    seconds before the k-th read (a slow reader); every request must be
    answered exactly once, in any order."""
    requests = [c.request(str(i)) for i, c in enumerate(burst)]
    answers = stub.ModelStreamInfer(iter(requests), timeout=2 * REQUEST_TIMEOUT)
    seen: dict[str, pb.ModelStreamInferResponse] = {}
    for k, answer in enumerate(answers):
        rid = answer.infer_response.id
        assert rid not in seen, f"request {rid} answered twice"
        seen[rid] = answer
        if k < len(pause_s) and pause_s[k] > 0:
            time.sleep(pause_s[k])
    assert sorted(seen, key=int) == [str(i) for i in range(len(burst))], sorted(seen)
    failures = []
    for i, case in enumerate(burst):
        answer = seen[str(i)]
        if answer.error_message:
            code = error_code(answer.error_message)
            response = None
        else:
            code, response = "OK", answer.infer_response
        tally.codes[code] += 1
        tally.streamed += 1
        try:
            check(case, response, code, answer.error_message)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures[:10])


def error_code(message: str) -> str:
    """A stream answer carries a message, not a code: the code its wording
    belongs to (the oracle only distinguishes these)."""
    if "over what --max-message-bytes allows" in message:
        return "RESOURCE_EXHAUSTED"
    if "is not ready" in message or ("queued" in message and "limit" in message):
        return "UNAVAILABLE"
    if "internal error" in message or "inference failed" in message:
        return "INTERNAL"
    return "INVALID_ARGUMENT"


class StuckStream:
    """A ModelStreamInfer client that sends one request as fast as
    the server reads them and never reads an answer. ``sent`` counts the
    requests grpc has taken; ``close()`` cancels the stream.

    With ``server_pid``, it stops sending once that process's RSS has grown
    by ``max_growth_kb`` (``over_limit`` is then True): a server without
    backpressure would otherwise take the host's memory."""

    def __init__(
        self,
        channel: grpc.Channel,
        rows: int = TILED_MAX_BATCH,
        server_pid: int | None = None,
        max_growth_kb: int = 1024 * 1024,
        request_id: str = "",
        case: Case | None = None,
    ) -> None:
        """``request_id``: every request's id (the server echoes it in each
        answer it holds); ``case``: the request it repeats instead of a
        ``tiled`` one of ``rows`` rows."""
        self._stop = threading.Event()
        self.sent = 0
        self.over_limit = False
        self._pid = server_pid
        self._limit_kb = max_growth_kb + (rss_kb(server_pid) if server_pid else 0)
        self._request = (case or valid_case("tiled", rows, {}, 0)).request(request_id)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        self._call = stub.ModelStreamInfer(self._requests(), timeout=600)

    def _requests(self) -> Iterator[pb.ModelInferRequest]:
        while not self._stop.is_set():
            if self._pid and self.sent % 32 == 0 and rss_kb(self._pid) > self._limit_kb:
                self.over_limit = True
                return
            self.sent += 1
            yield self._request

    @property
    def open(self) -> bool:
        """The call has not ended: the server neither failed nor closed it."""
        return not self._call.done()

    def close(self) -> None:
        self._stop.set()
        self._call.cancel()


# --- a server for long runs (tests use devtools.serverproc) -------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``dlserve serve`` on 127.0.0.1 with the loop watchdog on."""

    def __init__(self, repo: Path, *args: str, log: Path) -> None:
        self.grpc_port, self.metrics_port = free_port(), free_port()
        self.url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log
        command = [
            sys.executable, "-m", "dlserve", "serve", "--model-repository", str(repo),
            "--host", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), *args,
        ]  # fmt: skip
        env = {"PYTHONUNBUFFERED": "1", "SERVING_LOOP_WATCHDOG_MS": "100", **os.environ}
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with grpc.insecure_channel(self.url) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not serving after 120 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        code = terminate(self.proc, 60)
        self._log.close()
        return code


def ready_models(stub: pb_grpc.GRPCInferenceServiceStub) -> set[str]:
    return {
        name
        for name in MODELS
        if stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=30).ready
    }


def expect_unready(case: Case, ready: set[str]) -> Case:
    """A model that failed to load answers UNAVAILABLE to everything."""
    if case.model in ready:
        return case
    return Case(case.model, case.tensors, error="UNAVAILABLE", why="model not ready")


def assert_every_model_answers(stub: pb_grpc.GRPCInferenceServiceStub, ready: set[str]) -> None:
    """No dead batcher worker: each ready model answers a plain request."""
    for name in sorted(ready):
        spec = MODELS[name]
        widths = {i.name: 3 for i in spec.inputs}
        case = valid_case(name, 2, widths, 7)
        response = stub.ModelInfer(case.request(), timeout=60)
        check(case, response, "OK", "")


#: What grpc's cython layer logs (ERROR, with a traceback) when a client
#: cancels a stream while an answer is being written: the client's doing,
#: counted and reported but not a failure.
CANCELLED_WRITE = "ExecuteBatchError raised in core by servicer method"


def log_problems(log: str) -> tuple[str, int]:
    """Tracebacks (whole) and event-loop stall lines of a server log, and
    how many CANCELLED_WRITE tracebacks it holds (left out of the first)."""
    out: list[str] = []
    known = 0
    lines = log.splitlines()
    k = 0
    while k < len(lines):
        line = lines[k]
        if "event loop blocked for" in line:
            out.append(line)
        if CANCELLED_WRITE in line or line.startswith("Traceback"):
            end = k + 1
            while end < len(lines) and not lines[end][:4].isdigit():  # up to the next record
                end += 1
            if CANCELLED_WRITE in line:
                known += 1
            elif not (k and CANCELLED_WRITE in lines[k - 1]):
                out.extend(lines[max(k - 1, 0) : end])
            k = end
            continue
        k += 1
    return "\n".join(out[:200]), known


# --- the long run -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from hypothesis import HealthCheck, Phase, given, settings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=50_000, help="requests to send in all")
    p.add_argument("--burst", type=int, default=24, help="requests in flight per example")
    p.add_argument("--stuck", type=int, default=4, help="streams that never read, held open")
    p.add_argument(
        "--rss-growth-mb", type=int, default=600,
        help="most the server's RSS may grow over the run (MiB)",
    )  # fmt: skip
    p.add_argument(
        "--shrink", action="store_true",
        help="shrink a failing burst (slow; meaningless once a worker has died)",
    )  # fmt: skip
    p.add_argument("serve_args", nargs="*", help="extra `dlserve serve` flags (after --)")
    args = p.parse_args(argv)
    phases = list(Phase) if args.shrink else [Phase.explicit, Phase.generate]

    with tempfile.TemporaryDirectory(prefix="dlserve-fuzz-batching-") as tmp:
        repo = build_repo(Path(tmp) / "repo")
        server = Server(repo, *args.serve_args, log=Path(tmp) / "server.log")
        tally, started = Tally(), time.monotonic()
        try:
            with grpc.insecure_channel(server.url) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                ready = ready_models(stub)
                print(f"models ready: {sorted(ready)}; not ready: {sorted(set(MODELS) - ready)}")
                assert_every_model_answers(stub, ready)
                base_kb = rss_kb(server.proc.pid)
                stuck = [
                    StuckStream(
                        grpc.insecure_channel(server.url), server_pid=server.proc.pid,
                        max_growth_kb=args.rss_growth_mb * 1024,
                    )
                    for _ in range(args.stuck)
                ]  # fmt: skip
                peak_kb = [base_kb]

                @settings(
                    max_examples=max(1, args.requests // args.burst), deadline=None,
                    database=None, suppress_health_check=list(HealthCheck), phases=phases,
                    report_multiple_bugs=False,
                )  # fmt: skip
                @given(
                    st.lists(cases(), min_size=args.burst, max_size=args.burst),
                    st.sampled_from(["unary", "unary", "stream", "slow stream"]),
                    st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.01]), max_size=8),
                )
                def example(burst: list[Case], how: str, pauses: list[float]) -> None:
                    burst = [expect_unready(c, ready) for c in burst]
                    if how == "unary":
                        unary_burst(stub, burst, tally)
                    else:
                        stream_burst(stub, burst, tally, pauses if how == "slow stream" else ())
                    peak_kb[0] = max(peak_kb[0], rss_kb(server.proc.pid))
                    if tally.total % (args.burst * 200) < args.burst:
                        print(
                            f"{tally.total} requests, {time.monotonic() - started:.0f} s, "
                            f"RSS {peak_kb[0] // 1024} MiB: {dict(tally.codes)}",
                            flush=True,
                        )

                example()
                for s in stuck:
                    s.close()
                assert not any(s.over_limit for s in stuck), (
                    f"a stream that never reads grew the server's RSS past {args.rss_growth_mb} MiB"
                )
                assert_every_model_answers(stub, ready)
                growth_mb = (peak_kb[0] - base_kb) / 1024
                assert growth_mb < args.rss_growth_mb, (
                    f"server RSS grew {growth_mb:.0f} MiB (limit {args.rss_growth_mb})"
                )
        except Exception as exc:  # hypothesis has printed the shrunk example
            print(f"fuzz_batching: FAIL after {tally.total} requests: {exc!r}"[:4000],
                  file=sys.stderr)  # fmt: skip
            server.stop()
            return 1
        server.stop()
        problems, cancelled_writes = log_problems(server.log())
        if problems:
            print("fuzz_batching: FAIL: the server log has:\n" + problems, file=sys.stderr)
            return 1
    print(
        f"fuzz_batching: {tally.total} requests ({tally.streamed} on streams) in "
        f"{time.monotonic() - started:.0f} s, all answered within the contract: "
        f"{dict(tally.codes)}; peak RSS growth {(peak_kb[0] - base_kb) // 1024} MiB; "
        f"{cancelled_writes} grpc ExecuteBatchError tracebacks from cancelled streams"
    )
    return 0


#: What ``cases()`` can be asked for by a caller that runs its own server.
__all__ = [
    "MODELS", "Case", "StuckStream", "Tally", "assert_every_model_answers", "build_repo",
    "cases", "check", "expect_unready", "ready_models", "rss_kb", "stream_burst",
    "unary_burst", "valid_case",
]  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())

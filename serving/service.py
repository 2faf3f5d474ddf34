"""The data plane: find the model, validate, batch, shape the answer.

Transport-agnostic: takes an ``InferRequest`` and returns an
``InferResponse``; the gRPC layer decodes and encodes around it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from serving.batcher import BatchResult
from serving.errors import InvalidInput, ResourceExhausted
from serving.manager import LoadedVersion, ModelManager
from serving.metrics import Metrics
from serving.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

_now = time.perf_counter
#: Bytes of a response message left for everything but tensor data.
RESPONSE_HEADROOM = 4096


@dataclass(slots=True)
class Pending:
    """A request that passed validation and waits in its model's batcher."""

    loaded: LoadedVersion
    request: InferRequest
    rows: int
    started: float
    prep: float
    future: asyncio.Future[BatchResult]


class InferenceService:
    """``infer`` for callers that await; ``begin``/``finish`` for callers that
    prefer a callback on the batcher's future (the stream handler), so a
    request costs no task of its own."""

    def __init__(
        self, manager: ModelManager, metrics: Metrics, max_response_bytes: int = 0
    ) -> None:
        """``max_response_bytes``: answers whose tensor data is within 4 KiB of
        it (room for the message's other fields) fail with RESOURCE_EXHAUSTED
        instead of breaking the transport (0: no limit)."""
        self.manager = manager
        self.metrics = metrics
        self._max_payload = max_response_bytes - RESPONSE_HEADROOM if max_response_bytes else 0

    async def infer(
        self, request: InferRequest, started: float, deadline: float | None = None
    ) -> InferResponse:
        """``started`` is when the transport received the request (perf_counter
        seconds); ``deadline`` the perf_counter time after which it is dropped."""
        pending = self.begin(request, started, deadline)
        try:
            await pending.future
        except BaseException:
            self.finish(pending)
            raise
        return self.finish(pending)

    def begin(
        self, request: InferRequest, started: float, deadline: float | None = None
    ) -> Pending:
        """Look up, validate and queue; raises ServingError for a bad request.
        A ``timeout`` request parameter (microseconds, the schedule-policy
        extension) tightens the deadline."""
        loaded = self.manager.get(request.model_name, request.model_version)
        if request.parameters:
            deadline = _with_timeout(request.parameters.get("timeout"), started, deadline)
        signature = loaded.signature
        if request.outputs:
            signature.check_outputs(request.outputs)
        feeds, rows = signature.validate(request.inputs)
        future = loaded.batcher.submit(feeds, rows, deadline)
        if loaded.metrics is not None:
            loaded.metrics.inflight.inc()
        return Pending(loaded, request, rows, started, _now() - started, future)

    def finish(self, pending: Pending) -> InferResponse:
        """The response of a request whose future is done (raises its error)."""
        loaded = pending.loaded
        m = loaded.metrics
        if m is not None:
            m.inflight.dec()
        future = pending.future
        if future.cancelled() or future.exception() is not None:
            loaded.stats.record_failure(_now() - pending.started)
            future.result()  # raises the ServingError (or CancelledError)
        result = future.result()
        post_start = _now()
        outputs = self._outputs(loaded, pending.request.outputs, result)
        if self._max_payload:
            self._check_size(outputs, pending)
        done = _now()
        total = done - pending.started
        loaded.stats.record_success(
            pending.rows, total, pending.prep, result.queue_seconds, result.compute_seconds,
            done - post_start,
        )  # fmt: skip
        if m is not None:
            m.request.observe(total)
            m.queue.observe(result.queue_seconds)
            m.compute.observe(result.compute_seconds)
            m.ok.inc()
        request = pending.request
        return InferResponse(request.model_name, loaded.version_str, outputs, request.id)

    def _check_size(self, outputs: tuple[Tensor, ...], pending: Pending) -> None:
        size = 0
        for tensor in outputs:
            data = tensor.data
            if data.dtype == np.object_:
                size += sum(4 + len(x) for x in data.flat)
            else:
                size += data.nbytes
        if size > self._max_payload:
            pending.loaded.stats.record_failure(_now() - pending.started)
            raise ResourceExhausted(
                f"the response holds {size} bytes of tensor data, over what "
                f"--max-message-bytes allows ({self._max_payload + RESPONSE_HEADROOM} bytes "
                "per message); ask for fewer rows or outputs per request"
            )

    @staticmethod
    def _outputs(
        loaded: LoadedVersion, requested: tuple[RequestedOutput, ...], result: BatchResult
    ) -> tuple[Tensor, ...]:
        arrays = result.outputs
        index = loaded.output_index
        specs = loaded.signature.outputs
        batching = loaded.signature.batching
        if not requested:
            return tuple(
                Tensor(name, specs[name].datatype, arrays[i].shape, arrays[i])
                for name, i in index.items()
            )
        out = []
        for req in requested:
            array = arrays[index[req.name]]
            if req.class_count > 0:
                out.append(_classify(req, array, specs[req.name].labels, batching))
            else:
                out.append(Tensor(req.name, specs[req.name].datatype, array.shape, array))
        return tuple(out)


def _with_timeout(timeout: object, started: float, deadline: float | None) -> float | None:
    if timeout is None:
        return deadline
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise InvalidInput(
            f"parameter 'timeout' must be a whole number of microseconds >= 0, got {timeout!r}"
        )
    if timeout == 0:  # no timeout, as in Triton
        return deadline
    own = started + timeout / 1e6
    return own if deadline is None else min(deadline, own)


def _classify(
    req: RequestedOutput, array: np.ndarray, labels: tuple[str, ...] | None, batching: bool
) -> Tensor:
    """Triton's classification extension: the top ``class_count`` entries of
    each row as "score:index[:label]" strings."""
    rows = array.reshape(array.shape[0], -1) if batching else array.reshape(1, -1)
    k = min(req.class_count, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    strings = []
    for r, row in enumerate(top):
        for idx in row:
            score = rows[r, idx]
            label = labels[idx] if labels is not None and idx < len(labels) else None
            strings.append((f"{score:f}:{idx}:{label}" if label else f"{score:f}:{idx}").encode())
    data = np.array(strings, dtype=np.object_)
    shape = (rows.shape[0], k) if batching else (k,)
    return Tensor(req.name, "BYTES", shape, data.reshape(shape))

"""The data plane: find the model, validate, batch, shape the answer.

Transport-agnostic: takes an ``InferRequest`` and returns an
``InferResponse``; the gRPC layer decodes and encodes around it.
"""

from __future__ import annotations

import time

import numpy as np

from serving.batcher import BatchResult
from serving.manager import LoadedVersion, ModelManager
from serving.metrics import Metrics
from serving.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

_now = time.perf_counter


class InferenceService:
    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    async def infer(
        self, request: InferRequest, started: float, deadline: float | None = None
    ) -> InferResponse:
        """``started`` is when the transport received the request (perf_counter
        seconds); ``deadline`` the perf_counter time after which it is dropped."""
        loaded = self.manager.get(request.model_name, request.model_version)
        signature = loaded.signature
        if request.outputs:
            signature.check_outputs(request.outputs)
        feeds, rows = signature.validate(request.inputs)
        prep = _now() - started
        m = loaded.metrics
        if m is not None:
            m.inflight.inc()
        try:
            result = await loaded.batcher.submit(feeds, rows, deadline)
        except BaseException:
            loaded.stats.record_failure(_now() - started)
            raise
        finally:
            if m is not None:
                m.inflight.dec()
        post_start = _now()
        outputs = self._outputs(loaded, request.outputs, result)
        done = _now()
        total = done - started
        loaded.stats.record_success(
            rows, total, prep, result.queue_seconds, result.compute_seconds, done - post_start
        )
        if m is not None:
            m.request.observe(total)
            m.queue.observe(result.queue_seconds)
            m.compute.observe(result.compute_seconds)
            m.ok.inc()
        return InferResponse(request.model_name, loaded.version_str, outputs, request.id)

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

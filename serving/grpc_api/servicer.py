"""The KServe V2 / Triton ``GRPCInferenceService``: decode -> service ->
encode. Errors become statuses through ``status.status_of`` only."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from google.protobuf.message import DecodeError

from dlserve import __version__
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from serving.errors import InvalidInput, ServingError
from serving.grpc_api import codec
from serving.grpc_api.status import status_of
from serving.manager import ModelManager
from serving.repository import datatype_of
from serving.service import InferenceService, Pending

logger = logging.getLogger(__name__)
_now = time.perf_counter
_CANCELLED, _INTERNAL = grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL

SERVICE_NAME = "inference.GRPCInferenceService"
#: Methods whose handlers take the raw request bytes and parse them themselves.
RAW_REQUEST_METHODS = frozenset({"ModelInfer"})
_parse_infer_request = pb.ModelInferRequest.FromString

#: Protocol extensions this server implements (ServerMetadata.extensions).
EXTENSIONS = (
    "classification",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "statistics",
)

T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]]


def _rpc(method: Handler[T]) -> Handler[T]:
    """Map ServingError to its status; anything else is INTERNAL, logged once."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(status_of(exc), exc.message)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        service: InferenceService,
        manager: ModelManager,
        *,
        stream_window: int = 64,
        stream_window_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.service = service
        self.manager = manager
        self._window = stream_window
        self._window_bytes = stream_window_bytes
        self.metrics = service.metrics
        self.ready = False

    # -- health and metadata -------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.manager.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="dlserve", version=__version__, extensions=list(EXTENSIONS)
        )

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        loaded = self.manager.get(request.name, request.version)
        entry = self.manager.entry(request.name)
        config = loaded.config
        batch = [-1] if config.max_batch_size > 0 else []
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[v.version_str for v in entry.ready_versions()],
            platform=config.platform,
            inputs=[
                meta(name=i.name, datatype=datatype_of(i.data_type), shape=[*batch, *i.dims])
                for i in config.input
            ],
            outputs=[
                meta(name=o.name, datatype=datatype_of(o.data_type), shape=[*batch, *o.dims])
                for o in config.output
            ],
        )

    @_rpc
    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        loaded = self.manager.get(request.name, request.version)
        return pb.ModelConfigResponse(config=loaded.config)

    @_rpc
    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        version = ""
        if request.name:  # NOT_FOUND / UNAVAILABLE; "01" means version 1
            version = self.manager.get(request.name, request.version).version_str
        stats = []
        for name, entry in sorted(self.manager.models.items()):
            if request.name and name != request.name:
                continue
            for loaded in entry.ready_versions():
                if request.version and loaded.version_str != version:
                    continue
                stats.append(_statistics(loaded))
        return pb.ModelStatisticsResponse(model_stats=stats)

    # -- repository ----------------------------------------------------------

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        models = []
        for name, entry in sorted(self.manager.models.items()):
            if not entry.versions:
                if not request.ready:
                    models.append(index(name=name, state="UNAVAILABLE", reason=entry.reason))
                continue
            for version, status in sorted(entry.versions.items()):
                if request.ready and status.state != "READY":
                    continue
                models.append(
                    index(
                        name=name,
                        version=str(version),
                        state=status.state,
                        reason=status.reason or entry.reason,
                    )
                )
        return pb.RepositoryIndexResponse(models=models)

    @_rpc
    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        if request.parameters:
            raise InvalidInput(
                "RepositoryModelLoad parameters (config or file overrides) are not supported; "
                "change the files in the repository instead"
            )
        await self.manager.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.manager.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -----------------------------------------------------------

    async def ModelInfer(
        self,
        request: pb.ModelInferRequest | bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ModelInferResponse:
        """Registered with no request deserializer (``RAW_REQUEST_METHODS``):
        the body is parsed here, so a body that is not a message is a clean
        INVALID_ARGUMENT without a wrapper on the hot path."""
        started = _now()
        if type(request) is bytes:
            try:
                request = _parse_infer_request(request)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    undecodable_message(f"/{SERVICE_NAME}/ModelInfer", str(exc)),
                )
        assert isinstance(request, pb.ModelInferRequest)
        try:
            remaining = context.time_remaining()
            deadline = started + remaining if remaining is not None else None
            response = await self.service.infer(codec.decode_request(request), started, deadline)
            return codec.encode_response(response)
        except ServingError as exc:
            code = status_of(exc)
            self._count_failure(request.model_name, request.model_version, code)
            await context.abort(code, exc.message)
        except asyncio.CancelledError:
            self._count_failure(request.model_name, request.model_version, _CANCELLED)
            raise
        except Exception:
            logger.exception("ModelInfer failed")
            self._count_failure(request.model_name, request.model_version, _INTERNAL)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        raise AssertionError("unreachable")  # pragma: no cover

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Bidirectional stream: requests run concurrently, answers go back as
        they finish; a failed request is answered with ``error_message`` and the
        stream stays open. Each request is validated and queued as it is read,
        and answered from a callback on its batcher future: no task per request.

        Backpressure: at most ``stream_window`` requests are read and not yet
        sent (in flight or answered and waiting), and at most
        ``stream_window_bytes`` of answers wait; past either the server stops
        reading, so a client that never reads holds a bounded amount."""
        out: collections.deque[tuple[pb.ModelStreamInferResponse, int]] = collections.deque()
        ready = asyncio.Event()  # out has an item, or the stream is finished
        room = asyncio.Event()  # under both windows again
        room.set()
        service = self.service
        window, window_bytes = self._window, self._window_bytes
        unsent = 0  # read and not yet yielded
        unsent_bytes = 0
        reading = True

        def answer(item: pb.ModelStreamInferResponse | None, nbytes: int = 0) -> None:
            nonlocal unsent, unsent_bytes
            if item is None:  # no answer will be sent for this request
                unsent -= 1
            else:
                unsent_bytes += nbytes
                out.append((item, nbytes))
            ready.set()

        def fail(head: tuple[str, str, str], exc: Exception) -> pb.ModelStreamInferResponse:
            if isinstance(exc, ServingError):
                self._count_failure(head[0], head[1], status_of(exc))
                return _stream_error(head, exc.message)
            logger.error("ModelStreamInfer request failed", exc_info=exc)
            self._count_failure(head[0], head[1], grpc.StatusCode.INTERNAL)
            return _stream_error(head, "internal error (see the server log)")

        def done(pending: Pending, head: tuple[str, str, str]) -> None:
            try:
                response = codec.encode_response(service.finish(pending))
            except asyncio.CancelledError:
                answer(None)  # the stream is gone
                return
            except Exception as exc:
                answer(fail(head, exc))
                return
            size = 0
            for content in response.raw_output_contents:
                size += len(content)
            answer(pb.ModelStreamInferResponse(infer_response=response), size)

        async def read() -> None:
            nonlocal unsent, reading
            iterator = request_iterator.__aiter__()
            try:
                while True:
                    while unsent >= window or unsent_bytes >= window_bytes:
                        room.clear()
                        await room.wait()
                    try:
                        request = await iterator.__anext__()
                    except StopAsyncIteration:
                        return
                    unsent += 1
                    # Keep only what an answer needs, never the whole message.
                    head = (request.model_name, request.model_version, request.id)
                    try:
                        pending = service.begin(codec.decode_request(request), _now())
                    except Exception as exc:
                        answer(fail(head, exc))
                        continue
                    del request
                    pending.future.add_done_callback(
                        lambda _, p=pending, h=head: done(p, h)  # type: ignore[misc]
                    )
            finally:
                reading = False
                ready.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                if out:
                    item, nbytes = out.popleft()
                    yield item
                    unsent -= 1
                    unsent_bytes -= nbytes
                    if unsent < window and unsent_bytes < window_bytes:
                        room.set()
                    continue
                if not reading and unsent == 0:
                    break  # every request read was answered
                ready.clear()
                await ready.wait()
        finally:
            reader.cancel()

    # -- protocol features this server does not offer ------------------------

    async def _unimplemented(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "dlserve does not implement shared-memory, trace or log-settings RPCs; "
            "send tensors in the request (raw_input_contents)",
        )

    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = (
        _unimplemented
    )
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _unimplemented
    TraceSetting = LogSettings = _unimplemented

    def _count_failure(self, model_name: str, model_version: str, code: grpc.StatusCode) -> None:
        if self.metrics.enabled:
            model, version = self.manager.metric_labels(model_name, model_version)
            self.metrics.count(model, version, code.name)


def undecodable_message(method: str, reason: str) -> str:
    return f"{method}: the request body is not a valid protobuf message ({reason[:200]})"


def _stream_error(head: tuple[str, str, str], message: str) -> pb.ModelStreamInferResponse:
    model_name, model_version, request_id = head
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=model_name, model_version=model_version, id=request_id
        ),
    )



def _duration(d: Any) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _statistics(loaded: Any) -> pb.ModelStatistics:
    s = loaded.stats
    return pb.ModelStatistics(
        name=loaded.model,
        version=loaded.version_str,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=pb.StatisticDuration(count=d.count, ns=0),
                compute_infer=_duration(d),
                compute_output=pb.StatisticDuration(count=d.count, ns=0),
            )
            for size, d in sorted(s.batches.items())
        ],
    )

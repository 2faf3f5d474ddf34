"""The KServe V2 / Triton ``GRPCInferenceService``: every RPC is decode ->
``InferenceService`` -> encode. Errors become statuses through
``status.to_status`` only; the service counts every inference outcome, this
module only the requests that fail before reaching it (undecodable tensors)."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError

from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from serving.errors import ServingError
from serving.grpc_api import codec, settings_rpc, shm_rpcs
from serving.grpc_api.status import to_status
from serving.service import InferenceService, Pending
from serving.shm import ShmRequest
from serving.stats import VersionStatistics

logger = logging.getLogger(__name__)
_now = time.perf_counter

SERVICE_NAME = "inference.GRPCInferenceService"
#: Methods whose handlers take the raw request bytes and parse them
#: themselves, and return their answer serialized.
RAW_METHODS = frozenset({"ModelInfer"})
_parse_infer_request = pb.ModelInferRequest.FromString

T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]]


def _rpc(method: Handler[T]) -> Handler[T]:
    """Map ServingError to its status; anything else is INTERNAL, logged once."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(to_status(exc), exc.message)
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
        *,
        stream_window: int = 64,
        stream_window_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.service = service
        self._window = stream_window
        self._window_bytes = stream_window_bytes

    # -- health and metadata -------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.live())

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.server_ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        meta = self.service.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=list(meta.extensions)
        )

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        meta = self.service.model_metadata(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    @_rpc
    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(
            config=self.service.model_config(request.name, request.version)
        )

    @_rpc
    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        stats = self.service.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(s) for s in stats])

    # -- repository ----------------------------------------------------------

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=row.name, version=row.version, state=row.state, reason=row.reason)
                for row in self.service.repository_index(request.ready)
            ]
        )

    @_rpc
    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self.service.load_model(request.model_name, dict(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.service.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -----------------------------------------------------------

    async def ModelInfer(  # type: ignore[override]  # bytes out: see RAW_METHODS
        self,
        request: pb.ModelInferRequest | bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bytes:
        """Registered with no request deserializer and no response serializer
        (``RAW_METHODS``): the body is parsed here, so a body that is not a
        message is a clean INVALID_ARGUMENT without a wrapper on the hot path,
        and the answer leaves serialized (``codec.serialize_response``). The
        shared-memory regions the request uses are held until its answer is
        written."""
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
        shm = ShmRequest(self.service.shm)
        try:
            try:
                decoded = codec.decode_request(request, shm)
            except Exception as exc:
                await self._refuse(request, exc, context)
            remaining = context.time_remaining()
            deadline = started + remaining if remaining is not None else None
            tracing = self.service.tracing
            trace = (
                tracing.start_grpc(decoded.model_name, "grpc", context.invocation_metadata(),
                                   started) if tracing.on else None
            )  # fmt: skip
            try:
                service = self.service
                response = await service.answer(service.begin(decoded, started, deadline, trace))
                reply = codec.serialize_response(response, shm)
            except ServingError as exc:  # counted by the service; an output too big for its
                # shared-memory region fails in encode, after it counted the answer
                if trace is not None:
                    trace.fail(exc)  # a no-op when the service already ended it
                await context.abort(to_status(exc), exc.message)
            if trace is not None:
                trace.end()
            return reply
        finally:
            shm.release()

    async def _refuse(
        self, request: pb.ModelInferRequest, exc: Exception, context: Any
    ) -> NoReturn:
        """A request whose tensors do not decode: counted here, since it
        never reaches the service."""
        self.service.record_failure(request.model_name, request.model_version, exc)
        if isinstance(exc, ServingError):
            await context.abort(to_status(exc), exc.message)
        logger.error("ModelInfer request could not be decoded", exc_info=exc)
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
        tracing = service.tracing
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
                return _stream_error(head, exc.message)
            logger.error("ModelStreamInfer request failed", exc_info=exc)
            return _stream_error(head, "internal error (see the server log)")

        def done(pending: Pending, head: tuple[str, str, str], shm: ShmRequest) -> None:
            try:
                response = codec.encode_response(service.finish(pending), shm)
                if pending.trace is not None:
                    pending.trace.end()
            except asyncio.CancelledError:
                answer(None)  # the stream is gone
                return
            except Exception as exc:
                answer(fail(head, exc))
                return
            finally:
                shm.release()
            size = len(response.id.encode())  # its tensors and its id wait to be sent
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
                    shm = ShmRequest(service.shm)
                    try:
                        decoded = codec.decode_request(request, shm)
                    except Exception as exc:  # never reaches the service: counted here
                        shm.release()
                        service.record_failure(head[0], head[1], exc)
                        answer(fail(head, exc))
                        continue
                    now = _now()
                    trace = (
                        tracing.start_grpc(head[0], "grpc_stream", context.invocation_metadata(),
                                           now) if tracing.on else None
                    )  # fmt: skip
                    try:
                        pending = service.begin(decoded, now, None, trace)
                    except Exception as exc:  # counted by the service
                        shm.release()
                        answer(fail(head, exc))
                        continue
                    del request
                    pending.future.add_done_callback(
                        lambda _, p=pending, h=head, m=shm: done(p, h, m)  # type: ignore[misc]
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

    # -- shared memory (serving.grpc_api.shm_rpcs) ----------------------------

    SystemSharedMemoryStatus = _rpc(shm_rpcs.system_status)  # type: ignore[assignment]
    SystemSharedMemoryRegister = _rpc(shm_rpcs.system_register)  # type: ignore[assignment]
    SystemSharedMemoryUnregister = _rpc(shm_rpcs.system_unregister)  # type: ignore[assignment]
    CudaSharedMemoryStatus = _rpc(shm_rpcs.cuda_status)  # type: ignore[assignment]
    CudaSharedMemoryRegister = _rpc(shm_rpcs.cuda_register)  # type: ignore[assignment]
    CudaSharedMemoryUnregister = _rpc(shm_rpcs.cuda_unregister)  # type: ignore[assignment]

    # -- trace and logging extensions -----------------------------------------

    @_rpc
    async def TraceSetting(self, request: Any, context: Any) -> pb.TraceSettingResponse:
        return settings_rpc.trace_setting(self.service, request)

    @_rpc
    async def LogSettings(self, request: Any, context: Any) -> pb.LogSettingsResponse:
        return settings_rpc.log_settings(self.service, request)


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


def _statistics(version: VersionStatistics) -> pb.ModelStatistics:
    s = version.stats
    return pb.ModelStatistics(
        name=version.name,
        version=version.version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            **{field: _duration(d) for field, d in s.inference_stats().items()}
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

"""The data plane: every KServe V2 operation, transport-agnostic.

Inference: find the version (``versions.ReadyTable``), validate, answer from
the response cache (``serving.response_cache``) or batch,
shape the answer. Health, metadata, config, statistics and repository
control answer plain dataclasses. Transports (gRPC today) decode, call one
method, encode; they never reach the manager. This module imports no grpc.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from dlserve import __version__
from serving._generated import model_config_pb2 as mc
from serving.batch_jobs import BatchResult
from serving.errors import InvalidInput, ResourceExhausted, ServingError, code_name
from serving.log_settings import LogSettings
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.outputs import outputs as _outputs
from serving.recorder import failure_labels
from serving.repository import datatype_of
from serving.response_cache import ResponseCache
from serving.shm import SharedMemoryRegistry
from serving.stats import VersionStatistics
from serving.tensors import InferRequest, InferResponse, RequestedOutput, Tensor
from serving.tracing import RequestTrace, Tracing, disabled
from serving.versions import IndexEntry, LoadedVersion

_now = time.perf_counter
#: Protocol extensions this server implements (ServerMetadata.extensions).
EXTENSIONS = (
    "classification",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "statistics",
    "trace",
    "logging",
)
#: Listed too when clients may use shared memory (--allow-client-shm). Not
#: cuda_shared_memory: CUDA regions cannot be registered here.
SHM_EXTENSIONS = ("system_shared_memory",)
#: Bytes of a response message left for everything but tensor data.
RESPONSE_HEADROOM = 4096


@dataclass(slots=True)
class Pending:
    """A request that passed validation and waits in its model's batcher.
    It keeps what its answer needs, not the request message."""

    loaded: LoadedVersion
    model_name: str
    request_id: str
    outputs: tuple[RequestedOutput, ...]
    rows: int
    started: float
    prep: float
    future: asyncio.Future[BatchResult]
    #: Response cache: a miss's key (its answer is stored), a hit's answer,
    #: and the seconds the lookup took.
    cache_key: bytes | None = None
    cached: tuple[Tensor, ...] | None = None
    lookup: float = 0.0
    trace: RequestTrace | None = None


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """An input or output; ``shape`` has -1 for the batch and dynamic dims."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """ModelMetadata of a model: its ready versions and its tensors."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The server's name, release and protocol extensions."""

    name: str
    version: str
    extensions: tuple[str, ...]


class InferenceService:
    """Every KServe V2 operation, for any transport: plain values in and
    out, ``ServingError`` for every failure, and each inference request
    counted once (``VersionRecorder``) whatever its outcome.

    Inference is ``begin`` (look up, validate, queue) and then either
    ``answer`` for callers that await, or ``finish`` from a callback on the
    batcher's future (the stream handler), so a request costs no task of
    its own."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        extensions: tuple[str, ...] = EXTENSIONS,
        max_response_bytes: int = 0,
        cache: ResponseCache | None = None,
        shm: SharedMemoryRegistry | None = None,
        tracing: Tracing | None = None,
        logs: LogSettings | None = None,
    ) -> None:
        """``max_response_bytes``: answers whose tensor data is within 4 KiB of
        it (room for the message's other fields) fail with RESOURCE_EXHAUSTED
        instead of breaking the transport (0: no limit). ``cache``: the
        response cache of versions with a ``cache_token``."""
        self._manager = manager
        self._table = manager.table
        self._metrics = metrics
        self._extensions = extensions
        self._cache = cache
        self._max_payload = max_response_bytes - RESPONSE_HEADROOM if max_response_bytes else 0
        #: System shared-memory regions (serving.shm), shared by the transports.
        self.shm = shm if shm is not None else SharedMemoryRegistry(enabled=False)
        #: Set by the composition root once every transport listens.
        self.ready = False
        #: Trace settings and sampling (the trace extension); ``tracing.on``
        #: is the transports' one check per request.
        self.tracing = tracing if tracing is not None else disabled()
        #: Log settings at run time (the logging extension).
        self.logs = logs if logs is not None else LogSettings()

    # -- health and metadata -------------------------------------------------

    def live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self.ready

    def model_ready(self, name: str, version: str = "") -> bool:
        return self._table.is_ready(name, version)

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("dlserve", __version__, self._extensions)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        loaded = self._table.get(name, version)
        config = loaded.config
        batch = (-1,) if config.max_batch_size > 0 else ()
        return ModelMetadata(
            name=name,
            versions=tuple(v.version_str for v in self._manager.serving(name)),
            platform=config.platform,
            inputs=tuple(
                TensorMetadata(i.name, datatype_of(i.data_type), (*batch, *i.dims))
                for i in config.input
            ),
            outputs=tuple(
                TensorMetadata(o.name, datatype_of(o.data_type), (*batch, *o.dims))
                for o in config.output
            ),
        )

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self._table.get(name, version).config

    def statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """Every serving version's, or one model's, or one version's; a
        version spelled "01" is version 1, as in inference."""
        if not name:
            return [_stats_of(v) for v in self._manager.serving()]
        selected = self._table.get(name, version).version_str  # NOT_FOUND / UNAVAILABLE
        return [
            _stats_of(v) for v in self._manager.serving(name)
            if not version or v.version_str == selected
        ]  # fmt: skip

    # -- repository ----------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self._manager.index(ready_only)

    async def load_model(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        if parameters:
            raise InvalidInput(
                "RepositoryModelLoad parameters (config or file overrides) are not supported; "
                "change the files in the repository instead"
            )
        await self._manager.load_model(name)

    async def unload_model(self, name: str) -> None:
        await self._manager.unload_model(name)

    # -- inference -----------------------------------------------------------

    async def answer(self, pending: Pending) -> InferResponse:
        """The awaitable form: wait for a request ``begin`` queued, then
        ``finish`` it."""
        try:
            await pending.future
        except BaseException:
            self.finish(pending)
            raise
        return self.finish(pending)

    def begin(
        self,
        request: InferRequest,
        started: float,
        deadline: float | None = None,
        trace: RequestTrace | None = None,
    ) -> Pending:
        """Look up, validate and queue; raises ServingError for a bad request.
        ``started`` is when the transport received the request (perf_counter
        seconds); ``deadline`` the perf_counter time after which it is
        dropped; ``trace`` its trace when sampled (the transport ends it once
        encoded). The ``priority`` and ``timeout`` (microseconds) request parameters
        of the schedule-policy extension go to the model's queue policy."""
        try:
            loaded = self._table.get(request.model_name, request.model_version)
        except ServingError as exc:
            self.record_failure(request.model_name, request.model_version, exc)
            if trace is not None:
                trace.fail(exc)
            raise
        try:
            priority = timeout = 0
            if request.parameters:
                priority, timeout = _schedule(request.parameters)
            signature = loaded.signature
            if request.outputs:
                signature.check_outputs(request.outputs)
            feeds, rows = signature.validate(request.inputs)
            key, lookup = None, 0.0
            if loaded.cache_token and self._cache is not None:  # hits skip the batcher
                key, cached, lookup = self._cache.lookup(loaded, request)
                if cached is not None:
                    return _hit(loaded, request, started, cached, lookup, trace)
            if trace is not None:
                trace.enqueued = _now()
            # the id waits with it (Pending keeps it for the answer), in UTF-8 bytes
            held = len(request.id.encode())
            future = loaded.batcher.submit(feeds, rows, deadline, priority, timeout, held)
        except ServingError as exc:
            loaded.recorder.failure(code_name(exc))
            if trace is not None:
                trace.fail(exc, loaded.version_str)
            raise
        loaded.recorder.started()
        return Pending(loaded, request.model_name, request.id, request.outputs, rows, started,
                       _now() - started, future, key, None, lookup, trace)  # fmt: skip

    def finish(self, pending: Pending) -> InferResponse:
        """The response of a request whose future is done (raises its error)."""
        loaded = pending.loaded
        if pending.cached is not None:
            loaded.recorder.cache_hit(_now() - pending.started, pending.lookup)
            return InferResponse(pending.model_name, loaded.version_str, pending.cached,
                                 pending.request_id)  # fmt: skip
        try:
            result = pending.future.result()
        except BaseException as exc:  # the ServingError, or CancelledError
            loaded.recorder.failure(code_name(exc), _now() - pending.started)
            if pending.trace is not None:
                pending.trace.fail(exc, loaded.version_str)
            raise
        post_start = _now()
        outputs = _outputs(loaded, pending.outputs, result)
        if self._max_payload:
            try:
                _check_size(outputs, self._max_payload)
            except ServingError as exc:
                loaded.recorder.failure(code_name(exc), _now() - pending.started)
                if pending.trace is not None:
                    pending.trace.fail(exc, loaded.version_str)
                raise
        if pending.cache_key is not None and self._cache is not None:
            stored = _now()
            self._cache.insert(pending.cache_key, loaded.cache_token, outputs)
            loaded.recorder.cache_miss(pending.lookup + _now() - stored)
        done = _now()
        trace = pending.trace
        if trace is not None:
            trace.computed(loaded.version_str, pending.rows, result, post_start)
        loaded.recorder.success(
            pending.rows, done - pending.started, pending.prep, result.queue_seconds,
            result.compute_seconds, done - post_start, trace.trace_id if trace else None,
        )  # fmt: skip
        return InferResponse(pending.model_name, loaded.version_str, outputs, pending.request_id)

    def record_failure(self, model_name: str, model_version: str, exc: BaseException) -> None:
        """Count a request that failed before it reached a serving version
        (or in the transport), under labels bounded to the repository."""
        if not self._metrics.enabled:
            return
        loaded = self._table.lookup(model_name, model_version)
        if loaded is not None:
            loaded.recorder.failure(code_name(exc))
            return
        model, version = failure_labels(
            self._manager.known_versions, self._manager.default_version, model_name,
            model_version,
        )  # fmt: skip
        self._metrics.count(model, version, code_name(exc))


def _hit(loaded: LoadedVersion, request: InferRequest, started: float, cached: tuple[Tensor, ...],
         lookup: float, trace: RequestTrace | None) -> Pending:  # fmt: skip
    """A request answered from the cache: its future is done already, so
    ``finish`` (or a done callback) answers it on the spot."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return Pending(loaded, request.model_name, request.id, request.outputs, 0, started, 0.0,
                   future, None, cached, lookup, trace)  # fmt: skip


def _stats_of(loaded: LoadedVersion) -> VersionStatistics:
    return VersionStatistics(loaded.model, loaded.version_str, loaded.recorder.stats)


def _check_size(outputs: tuple[Tensor, ...], limit: int) -> None:
    size = 0
    for tensor in outputs:
        data = tensor.data
        if data.dtype == np.object_:
            size += sum(4 + len(x) for x in data.flat)
        else:
            size += data.nbytes
    if size > limit:
        raise ResourceExhausted(
            f"the response holds {size} bytes of tensor data, over what "
            f"--max-message-bytes allows ({limit + RESPONSE_HEADROOM} bytes per message); "
            "ask for fewer rows or outputs per request"
        )


def _schedule(parameters: Mapping[str, object]) -> tuple[int, int]:
    """The ``priority`` and ``timeout`` parameters, each a whole number >= 0."""
    values = []
    for key, unit in (("priority", ""), ("timeout", " of microseconds")):
        value = parameters.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(
                f"parameter {key!r} must be a whole number{unit} >= 0, got {value!r}"
            )
        values.append(value)
    return values[0], values[1]

"""The models being served: loading, readiness, versions, and repository
control (none / explicit / poll).

Every state change happens on the event loop; the slow part of a load
(creating the onnxruntime session, the warm-up run) runs in a thread. The
request path reads one dict (``_ready``) keyed by (model, version string).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from serving import repository
from serving._generated import model_config_pb2 as mc
from serving.batcher import DynamicBatcher
from serving.errors import (
    FailedPrecondition,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ServingError,
    ShuttingDown,
)
from serving.metrics import Metrics, VersionMetrics
from serving.runtime import OnnxRuntime
from serving.settings import ServingSettings
from serving.stats import VersionStats
from serving.tensors import DTYPE_BY_DATATYPE
from serving.validation import ModelSignature, OutputSpec, TensorSpec

logger = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"

#: Longest model name accepted from a request; longer ones are unknown.
MAX_NAME_LENGTH = 256


@dataclass
class LoadedVersion:
    """One model version that is serving, with everything the request path needs."""

    model: str
    version: int
    version_str: str
    config: mc.ModelConfig
    runtime: OnnxRuntime
    signature: ModelSignature
    batcher: DynamicBatcher
    metrics: VersionMetrics | None
    stats: VersionStats
    #: Output name -> index in the runtime's outputs.
    output_index: dict[str, int]
    fingerprint: tuple[int, int]


@dataclass
class VersionStatus:
    version: int
    state: str
    reason: str = ""
    loaded: LoadedVersion | None = None
    fingerprint: tuple[int, int] | None = None
    #: The file (mtime, size) that last failed to load: not retried until it
    #: changes or the config does.
    failed_fingerprint: tuple[int, int] | None = None


@dataclass
class ModelEntry:
    name: str
    path: Path
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    #: Why the model as a whole cannot load (bad config, no versions).
    reason: str = ""
    config_digest: str = ""
    #: True once it was loaded (explicit mode: until unloaded).
    wanted: bool = True

    def ready_versions(self) -> list[LoadedVersion]:
        return [
            s.loaded
            for _, s in sorted(self.versions.items())
            if s.state == READY and s.loaded is not None
        ]


class ModelManager:
    def __init__(
        self,
        settings: ServingSettings,
        metrics: Metrics,
        executor: concurrent.futures.Executor,
    ) -> None:
        self.settings = settings
        self.root = settings.model_repository
        self.metrics = metrics
        self.executor = executor
        self.models: dict[str, ModelEntry] = {}
        self._ready: dict[tuple[str, str], LoadedVersion] = {}
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        #: Set by ``drain``: every new request is refused with UNAVAILABLE.
        self._draining = False
        #: time.monotonic() of the last request refused while draining.
        self.last_refusal = 0.0

    # -- request path --------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedVersion:
        loaded = self._ready.get((name, version))
        if loaded is not None:
            return loaded
        return self._explain(name, version)

    def _explain(self, name: str, version: str) -> LoadedVersion:
        if self._draining:
            self.last_refusal = time.monotonic()
            raise ShuttingDown("the server is shutting down; retry on another replica")
        entry = self.models.get(name) if len(name) <= MAX_NAME_LENGTH else None
        if entry is None:
            raise ModelNotFound(f"unknown model '{name[:MAX_NAME_LENGTH]}'")
        if version:
            # ASCII digits only: str.isdigit() and int() also accept other
            # scripts' digits ("１"), which are no version folder name.
            if not (version.isascii() and version.isdigit()) or len(version) > 18:
                raise ModelNotFound(
                    f"model '{name}' has no version '{version[:32]}': "
                    "versions are positive integers"
                )
            status = entry.versions.get(int(version))
            if status is None:
                raise ModelNotFound(
                    f"model '{name}' has no version {version}; "
                    f"versions: {sorted(entry.versions) or 'none'}"
                )
            if status.state == READY and status.loaded is not None:
                return status.loaded  # the same number written differently ("01")
            raise ModelNotReady(
                f"model '{name}' version {version} is not ready ({status.state.lower()}"
                + (f": {status.reason}" if status.reason else "")
                + ")"
            )
        reasons = entry.reason or "; ".join(
            f"version {v}: {s.reason or s.state.lower()}" for v, s in sorted(entry.versions.items())
        )
        raise ModelNotReady(f"model '{name}' is not ready ({reasons or 'not loaded'})")

    def metric_labels(self, name: str, version: str) -> tuple[str, str]:
        """Labels for a failed request: bounded to known models and versions."""
        entry = self.models.get(name)
        if entry is None:
            return "", ""
        if (
            version.isascii() and version.isdigit() and len(version) <= 18
            and int(version) in entry.versions
        ):  # fmt: skip
            return name, str(int(version))
        if not version:  # the version the request would have run on
            default = self._ready.get((name, ""))
            if default is not None:
                return name, default.version_str
        return name, ""

    def is_ready(self, name: str, version: str = "") -> bool:
        return (name, version) in self._ready

    def ready_keys(self) -> Iterable[tuple[str, str]]:
        return self._ready.keys()

    def entry(self, name: str) -> ModelEntry:
        entry = self.models.get(name) if len(name) <= MAX_NAME_LENGTH else None
        if entry is None:
            raise ModelNotFound(f"unknown model '{name[:MAX_NAME_LENGTH]}'")
        return entry

    # -- loading -------------------------------------------------------------

    async def start(self, load: Iterable[str] | None = None) -> None:
        """Load the repository: everything (modes none and poll) or the named
        models (explicit mode; '*' = all). Starts polling in poll mode."""
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a folder")
        mode = self.settings.model_control_mode
        names: set[str] | None = None
        if mode == "explicit":
            requested = set(load or ())
            names = None if "*" in requested else requested
        await self.sync(only=names, add_missing=True)
        if mode == "explicit" and names:
            unknown = names.difference(self.models)
            if unknown:
                raise ModelLoadError(f"--load-model names unknown model(s) {sorted(unknown)}")
        if mode == "explicit":
            # The index lists every model in the repository, loaded or not.
            sources = await asyncio.get_running_loop().run_in_executor(
                None, repository.scan, self.root
            )
            for name, source in sources.items():
                if name not in self.models:
                    self.models[name] = ModelEntry(
                        name, source.path, reason="not loaded (RepositoryModelLoad loads it)",
                        wanted=False,
                    )  # fmt: skip
        if mode == "poll":
            self._poll_task = asyncio.ensure_future(self._poll())

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop taking requests (new ones get UNAVAILABLE, ModelReady is
        false) and wait until every queued and running one has finished.
        After ``timeout`` seconds what is still queued is failed with
        UNAVAILABLE. Returns whether everything finished in time."""
        await self._stop_polling()
        async with self._lock:  # no load or unload half-way
            self._draining = True
            self._ready = {}  # the request path now always goes to _explain
            serving = [
                (entry, status)
                for entry in self.models.values()
                for status in entry.versions.values()
                if status.loaded is not None
            ]
            # Requests take their version and queue in one step on the event
            # loop, so from here on the batchers only shrink.
            closing = {
                asyncio.ensure_future(status.loaded.batcher.close(drain=True)): (entry, status)
                for entry, status in serving
                if status.loaded is not None
            }
            done, late = await asyncio.wait(closing, timeout=timeout) if closing else ((), ())
            for task in late:
                task.cancel()
                entry, status = closing[task]
                assert status.loaded is not None
                logger.warning("model %s:%d did not drain in time; failing what is queued",
                               entry.name, status.version)  # fmt: skip
                await status.loaded.batcher.close(drain=False)
            for entry, status in serving:
                loaded = status.loaded
                assert loaded is not None
                status.state, status.reason, status.loaded = UNAVAILABLE, "server shut down", None
                self.metrics.set_ready(
                    entry.name, loaded.version_str, loaded.runtime.provider, False
                )
            return not late

    async def _stop_polling(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
            self._poll_task = None

    async def stop(self) -> None:
        await self._stop_polling()
        await asyncio.gather(
            *(self._unload(entry, status) for entry in list(self.models.values())
              for status in list(entry.versions.values()) if status.loaded is not None)
        )  # fmt: skip

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.sync(add_missing=True)
            except Exception:
                logger.exception("repository poll failed")

    async def load_model(self, name: str) -> None:
        """RepositoryModelLoad: (re)load one model from disk (explicit mode)."""
        self._require_explicit("load")
        # A request's name is never a path: one plain component, and only
        # one that a scan of the repository lists.
        if not _plain_name(name) or not _is_model_folder(self.root, name):
            raise ModelNotFound(f"model '{name[:MAX_NAME_LENGTH]}' is not in the repository")
        await self.sync(only={name}, add_missing=True, force=True)
        entry = self.models[name]
        if not entry.ready_versions():
            raise ModelLoadError(
                f"failed to load model '{name}': "
                + (entry.reason or "; ".join(
                    f"version {v}: {s.reason}" for v, s in sorted(entry.versions.items())
                ) or "no version folder with a model file")
            )  # fmt: skip

    async def unload_model(self, name: str) -> None:
        self._require_explicit("unload")
        entry = self.entry(name)
        async with self._lock:
            entry.wanted = False
            await asyncio.gather(
                *(self._unload(entry, s) for s in list(entry.versions.values()) if s.loaded)
            )
            for status in entry.versions.values():
                status.state, status.reason = UNAVAILABLE, "unloaded"
            self._rebuild()

    def _require_explicit(self, what: str) -> None:
        if self.settings.model_control_mode != "explicit":
            raise FailedPrecondition(
                f"model {what} is not allowed with --model-control-mode "
                f"{self.settings.model_control_mode}; start the server with "
                "--model-control-mode explicit"
            )

    async def sync(
        self, only: set[str] | None = None, add_missing: bool = True, force: bool = False
    ) -> None:
        """Bring loaded state in line with the disk: new models and versions
        load, removed ones unload, changed configs and files reload. A version
        that fails to load never replaces one that serves."""
        async with self._lock:
            try:
                sources = await asyncio.get_running_loop().run_in_executor(
                    None, repository.scan, self.root
                )
            except OSError as exc:
                raise ModelLoadError(f"cannot read model repository {self.root}: {exc}") from exc
            names = set(sources) | set(self.models)
            if only is not None:
                names &= only | set()
            for name in sorted(names):
                source = sources.get(name)
                entry = self.models.get(name)
                if source is None:
                    if entry is not None:
                        await self._remove(entry)
                    continue
                if entry is None:
                    if not add_missing:
                        continue
                    entry = self.models[name] = ModelEntry(name, source.path)
                elif not entry.wanted and not force:
                    continue
                entry.wanted = True
                await self._sync_model(entry, source, force)
            self._rebuild()

    async def _remove(self, entry: ModelEntry) -> None:
        logger.info("model '%s' left the repository; unloading", entry.name)
        for status in list(entry.versions.values()):
            if status.loaded is not None:
                await self._unload(entry, status)
            self.metrics.forget_version(entry.name, str(status.version))
        del self.models[entry.name]

    async def _sync_model(
        self, entry: ModelEntry, source: repository.ModelSource, force: bool
    ) -> None:
        digest = _config_digest(source)
        config_changed = digest != entry.config_digest
        entry.config_digest = digest
        if source.config_error:
            entry.reason = source.config_error
            if not entry.ready_versions():
                for status in entry.versions.values():
                    status.state, status.reason = UNAVAILABLE, source.config_error
            else:  # a broken edit never takes down the versions that serve
                logger.error("model '%s': %s (keeping the loaded versions)", entry.name,
                             source.config_error)  # fmt: skip
            return
        entry.reason = ""
        available = {v: p for v, p in source.versions.items()}
        fingerprints = {v: _fingerprint(p) for v, p in available.items()}
        retry = force or config_changed

        def known_bad(v: int) -> bool:
            """Not serving, and these very bytes already failed to load."""
            status = entry.versions.get(v)
            return (
                not retry and status is not None and status.loaded is None
                and status.failed_fingerprint == fingerprints[v]
            )  # fmt: skip

        def needs_load(v: int) -> bool:
            status = entry.versions.get(v)
            if status is None or retry:
                return True
            if status.failed_fingerprint == fingerprints[v]:
                return False  # a reload of these bytes failed; the old load serves
            return status.loaded is None or status.fingerprint != fingerprints[v]

        # A version that fails drops out of the choice, so the version policy
        # falls back to the next one (which may already serve).
        failed = {v for v in available if known_bad(v)}
        attempted: set[int] = set()
        while True:
            wanted = repository.select_versions(
                source.config, [v for v in available if v not in failed]
            )
            to_load = [v for v in wanted if v not in attempted and needs_load(v)]
            if not to_load:
                break
            for version in to_load:
                attempted.add(version)
                ok = await self._load(entry, source, version, available[version],
                                      fingerprints[version])  # fmt: skip
                if not ok and entry.versions[version].loaded is None:
                    failed.add(version)
        if not available:
            entry.reason = f"no version folder holds {source.model_file_name}"
        wanted_set = set(wanted)
        for version, status in list(entry.versions.items()):
            if version in wanted_set or version in failed and version in available:
                continue
            if status.loaded is not None:
                await self._unload(entry, status)
            if version not in available:
                self.metrics.forget_version(entry.name, str(version))
                del entry.versions[version]

    async def _load(
        self,
        entry: ModelEntry,
        source: repository.ModelSource,
        version: int,
        path: Path,
        fingerprint: tuple[int, int],
    ) -> bool:
        label = f"{entry.name}:{version}"
        previous = entry.versions.get(version)
        if previous is None or previous.loaded is None:
            entry.versions[version] = VersionStatus(version, LOADING, fingerprint=fingerprint)
        loop = asyncio.get_running_loop()
        try:
            runtime, config, signature, index = await loop.run_in_executor(
                None, self._prepare, source, path, label
            )
        except Exception as exc:
            if isinstance(exc, ServingError):
                reason = exc.message
                logger.error("model %s failed to load: %s", label, reason)
            else:  # a bug or an unexpected file problem: never fatal
                reason = f"{type(exc).__name__}: {exc}"
                logger.exception("model %s failed to load", label)
            if previous is not None and previous.loaded is not None:
                previous.reason = f"reload failed, still serving the previous load: {reason}"
                previous.failed_fingerprint = fingerprint
                return False
            entry.versions[version] = VersionStatus(
                version, UNAVAILABLE, reason, fingerprint=fingerprint,
                failed_fingerprint=fingerprint,
            )  # fmt: skip
            self.metrics.set_ready(entry.name, str(version), "", False)
            return False
        loaded = self._activate(entry.name, version, runtime, config, signature, index, fingerprint)
        entry.versions[version] = VersionStatus(version, READY, "", loaded, fingerprint)
        self.metrics.set_ready(entry.name, str(version), runtime.provider, True)
        logger.info("model %s ready on %s (max_batch_size %d, dynamic batching %s)", label,
                    runtime.provider, config.max_batch_size,
                    "on" if config.HasField("dynamic_batching") else "off")  # fmt: skip
        if previous is not None and previous.loaded is not None:
            self._rebuild()  # new requests go to the new load, then the old one drains
            await self._retire(entry.name, previous.loaded)
        return True

    def _prepare(
        self, source: repository.ModelSource, path: Path, label: str
    ) -> tuple[OnnxRuntime, mc.ModelConfig, ModelSignature, dict[str, int]]:
        """The slow part of a load, in a worker thread."""
        s = self.settings
        runtime = OnnxRuntime(
            path, device=s.device, intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads, label=label,
        )  # fmt: skip
        config = repository.complete_config(source, runtime.inputs, runtime.outputs)
        config.parameters["execution_provider"].string_value = runtime.provider
        kind = mc.ModelInstanceGroup.KIND_GPU if "CUDA" in runtime.provider else (
            mc.ModelInstanceGroup.KIND_CPU)  # fmt: skip
        for group in config.instance_group:
            group.kind = kind
        batching = config.max_batch_size > 0
        inputs = [
            TensorSpec(i.name, repository.datatype_of(i.data_type), tuple(i.dims), i.optional)
            for i in config.input
        ]
        outputs = []
        for o in config.output:
            labels = (
                tuple(repository.read_labels(source, o.label_filename))
                if o.label_filename else None
            )  # fmt: skip
            outputs.append(OutputSpec(o.name, repository.datatype_of(o.data_type),
                                      tuple(o.dims), labels))  # fmt: skip
        signature = ModelSignature(source.name, config.max_batch_size, inputs, outputs)
        graph_index = {info.name: i for i, info in enumerate(runtime.outputs)}
        index = {o.name: graph_index[o.name] for o in config.output}
        # Warm-up: one row of zeros through the graph, so the first request
        # does not pay for lazy initialisation; a model that cannot run fails here.
        feeds = {}
        for spec in inputs:
            dims = [1 if d == -1 else d for d in spec.dims]
            shape = [1, *dims] if batching else dims
            feeds[spec.name] = np.zeros(shape, dtype=DTYPE_BY_DATATYPE[spec.datatype])
        try:
            runtime.run(feeds)
        except ServingError as exc:
            raise ModelLoadError(f"warm-up inference failed: {exc.message}") from exc
        return runtime, config, signature, index

    def _activate(
        self,
        name: str,
        version: int,
        runtime: OnnxRuntime,
        config: mc.ModelConfig,
        signature: ModelSignature,
        index: dict[str, int],
        fingerprint: tuple[int, int],
    ) -> LoadedVersion:
        version_str = str(version)
        metrics = self.metrics.for_version(name, version_str) if self.metrics.enabled else None
        stats = VersionStats()
        batch_hist = metrics.batch_size if metrics is not None else None

        def on_batch(rows: int, compute: float) -> None:
            stats.record_batch(rows, compute)
            if batch_hist is not None:
                batch_hist.observe(rows)

        db = config.dynamic_batching if config.HasField("dynamic_batching") else None
        queue_size = self.settings.max_queue_size
        if db is not None and db.default_queue_policy.max_queue_size > 0:
            queue_size = db.default_queue_policy.max_queue_size
        workers = sum(max(g.count, 1) for g in config.instance_group) or 1
        batcher = DynamicBatcher(
            runtime.run,
            max_batch_size=config.max_batch_size,
            batching=db is not None,
            max_queue_delay=(db.max_queue_delay_microseconds / 1e6) if db is not None else 0.0,
            preferred_batch_sizes=list(db.preferred_batch_size) if db is not None else (),
            max_queue_size=queue_size,
            max_queue_bytes=self.settings.max_queue_bytes,
            workers=max(workers, self.settings.inference_threads),
            executor=self.executor,
            on_batch=on_batch,
            name=f"{name}:{version}",
        )
        return LoadedVersion(name, version, version_str, config, runtime, signature, batcher,
                             metrics, stats, index, fingerprint)  # fmt: skip

    async def _retire(self, name: str, loaded: LoadedVersion) -> None:
        await loaded.batcher.close(drain=True)

    async def _unload(self, entry: ModelEntry, status: VersionStatus) -> None:
        loaded = status.loaded
        if loaded is None:
            return
        status.state, status.reason, status.loaded = UNLOADING, "", None
        self._rebuild()  # no new requests; queued ones still finish
        await loaded.batcher.close(drain=True)
        status.state, status.reason = UNAVAILABLE, "unloaded"
        self.metrics.set_ready(entry.name, loaded.version_str, loaded.runtime.provider, False)
        logger.info("model %s:%d unloaded", entry.name, status.version)

    def _rebuild(self) -> None:
        ready: dict[tuple[str, str], LoadedVersion] = {}
        for name, entry in self.models.items():
            versions = entry.ready_versions()
            for loaded in versions:
                ready[(name, loaded.version_str)] = loaded
            if versions:
                ready[(name, "")] = versions[-1]
        self._ready = ready


def _plain_name(name: str) -> bool:
    return bool(name) and len(name) <= MAX_NAME_LENGTH and repository.is_plain_name(name)


def _is_model_folder(root: Path, name: str) -> bool:
    try:
        return (root / name).is_dir()
    except (OSError, ValueError):  # name too long for the file system, and the like
        return False


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def _config_digest(source: repository.ModelSource) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in source.path.iterdir() if p.is_file()):
        if name == repository.CONFIG_FILE or name.endswith(".txt"):
            try:
                h.update(name.encode() + b"\0" + (source.path / name).read_bytes())
            except OSError:
                pass
    return h.hexdigest()

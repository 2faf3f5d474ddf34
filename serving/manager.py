"""The models being served: reconciling the repository on disk with what is
loaded (modes none / explicit / poll), and every version's lifecycle
(load, replace, unload, drain).

Every state change happens on the event loop under one lock; the slow part
of a load runs in a thread (``VersionLoader.prepare``). The request path
never comes here: it reads ``table`` (``versions.ReadyTable``), which this
manager rebuilds on every change. Callers read the models through views
(``index``, ``model_view``, ``serving``), never its dicts.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable, Iterable

from serving import ensemble, errors, repository
from serving.changes import ChangeTracker
from serving.errors import ModelLoadError, ModelNotFound, ServingError
from serving.files import is_model_folder
from serving.loader import VersionLoader
from serving.metrics import Metrics
from serving.settings import ServingSettings
from serving.threads import in_thread
from serving.versions import (
    MAX_NAME_LENGTH,
    IndexEntry,
    LoadedVersion,
    ModelEntry,
    ReadyTable,
    VersionState,
    VersionStatus,
)

logger = logging.getLogger(__name__)

READY, UNAVAILABLE = VersionState.READY, VersionState.UNAVAILABLE
LOADING, UNLOADING = VersionState.LOADING, VersionState.UNLOADING


class ModelManager:
    def __init__(self, settings: ServingSettings, loader: VersionLoader, metrics: Metrics) -> None:
        self.settings = settings
        self.root = settings.model_repository
        self.loader = loader
        self.metrics = metrics
        self._models: dict[str, ModelEntry] = {}
        self.table = ReadyTable(self._models, metrics.set_ready)
        loader.steps = self.table  # ensembles run their steps through it
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        #: What changed on disk since the last look: stat first, digests only of changed files.
        self._changes = ChangeTracker()
        #: Loads in flight (their threads cannot be interrupted): drain stops waiting for them.
        self._stopping = False
        self.on_retire: Callable[[LoadedVersion], None] = lambda loaded: None  # a load retired

    # -- views ---------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows = []
        for name, entry in sorted(self._models.items()):
            if not entry.versions:
                if not ready_only:
                    rows.append(IndexEntry(name, "", UNAVAILABLE.value, entry.reason))
                continue
            for version, status in sorted(entry.versions.items()):
                if ready_only and not status.serving:
                    continue
                state, reason = status.row()  # an ensemble may wait on a step
                rows.append(IndexEntry(name, str(version), state, reason or entry.reason))
        return rows

    def model_view(self, name: str) -> ModelEntry:
        entry = self._models.get(name) if len(name) <= MAX_NAME_LENGTH else None
        if entry is None:
            raise ModelNotFound(f"unknown model '{name[:MAX_NAME_LENGTH]}'")
        return entry

    def serving(self, name: str = "") -> list[LoadedVersion]:
        """The ready versions of one model, or of every model, by name and version."""
        if name:
            entry = self._models.get(name)
            return entry.ready_versions() if entry is not None else []
        return [v for n in sorted(self._models) for v in self._models[n].ready_versions()]

    def not_ready(self) -> list[str]:
        return sorted(n for n, e in self._models.items() if not e.ready_versions())

    def known_versions(self, name: str) -> frozenset[int] | None:
        entry = self._models.get(name)
        return None if entry is None else frozenset(entry.versions)

    def default_version(self, name: str) -> str:
        loaded = self.table.lookup(name)
        return loaded.version_str if loaded is not None else ""

    # -- lifecycle -----------------------------------------------------------

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
        await self.sync(only=names)
        if mode == "explicit":
            unknown = names.difference(self._models) if names else set()
            if unknown:
                raise ModelLoadError(f"--load-model names unknown model(s) {sorted(unknown)}")
            # The index lists every model in the repository, loaded or not.
            sources = await self._scan()
            for name, source in sources.items():
                if name not in self._models:
                    self._models[name] = ModelEntry(
                        name, source.path, reason="not loaded (RepositoryModelLoad loads it)",
                        wanted=False,
                    )  # fmt: skip
        if mode == "poll":
            self._poll_task = asyncio.ensure_future(self._poll())

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop taking requests (new ones get UNAVAILABLE, ModelReady is
        false) and wait until every queued and running one has finished.
        After ``timeout`` seconds what is still queued is failed with
        UNAVAILABLE. Returns whether everything finished in time. A load in
        progress is not waited for: its version never starts serving."""
        self._stopping = True
        self.table.draining = True
        self.table.rebuild()  # the request path now always refuses
        await self._stop_polling()
        serving = [
            status for entry in self._models.values() for status in entry.versions.values()
            if status.loaded is not None
        ]  # fmt: skip
        # Requests take their version and queue in one step on the event
        # loop, so from here on the batchers only shrink.
        timeout = await ensemble.close_first([s.loaded for s in serving if s.loaded], timeout)
        closing = {
            asyncio.ensure_future(status.loaded.batcher.close(drain=True)): status
            for status in serving
            if status.loaded is not None
        }
        done, late = await asyncio.wait(closing, timeout=timeout) if closing else ((), ())
        for task in late:
            task.cancel()
            status = closing[task]
            assert status.loaded is not None
            logger.warning("model %s did not drain in time; failing what is queued",
                           status.loaded.batcher.name)  # fmt: skip
            await status.loaded.batcher.close(drain=False)
        return not late

    async def stop(self) -> None:
        """Release every version (after ``drain``: nothing is queued)."""
        self._stopping = True
        await self._stop_polling()
        for entry in list(self._models.values()):
            for status in list(entry.versions.values()):
                if status.loaded is not None:
                    await self._unload(entry, status, "server shut down", forget=False)

    async def _stop_polling(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
            self._poll_task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.sync()
            except Exception:
                logger.exception("repository poll failed")

    # -- repository control (explicit mode) ----------------------------------

    async def load_model(self, name: str) -> None:
        """RepositoryModelLoad: (re)load one model from disk (explicit mode)."""
        self._require_explicit("load")
        if self._stopping:
            raise errors.ShuttingDown("the server is shutting down; no model is loaded any more")
        # A request's name is never a path: one component a scan of the repository lists.
        if not is_model_folder(self.root, name, MAX_NAME_LENGTH):
            raise ModelNotFound(f"model '{name[:MAX_NAME_LENGTH]}' is not in the repository")
        await self.sync(only={name}, force=True)
        if self._stopping:  # it will not serve, whether or not its load finished
            raise errors.ShuttingDown(f"the server began to shut down while model '{name}' loaded")
        entry = self._models.get(name)
        if entry is None or not entry.ready_versions():
            why = entry.why_not_ready() if entry is not None else ""
            raise ModelLoadError(
                f"failed to load model '{name}': " + (why or "no version folder with a model file")
            )

    async def unload_model(self, name: str) -> None:
        self._require_explicit("unload")
        entry = self.model_view(name)
        async with self._lock:
            entry.wanted = False
            await asyncio.gather(*(self._unload(entry, s, "unloaded")
                                   for s in list(entry.versions.values()) if s.loaded))  # fmt: skip
            for status in entry.versions.values():
                status.state, status.reason = UNAVAILABLE, "unloaded"
            self.table.rebuild()

    def _require_explicit(self, what: str) -> None:
        if self.settings.model_control_mode != "explicit":
            raise errors.FailedPrecondition(
                f"model {what} is not allowed with --model-control-mode "
                f"{self.settings.model_control_mode}; start the server with "
                "--model-control-mode explicit"
            )

    # -- reconciling ---------------------------------------------------------

    async def _scan(self) -> dict[str, repository.ModelSource]:
        try:
            return await in_thread(repository.scan, self.root)
        except OSError as exc:
            raise ModelLoadError(f"cannot read model repository {self.root}: {exc}") from exc

    async def sync(self, only: set[str] | None = None, force: bool = False) -> None:
        """Bring loaded state in line with the disk: new models and versions
        load, removed ones unload, changed configs and files reload. A version
        that fails to load never replaces one that serves."""
        async with self._lock:
            if self._stopping:
                return
            sources = await self._scan()
            names = set(sources) | set(self._models)
            if only is not None:
                names &= only
            for name in sorted(names):
                source = sources.get(name)
                entry = self._models.get(name)
                if source is None:
                    if entry is not None:
                        await self._remove(entry)
                    continue
                if entry is None:
                    entry = self._models[name] = ModelEntry(name, source.path)
                elif not entry.wanted and not force:
                    continue
                entry.wanted = True
                await self._sync_model(entry, source, force)
                if self._stopping:
                    break
            self.table.rebuild()

    async def _remove(self, entry: ModelEntry) -> None:
        logger.info("model '%s' left the repository; unloading", entry.name)
        for status in list(entry.versions.values()):
            if status.loaded is not None:
                await self._unload(entry, status, "removed")
            self.metrics.forget_version(entry.name, str(status.version))
        del self._models[entry.name]
        self._changes.forget(entry.name)

    async def _sync_model(
        self, entry: ModelEntry, source: repository.ModelSource, force: bool
    ) -> None:
        state = await in_thread(self._changes.model_state, source)
        config_changed = state.config_digest != entry.config_digest
        entry.config_digest = state.config_digest
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
        available = dict(source.versions)
        fingerprints = state.versions
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
        wanted: list[int] = []
        while not self._stopping:
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
                await self._unload(entry, status, "unloaded (not in the version policy)")
            if version not in available:
                self.metrics.forget_version(entry.name, str(version))
                del entry.versions[version]

    async def _load(
        self,
        entry: ModelEntry,
        source: repository.ModelSource,
        version: int,
        path: Path,
        fingerprint: object,
    ) -> bool:
        label = f"{entry.name}:{version}"
        previous = entry.versions.get(version)
        if previous is None or previous.loaded is None:
            entry.versions[version] = VersionStatus(version, LOADING, fingerprint=fingerprint)
        try:
            prepared = await in_thread(self.loader.prepare, source, path, label)
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
        if self._stopping:  # the server began to stop while this loaded
            entry.versions[version] = previous or VersionStatus(version, UNAVAILABLE,
                                                                "server shut down")  # fmt: skip
            return False
        loaded = self.loader.activate(entry.name, version, prepared, fingerprint)
        del prepared
        entry.versions[version] = VersionStatus(version, READY, "", loaded, fingerprint)
        self.metrics.set_ready(entry.name, str(version), loaded.runtime.provider, True)
        config = loaded.config
        logger.info("model %s ready on %s (max_batch_size %d, dynamic batching %s)", label,
                    loaded.runtime.provider, config.max_batch_size,
                    "on" if config.HasField("dynamic_batching") else "off")  # fmt: skip
        if previous is not None and previous.loaded is not None:
            self.table.rebuild()  # new requests go to the new load, then the old one drains
            await previous.loaded.batcher.close(drain=True)
            self.on_retire(previous.loaded)
            previous.loaded = None
        return True

    async def _unload(
        self, entry: ModelEntry, status: VersionStatus, reason: str, forget: bool = True
    ) -> None:
        """Stop serving one version once its queued requests are answered;
        ``forget``: its metric series go too (it was retired, not failed)."""
        loaded = status.loaded
        if loaded is None:
            return
        status.state, status.reason, status.loaded = UNLOADING, "", None
        self.table.rebuild()  # no new requests; queued ones still finish
        await loaded.batcher.close(drain=True)
        self.on_retire(loaded)
        status.state, status.reason = UNAVAILABLE, reason
        if forget:
            self.metrics.forget_version(entry.name, loaded.version_str)
        else:
            self.metrics.set_ready(entry.name, loaded.version_str, loaded.runtime.provider, False)
        logger.info("model %s:%d unloaded", entry.name, status.version)

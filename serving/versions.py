"""Model versions as the server holds them, and the request path's lookup.

``LoadedVersion`` is everything a request needs of one serving version;
``ModelEntry``/``VersionStatus`` are the manager's book of every model and
version it knows (states as ``VersionState``). ``ReadyTable`` is the one
dict the request path reads, keyed by (model, version string), with the
wording of every "not found" and "not ready" error. A version with a
``blocker`` (an ensemble, ``serving.ensemble``) serves only while its
blocker finds nothing wrong with the versions serving around it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol

import numpy as np

from serving._generated import model_config_pb2 as mc
from serving.batch_jobs import BatchResult
from serving.errors import ModelNotFound, ModelNotReady, ShuttingDown
from serving.runtime import Runtime
from serving.validation import ModelSignature

if TYPE_CHECKING:
    from serving.recorder import VersionRecorder

logger = logging.getLogger(__name__)

#: Longest model name accepted from a request; longer ones are unknown.
MAX_NAME_LENGTH = 256
#: Longest version string that can be a version number.
MAX_VERSION_DIGITS = 18


class VersionState(str, enum.Enum):
    """Triton's model states, as RepositoryIndex spells them."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


def parse_version(text: str) -> int | None:
    """A version string as its number ("01" is 1), or None when it is none:
    ASCII digits only (``str.isdigit`` also takes other scripts' digits)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS:
        return int(text)
    return None


#: (feeds, rows, deadline, priority, timeout_us, held) -> the request's
#: future; the request path passes them by position.
Submit = Callable[
    [dict[str, np.ndarray], int, "float | None", int, int, int], "asyncio.Future[BatchResult]"
]


class Scheduler(Protocol):
    """What the request path needs of a version's queue: a ``DynamicBatcher``,
    or an ensemble's ``EnsembleScheduler``."""

    @property
    def name(self) -> str: ...

    @property
    def submit(self) -> Submit:
        """Queue one validated request, as ``DynamicBatcher.submit``."""
        ...

    async def close(self, drain: bool = True) -> None: ...


#: (model, version string or "" for the newest) -> the version serving it, or None.
Lookup = Callable[[str, str], "LoadedVersion | None"]


@dataclass(eq=False)
class LoadedVersion:
    """One model version that is serving, with everything the request path needs."""

    model: str
    version: int
    version_str: str
    config: mc.ModelConfig
    runtime: Runtime
    signature: ModelSignature
    batcher: Scheduler
    #: Counts its requests in metrics and statistics (serving.recorder).
    recorder: VersionRecorder
    #: Output name -> index in the runtime's outputs.
    output_index: dict[str, int]
    fingerprint: object
    #: Why it cannot serve beside the versions serving now ("" if it can);
    #: None for a plain model, which needs no other.
    blocker: Callable[[Lookup], str] | None = None
    #: This load's key in the response cache; 0: its answers are not cached.
    cache_token: int = 0


@dataclass
class VersionStatus:
    version: int
    state: VersionState
    reason: str = ""
    loaded: LoadedVersion | None = None
    fingerprint: object = None
    #: The file state that last failed to load: not retried until it changes
    #: or the config does.
    failed_fingerprint: object = None
    #: Loaded, but its blocker names a reason (set by ``ReadyTable.rebuild``).
    blocked: str = ""

    @property
    def serving(self) -> bool:
        return self.state is VersionState.READY and self.loaded is not None and not self.blocked

    def row(self) -> tuple[str, str]:
        """State and reason as RepositoryIndex shows them."""
        if self.blocked and self.state is VersionState.READY:
            return VersionState.UNAVAILABLE.value, self.blocked
        return self.state.value, self.reason


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
        return [s.loaded for _, s in sorted(self.versions.items()) if s.serving and s.loaded]

    def why_not_ready(self) -> str:
        return self.reason or "; ".join(
            f"version {v}: {s.row()[1] or s.state.value.lower()}"
            for v, s in sorted(self.versions.items())
        )


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of RepositoryIndex: a model with no version, or one version."""

    name: str
    version: str
    state: str
    reason: str


class ReadyTable:
    """(model, version string) -> the version that serves it; "" is the
    model's newest ready version. Rebuilt by the manager on every change."""

    def __init__(
        self,
        models: Mapping[str, ModelEntry],
        set_ready: Callable[[str, str, str, bool], None] | None = None,
    ) -> None:
        """``set_ready(model, version, provider, ready)``: told when a version
        with a blocker stops or starts serving (the model_ready gauge)."""
        self._models = models
        self._set_ready = set_ready
        self._ready: dict[tuple[str, str], LoadedVersion] = {}
        #: Set by the manager's drain: every new request is refused.
        self.draining = False
        #: time.monotonic() of the last request refused while draining.
        self.last_refusal = 0.0

    def rebuild(self) -> None:
        ready: dict[tuple[str, str], LoadedVersion] = {}
        if not self.draining:
            statuses = [s for e in self._models.values() for s in e.versions.values()]
            before = {id(s): s.blocked for s in statuses}
            for status in statuses:
                status.blocked = ""
            changed = True
            while changed:  # blocking one ensemble may block another that runs it
                ready = self._collect()
                look = _finder(ready)
                changed = False
                for status in statuses:
                    loaded = status.loaded
                    if status.serving and loaded is not None and loaded.blocker is not None:
                        status.blocked = loaded.blocker(look)
                        changed = changed or bool(status.blocked)
            for status in statuses:
                if status.blocked != before[id(status)] and status.loaded is not None:
                    loaded = status.loaded
                    label = f"{loaded.model}:{status.version}"
                    if self._set_ready is not None:
                        self._set_ready(loaded.model, loaded.version_str,
                                        loaded.runtime.provider, not status.blocked)  # fmt: skip
                    if status.blocked:
                        logger.warning("model %s is not ready: %s", label, status.blocked)
                    else:
                        logger.info("model %s is ready: its steps serve", label)
        self._ready = ready

    def _collect(self) -> dict[tuple[str, str], LoadedVersion]:
        ready: dict[tuple[str, str], LoadedVersion] = {}
        for name, entry in self._models.items():
            versions = entry.ready_versions()
            for loaded in versions:
                ready[(name, loaded.version_str)] = loaded
            if versions:
                ready[(name, "")] = versions[-1]
        return ready

    def get(self, name: str, version: str = "") -> LoadedVersion:
        loaded = self._ready.get((name, version))
        if loaded is not None:
            return loaded
        return self._explain(name, version)

    def lookup(self, name: str, version: str = "") -> LoadedVersion | None:
        """The serving version, or None (never raises)."""
        loaded = self._ready.get((name, version))
        if loaded is None and version and self._models.get(name) is not None:
            number = parse_version(version)
            if number is not None:  # the same number written differently ("01")
                loaded = self._ready.get((name, str(number)))
        return loaded

    def is_ready(self, name: str, version: str = "") -> bool:
        return self.lookup(name, version) is not None

    def names(self) -> Iterable[str]:
        return {name for name, _ in self._ready}

    def _explain(self, name: str, version: str) -> LoadedVersion:
        if self.draining:
            self.last_refusal = time.monotonic()
            raise ShuttingDown("the server is shutting down; retry on another replica")
        entry = self._models.get(name) if len(name) <= MAX_NAME_LENGTH else None
        if entry is None:
            raise ModelNotFound(f"unknown model '{name[:MAX_NAME_LENGTH]}'")
        if version:
            number = parse_version(version)
            if number is None:
                raise ModelNotFound(
                    f"model '{name}' has no version '{version[:32]}': "
                    "versions are positive integers"
                )
            status = entry.versions.get(number)
            if status is None:
                raise ModelNotFound(
                    f"model '{name}' has no version {version}; "
                    f"versions: {sorted(entry.versions) or 'none'}"
                )
            if status.serving and status.loaded is not None:
                return status.loaded  # the same number written differently ("01")
            state, reason = status.row()
            raise ModelNotReady(
                f"model '{name}' version {version} is not ready ({state.lower()}"
                + (f": {reason}" if reason else "")
                + ")"
            )
        raise ModelNotReady(
            f"model '{name}' is not ready ({entry.why_not_ready() or 'not loaded'})"
        )


def _finder(ready: dict[tuple[str, str], LoadedVersion]) -> Lookup:
    return lambda name, version: ready.get((name, version))

"""The dynamic batcher's queue: Triton's priority levels and queue policies.

As model_config.proto defines them (``ModelDynamicBatching``):

- ``priority_levels`` N > 0 makes N queues, level 1 the highest; a batch is
  formed from the highest non-empty level first. A request's ``priority``
  parameter picks its level; 0 or a value above N means
  ``default_priority_level`` (Triton's ``InferenceRequest::SetPriority``).
  Without priority levels there is one queue.
- Each level has a ``ModelQueuePolicy``: its entry in
  ``priority_queue_policy``, else ``default_queue_policy``.
  ``max_queue_size`` bounds that level (0: unbounded; a full level answers
  UNAVAILABLE). ``default_timeout_microseconds`` is how long a request may
  wait (0: no timeout); with ``allow_timeout_override`` a request's own
  ``timeout`` parameter may shorten it, never lengthen it. A request whose
  timeout passes is, by ``timeout_action``, REJECTed (answered UNAVAILABLE
  without running) or DELAYed: moved behind every request of its level that
  has not timed out, still ahead of lower levels.

One choice of dlserve's own: a model whose config sets no queue policy
honours the request ``timeout`` parameter (REJECT), as dlserve always did;
Triton's default ``allow_timeout_override: false`` would ignore it. A
config that writes ``default_queue_policy`` gets Triton's rules exactly.

The server-wide ``--max-queue-size`` bounds the sum over the levels; a
``default_queue_policy.max_queue_size`` (Triton's own bound) replaces it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from serving._generated import model_config_pb2 as mc
from serving.batch_jobs import Job
from serving.errors import ModelLoadError, QueueFull


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One level's ``ModelQueuePolicy``, in seconds."""

    #: Seconds a request may wait (0: no timeout).
    timeout: float = 0.0
    #: timeout_action DELAY (else REJECT).
    delay: bool = False
    allow_override: bool = True
    #: Requests this level holds (0: unbounded).
    max_size: int = 0

    def timeout_for(self, requested_us: int) -> float:
        """The seconds a request asking for ``requested_us`` (0: nothing) waits."""
        timeout = self.timeout
        if self.allow_override and requested_us > 0:
            own = requested_us / 1e6
            if timeout == 0 or own < timeout:
                timeout = own
        return timeout


@dataclass(frozen=True, slots=True)
class QueueSetup:
    """What the batcher's queue is built from."""

    policies: tuple[QueuePolicy, ...] = (QueuePolicy(),)
    #: 1-based, as in the config.
    default_level: int = 1
    #: Requests all levels hold together (0: unbounded).
    limit: int = 0


def _policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        timeout=policy.default_timeout_microseconds / 1e6,
        delay=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
        allow_override=policy.allow_timeout_override,
        max_size=max(policy.max_queue_size, 0),
    )


def setup_of(db: mc.ModelDynamicBatching | None, server_limit: int) -> QueueSetup:
    """The queue a config's ``dynamic_batching`` asks for; raises
    ModelLoadError for a config Triton would refuse."""
    if db is None:
        return QueueSetup(limit=server_limit)
    default = _policy(db.default_queue_policy) if db.HasField("default_queue_policy") else (
        QueuePolicy())  # fmt: skip
    limit = server_limit if default.max_size == 0 else 0
    levels = db.priority_levels
    if levels == 0:
        if db.priority_queue_policy:
            raise ModelLoadError("priority_queue_policy is set but priority_levels is 0")
        return QueueSetup((default,), 1, limit)
    if levels > 1024:
        raise ModelLoadError(f"priority_levels {levels} is over the limit of 1024")
    default_level = db.default_priority_level
    if not 1 <= default_level <= levels:
        raise ModelLoadError(
            f"default_priority_level must be in 1..priority_levels ({levels}), got {default_level}"
        )
    for level in db.priority_queue_policy:
        if not 1 <= level <= levels:
            raise ModelLoadError(
                f"priority_queue_policy names level {level}, outside 1..priority_levels ({levels})"
            )
    policies = tuple(
        _policy(db.priority_queue_policy[n]) if n in db.priority_queue_policy else default
        for n in range(1, levels + 1)
    )
    return QueueSetup(policies, default_level, limit)


class _Level:
    __slots__ = ("policy", "waiting", "delayed", "timed")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.waiting: collections.deque[Job] = collections.deque()
        #: DELAYed requests whose timeout passed: served after ``waiting``.
        self.delayed: collections.deque[Job] = collections.deque()
        #: Requests in ``waiting`` with a DELAY timeout.
        self.timed = 0

    def __len__(self) -> int:
        return len(self.waiting) + len(self.delayed)


class PriorityQueue:
    """Queued jobs by level, in the order batches take them: levels from
    the highest, within a level those not timed out first. ``head`` and
    ``pop`` see that order; ``expire`` applies DELAY timeouts."""

    def __init__(self, setup: QueueSetup = QueueSetup()) -> None:
        self._levels = [_Level(p) for p in setup.policies]
        self._default = setup.default_level - 1
        self._limit = setup.limit
        self._size = 0
        self._timed = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    @property
    def levels(self) -> int:
        return len(self._levels)

    def depths(self) -> list[int]:
        """Requests queued at each level, level 1 first."""
        return [len(level) for level in self._levels]

    def level_of(self, priority: int) -> int:
        """The 0-based level of a request ``priority`` (0: the default)."""
        if priority <= 0 or priority > len(self._levels):
            return self._default
        return priority - 1

    def admit(
        self, priority: int, timeout_us: int, now: float, deadline: float | None, name: str
    ) -> tuple[int, float | None, float | None]:
        """Where a request of ``priority`` asking for ``timeout_us`` (0: none)
        goes: its level, its REJECT deadline (``deadline`` or sooner) and its
        DELAY time; QueueFull when its level or the whole queue is full."""
        level = self.level_of(priority)
        entry = self._levels[level]
        limit = entry.policy.max_size
        if limit and len(entry) >= limit:
            where = f" at priority level {level + 1}" if len(self._levels) > 1 else ""
            raise QueueFull(
                f"model '{name}' has {len(entry)} requests queued{where}, its limit "
                "(max_queue_size); retry later or add replicas"
            )
        if self._limit and self._size >= self._limit:
            raise QueueFull(
                f"model '{name}' has {self._size} requests queued, its limit; "
                "retry later or add replicas"
            )
        policy = entry.policy
        wait = policy.timeout_for(timeout_us)
        if wait <= 0:
            return level, deadline, None
        if policy.delay:
            return level, deadline, now + wait
        if deadline is None or now + wait < deadline:
            deadline = now + wait
        return level, deadline, None

    def append(self, job: Job) -> None:
        level = self._levels[job.level]
        level.waiting.append(job)
        if job.delay_at is not None:
            level.timed += 1
            self._timed += 1
        self._size += 1

    def head(self) -> Job:
        for level in self._levels:
            if level.waiting:
                return level.waiting[0]
            if level.delayed:
                return level.delayed[0]
        raise IndexError("head of an empty queue")

    def pop(self) -> Job:
        for level in self._levels:
            if level.waiting:
                job = level.waiting.popleft()
                if job.delay_at is not None:
                    level.timed -= 1
                    self._timed -= 1
                self._size -= 1
                return job
            if level.delayed:
                self._size -= 1
                return level.delayed.popleft()
        raise IndexError("pop from an empty queue")

    def expire(self, now: float) -> None:
        """Move every DELAY request whose timeout has passed behind its
        level's others (Triton's ApplyPolicy), keeping arrival order."""
        if not self._timed:
            return
        for level in self._levels:
            if not level.timed:
                continue
            kept: collections.deque[Job] = collections.deque()
            for job in level.waiting:
                if job.delay_at is not None and now > job.delay_at:
                    job.delay_at = None
                    level.timed -= 1
                    self._timed -= 1
                    level.delayed.append(job)
                else:
                    kept.append(job)
            level.waiting = kept

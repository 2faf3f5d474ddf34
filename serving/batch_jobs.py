"""What a batch is made of: a queued request (``Job``), what one request
gets back (``BatchResult``), and which requests can share a batch (``fits``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class BatchResult:
    """What one request gets back: its rows of every output, and timings."""

    outputs: list[np.ndarray]
    queue_seconds: float
    compute_seconds: float
    batch_rows: int
    #: The batch it ran in, shared by every request of a batch of several
    #: (the batch's outputs, which its rows are views of); None: it ran alone.
    batch: object = None


@dataclass(slots=True)
class Job:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[BatchResult]
    enqueued: float
    deadline: float | None
    nbytes: int
    #: 0-based priority level (serving.queues).
    level: int = 0
    #: When a DELAY queue policy's timeout passes (None: none pending).
    delay_at: float | None = None


def fits(first: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> bool:
    """Whether ``other``'s tensors can be concatenated onto ``first``'s."""
    if len(first) != len(other):
        return False
    for name, array in first.items():
        peer = other.get(name)
        if peer is None or peer.shape[1:] != array.shape[1:] or peer.dtype != array.dtype:
            return False
    return True

"""Triton's response cache: answers of repeated identical requests from memory.

``--cache-config local,size=N`` gives the server one cache of N bytes, shared
by every model whose config.pbtxt says ``response_cache { enable: true }``
(a model that asks while the server has none serves without, and the load
logs one line saying so, as Triton does).

The key is a SHA-256 digest (collision-safe: no false hit short of breaking
SHA-256) over the model name, version, the loaded version's token, every
input's name, datatype, numpy dtype, shape and bytes (inputs sorted by name),
and the requested outputs in their order with their classification count.
The binary-data flags of REST outputs are not in it: they change how the edge
encodes the answer, not the answer, and the cache holds tensors.

The token is a number given to each load of a version (``token_for``): a
version that is reloaded gets a new one, so it never sees its previous
load's answers; the manager's ``on_retire`` hook drops a retired load's
entries at once (``forget``).

Least recently used entries are evicted to keep the sum of each entry's key
and output tensor bytes (Python object overhead not counted) within N. An
entry larger than N is not stored.

Ensembles are not cached: their answer also depends on the step models'
versions, which the ensemble's key does not cover.

Used from the event loop thread only (both edges and the service run on it),
so it takes no lock; the metrics scrape thread only reads two integers.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serving._generated import model_config_pb2 as mc
from serving.tensors import InferRequest, Tensor

if TYPE_CHECKING:
    from serving.versions import LoadedVersion

logger = logging.getLogger(__name__)

_now = time.perf_counter
_tokens = itertools.count(1)
#: Bytes each BYTES element's length adds to the key, so ["ab","c"] != ["a","bc"].
_LENGTH_BYTES = 8


def token_for(config: mc.ModelConfig, cache_bytes: int, label: str, ensemble: bool) -> int:
    """The cache token of one load of a version: a fresh number when the
    model asks for the cache and the server has one, else 0 (not cached)."""
    if not config.response_cache.enable:
        return 0
    if ensemble:
        logger.warning("model %s asks for response_cache, which ensembles do not support "
                       "here; serving without it", label)  # fmt: skip
        return 0
    if cache_bytes <= 0:
        logger.info("model %s asks for response_cache but the server has no cache "
                    "(--cache-config local,size=N); serving without it", label)  # fmt: skip
        return 0
    return next(_tokens)


class _Entry:
    __slots__ = ("token", "outputs", "size")

    def __init__(self, token: int, outputs: tuple[Tensor, ...], size: int) -> None:
        self.token = token
        self.outputs = outputs
        self.size = size


class ResponseCache:
    """An LRU of answers within ``capacity`` bytes (keys + output tensors)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: Bytes of keys and output tensors held now.
        self.size = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        #: token -> the keys of its entries, for ``forget``.
        self._by_token: dict[int, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, loaded: LoadedVersion, request: InferRequest
    ) -> tuple[bytes, tuple[Tensor, ...] | None, float]:
        """The request's key, the cached outputs on a hit (else None), and
        the seconds the lookup took (the key's hash included)."""
        start = _now()
        key = key_of(loaded, request)
        entry = self._entries.get(key)
        if entry is None:
            return key, None, _now() - start
        self._entries.move_to_end(key)
        return key, entry.outputs, _now() - start

    def insert(self, key: bytes, token: int, outputs: tuple[Tensor, ...]) -> None:
        """Store an answer (its arrays copied: they may be views into a batch)."""
        if key in self._entries:  # an identical request answered meanwhile
            self._entries.move_to_end(key)
            return
        size = len(key) + sum(_nbytes(t) for t in outputs)
        if size > self.capacity:
            return
        stored = tuple(Tensor(t.name, t.datatype, t.shape, _frozen_copy(t.data)) for t in outputs)
        while self.size + size > self.capacity:
            old_key, old = self._entries.popitem(last=False)
            self._drop(old_key, old)
            self.evictions += 1
        self._entries[key] = _Entry(token, stored, size)
        self._by_token.setdefault(token, set()).add(key)
        self.size += size

    def forget(self, loaded: LoadedVersion) -> None:
        """Drop every entry of one load of a version (it stopped serving)."""
        for key in self._by_token.pop(loaded.cache_token, ()):
            entry = self._entries.pop(key)
            self.size -= entry.size

    def _drop(self, key: bytes, entry: _Entry) -> None:
        self.size -= entry.size
        keys = self._by_token.get(entry.token)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_token[entry.token]


def key_of(loaded: LoadedVersion, request: InferRequest) -> bytes:
    """SHA-256 over everything that decides the answer (module docstring)."""
    inputs = sorted(request.inputs, key=lambda t: t.name)
    head = (
        loaded.model, loaded.version_str, loaded.cache_token,
        [(t.name, t.datatype, t.data.dtype.str, t.shape, t.data.size) for t in inputs],
        [(o.name, o.class_count) for o in request.outputs],
    )  # fmt: skip
    digest = hashlib.sha256(repr(head).encode())
    for tensor in inputs:
        data = tensor.data
        if data.dtype == np.object_:
            for item in data.flat:
                raw = item.encode() if isinstance(item, str) else bytes(item)
                digest.update(len(raw).to_bytes(_LENGTH_BYTES, "little"))
                digest.update(raw)
        else:
            digest.update(np.ascontiguousarray(data).data.cast("B"))
    return digest.digest()


def _nbytes(tensor: Tensor) -> int:
    data = tensor.data
    size = len(tensor.name) + len(tensor.datatype)
    if data.dtype == np.object_:
        return size + sum(len(x) for x in data.flat)
    return size + data.nbytes


def _frozen_copy(data: np.ndarray) -> np.ndarray:
    copy = data.copy()
    copy.flags.writeable = False
    return copy


class CacheCollector(Collector):
    """``dlserve_cache_bytes``, ``dlserve_cache_entries`` and
    ``dlserve_cache_evictions_total`` of the server's cache, read at scrape
    time (in-process only: ``--workers`` processes do not report them)."""

    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cache = self._cache
        yield GaugeMetricFamily(
            "dlserve_cache_bytes",
            "Bytes of keys and output tensors in the response cache (--cache-config size).",
            value=float(cache.size),
        )
        yield GaugeMetricFamily(
            "dlserve_cache_entries", "Answers held in the response cache.", value=float(len(cache))
        )
        yield CounterMetricFamily(
            "dlserve_cache_evictions",
            "Answers evicted from the response cache to make room (least recently used first).",
            value=float(cache.evictions),
        )

"""System shared memory (Triton's ``system_shared_memory`` extension).

A client creates a POSIX shared-memory object (``shm_open``: a file under
/dev/shm), registers a region of it by name, and then names that region in
an input's or output's ``shared_memory_region`` / ``_offset`` /
``_byte_size`` parameters instead of sending the bytes. Off unless the
server runs with ``--allow-client-shm`` (``SharedMemoryRegistry(enabled=False)``
refuses everything with ``SharedMemoryDisabled``).

What a client cannot do:

- reach a file outside /dev/shm: a key is one name (``/name``, no other
  ``/``), opened relative to an open /dev/shm with ``O_NOFOLLOW``, and must
  be a regular file there (no symlink, FIFO or directory);
- read or write outside its region: every tensor's ``[offset, offset +
  byte_size)`` is checked against the registered size, and the object's
  current size is checked again each time a request takes the region (a
  client that shrinks its object gets an error rather than a SIGBUS, except
  in the race where it shrinks it during that very request: shared memory is
  opt-in for clients on the same host, as in Triton);
- pull a mapping from under a request: each request holds its regions
  (``ShmRequest``) until its answer is written; ``unregister`` takes the
  name away at once, and the mapping is closed when the last request lets
  go (a numpy view still alive after that keeps the ``mmap`` open: Python
  refuses to close a mapping with exported buffers, so it closes when the
  view is collected).

Inputs are numpy views of the mapping (no copy); outputs are copied into
it once. The registry is used from the App's event loop only.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from serving.datatypes import DTYPE_BY_DATATYPE
from serving.errors import (
    InvalidInput,
    SharedMemoryDisabled,
    SharedMemoryExists,
    SharedMemoryKeyError,
    SharedMemoryNotFound,
    SharedMemoryRangeError,
)
from serving.tensors import Tensor
from serving.validation import quoted, raw_tensor

#: Where POSIX shared-memory objects live on Linux (shm_open's directory).
SHM_ROOT = "/dev/shm"
#: The request parameters of the extension.
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
KEYS = frozenset({REGION, OFFSET, BYTE_SIZE})
#: Regions registered at once (each holds a descriptor and a mapping).
MAX_REGIONS = 256
#: Longest key shm_open takes (NAME_MAX) and longest region name we keep.
_KEY_MAX = 255
_NAME_MAX = 255
DISABLED_MESSAGE = (
    "client shared memory is off on this server; start it with --allow-client-shm "
    "(SERVING_ALLOW_CLIENT_SHM=true) to register regions, or send tensors in the request"
)
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


class Region:
    """One registered region: a mapping of its part of the object."""

    __slots__ = ("name", "key", "offset", "byte_size", "map", "base", "users", "registered")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int) -> None:
        """Maps ``fd`` (the mapping keeps a descriptor of its own)."""
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        # mmap offsets are multiples of the allocation granularity: map from
        # the one below and remember where the region starts in the mapping.
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        self.base = offset - start
        self.map = mmap.mmap(fd, self.base + byte_size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=start)  # fmt: skip
        self.users = 0
        self.registered = True

    def status(self) -> RegionStatus:
        return RegionStatus(self.name, self.key, self.offset, self.byte_size)

    def check_size(self) -> None:
        """The object still holds the region (a client may have shrunk it)."""
        size = self.map.size()  # fstat of the mapping's descriptor
        if size < self.offset + self.byte_size:
            raise SharedMemoryRangeError(
                f"shared-memory region {quoted(self.name)}: its object {quoted(self.key)} "
                f"now holds {size} bytes, less than the registered offset + byte_size "
                f"({self.offset + self.byte_size}); register it again"
            )

    def span(self, offset: int, byte_size: int, kind: str, tensor: str) -> int:
        """Where ``[offset, offset + byte_size)`` of the region starts in the
        mapping; ``kind`` and ``tensor`` ("input", its name) for errors."""
        if offset > self.byte_size:
            raise SharedMemoryRangeError(
                f"{_what(kind, tensor)}: shared_memory_offset {offset} is past the end of region "
                f"{quoted(self.name)} ({self.byte_size} bytes)"
            )
        if offset + byte_size > self.byte_size:
            raise SharedMemoryRangeError(
                f"{_what(kind, tensor)}: shared_memory_offset {offset} + "
                f"shared_memory_byte_size {byte_size} runs past the end of region "
                f"{quoted(self.name)} ({self.byte_size} bytes)"
            )
        return self.base + offset

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a view is still alive: the mmap closes when it is collected
            pass


class SharedMemoryRegistry:
    """Registered regions by name; ``enabled=False`` refuses every call."""

    def __init__(self, enabled: bool, root: str = SHM_ROOT) -> None:
        self.enabled = enabled
        self.root = root
        self._regions: dict[str, Region] = {}

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise SharedMemoryDisabled(DISABLED_MESSAGE)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_enabled()
        if not name or len(name) > _NAME_MAX:
            raise InvalidInput(
                f"a shared-memory region needs a name of 1 to {_NAME_MAX} characters, "
                f"got {quoted(name)}"
            )
        if len(self._regions) >= MAX_REGIONS:
            raise InvalidInput(
                f"{MAX_REGIONS} shared-memory regions are registered, the most this server "
                "holds at once; unregister some first"
            )
        if name in self._regions:
            raise SharedMemoryExists(
                f"shared-memory region {quoted(name)} is already registered; unregister it "
                "first or pick another name"
            )
        if offset < 0 or byte_size <= 0:
            raise SharedMemoryRangeError(
                f"shared-memory region {quoted(name)} needs offset >= 0 and byte_size > 0, "
                f"got offset {offset} and byte_size {byte_size}"
            )
        fd = _open(key, self.root)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SharedMemoryKeyError(
                    f"key {quoted(key)} is not a POSIX shared-memory object "
                    f"(not a regular file in {self.root})"
                )
            if offset + byte_size > info.st_size:
                raise SharedMemoryRangeError(
                    f"shared-memory region {quoted(name)}: offset {offset} + byte_size "
                    f"{byte_size} = {offset + byte_size} runs past the end of {quoted(key)} "
                    f"({info.st_size} bytes)"
                )
            region = Region(name, key, offset, byte_size, fd)
        finally:
            os.close(fd)
        self._regions[name] = region

    def unregister(self, name: str = "") -> None:
        """One region, or every region (``name`` empty). An unknown name is
        not an error (Triton's answer); a region in use closes when its last
        request lets go."""
        self._check_enabled()
        names = [name] if name else list(self._regions)
        for n in names:
            region = self._regions.pop(n, None)
            if region is not None:
                region.registered = False
                if region.users == 0:
                    region.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        self._check_enabled()
        if not name:
            return [r.status() for r in self._regions.values()]
        return [self._get(name).status()]

    def _get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise SharedMemoryNotFound(
                f"no system shared-memory region {quoted(name)} is registered; register it "
                "first (SystemSharedMemoryRegister)"
            )
        return region

    def acquire(self, name: str) -> Region:
        self._check_enabled()
        region = self._get(name)
        region.check_size()
        region.users += 1
        return region

    def release(self, region: Region) -> None:
        region.users -= 1
        if region.users == 0 and not region.registered:
            region.close()

    def close(self) -> None:
        """At server stop: every region, in use or not, is let go."""
        if self.enabled:
            self.unregister()


def _open(key: str, root: str) -> int:
    """The descriptor of POSIX shm object ``key`` ("/name"), never anything
    outside ``root``."""
    if not isinstance(key, str) or not key:
        raise SharedMemoryKeyError("a shared-memory region needs a key, e.g. '/my_region'")
    name = key[1:] if key.startswith("/") else key
    if not name or len(name) > _KEY_MAX or "/" in name or "\0" in name or name in (".", ".."):
        raise SharedMemoryKeyError(
            f"key {quoted(key)} is not a POSIX shared-memory name: use '/name' (one leading "
            f"'/', no other '/', at most {_KEY_MAX} characters), as shm_open takes it"
        )
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(name, _OPEN_FLAGS, dir_fd=directory)
    except FileNotFoundError:
        raise SharedMemoryKeyError(
            f"no POSIX shared-memory object {quoted(key)} (looked in {root}); create it "
            "first (shm_open, or tritonclient.utils.shared_memory.create_shared_memory_region)"
        ) from None
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == 40 else exc.strerror  # ELOOP
        raise SharedMemoryKeyError(
            f"key {quoted(key)} cannot be opened as a POSIX shared-memory object ({reason})"
        ) from None
    finally:
        os.close(directory)


def _what(kind: str, tensor: str) -> str:
    """A tensor as messages name it ("input 'x'"), built only for an error."""
    return f"{kind} {quoted(tensor)}"


def _int(params: Mapping[str, Any], key: str, kind: str, tensor: str, default: int | None) -> int:
    value = params.get(key, default)
    if type(value) is int and value >= 0:
        return value
    if value is None:
        raise InvalidInput(
            f"{_what(kind, tensor)}: {REGION} needs {BYTE_SIZE} too (the tensor's bytes)"
        )
    raise InvalidInput(
        f"{_what(kind, tensor)}: {key} must be a whole number >= 0, got {value!r:.40}"
    )


def parameters(params: Mapping[str, Any], kind: str, tensor: str) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) of a tensor's parameters, or None when
    they name no region; ``kind`` and ``tensor`` ("input", its name) for errors."""
    region = params.get(REGION)
    if region is None:
        if BYTE_SIZE in params or OFFSET in params:
            raise InvalidInput(f"{_what(kind, tensor)}: {BYTE_SIZE} and {OFFSET} need {REGION} too")
        return None
    if type(region) is not str or not region:
        raise InvalidInput(
            f"{_what(kind, tensor)}: {REGION} must be a region name, got {region!r:.40}"
        )
    return (
        region,
        _int(params, OFFSET, kind, tensor, 0),
        _int(params, BYTE_SIZE, kind, tensor, None),
    )


class ShmRequest:
    """The regions one request uses: taken as its tensors are decoded, let
    go by ``release`` once its answer is written (or it failed)."""

    __slots__ = ("registry", "held", "outputs")

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        """Cheap (one per infer request, most of which use no region): the
        containers are made on first use."""
        self.registry = registry
        self.held: list[Region] | None = None
        #: output name -> (region, start in its mapping, byte_size)
        self.outputs: dict[str, tuple[Region, int, int]] | None = None

    def _take(self, name: str) -> Region:
        region = self.registry.acquire(name)
        if self.held is None:
            self.held = []
        self.held.append(region)
        return region

    def input(
        self, name: str, datatype: str, shape: tuple[int, ...], where: tuple[str, int, int]
    ) -> Tensor:
        """The input as a numpy view of its region (no copy)."""
        region_name, offset, byte_size = where
        region = self._take(region_name)
        start = region.span(offset, byte_size, "input", name)
        dtype = DTYPE_BY_DATATYPE[datatype]
        if datatype != "BYTES" and all(d > 0 for d in shape):
            count = 1
            for d in shape:
                count *= d
            if count * dtype.itemsize != byte_size:
                raise SharedMemoryRangeError(
                    f"input {quoted(name)} with shape {list(shape)} is "
                    f"{count * dtype.itemsize} bytes of {datatype}, "
                    f"but its {BYTE_SIZE} is {byte_size}"
                )
        view = memoryview(region.map)[start : start + byte_size]
        return raw_tensor(name, datatype, shape, view, "shared memory")

    def output(self, name: str, where: tuple[str, int, int]) -> None:
        """Ask for output ``name`` to be written into a region."""
        region_name, offset, byte_size = where
        region = self._take(region_name)
        start = region.span(offset, byte_size, "output", name)
        if self.outputs is None:
            self.outputs = {}
        self.outputs[name] = (region, start, byte_size)

    def write(self, tensor: Tensor, data: bytes | None = None) -> dict[str, Any] | None:
        """Write an output asked for in shared memory into its region; its
        parameters for the answer, or None when it was not asked for there.
        ``data``: the bytes already encoded (BYTES outputs)."""
        target = self.outputs.get(tensor.name) if self.outputs else None
        if target is None:
            return None
        region, start, byte_size = target
        if data is None:
            buffer = np.ascontiguousarray(tensor.data).data.cast("B")
        else:
            buffer = memoryview(data)
        if buffer.nbytes > byte_size:
            raise SharedMemoryRangeError(
                f"output {quoted(tensor.name)} is {buffer.nbytes} bytes, but its "
                f"{BYTE_SIZE} is {byte_size}; give it a larger part of region "
                f"{quoted(region.name)}"
            )
        region.map[start : start + buffer.nbytes] = buffer
        return {REGION: region.name, OFFSET: start - region.base, BYTE_SIZE: buffer.nbytes}

    def release(self) -> None:
        held, self.held = self.held, None
        if held:
            for region in held:
                self.registry.release(region)

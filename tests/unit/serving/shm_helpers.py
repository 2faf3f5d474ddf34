"""POSIX shared-memory objects for the shared-memory tests: real files
under /dev/shm (what shm_open creates), each with a unique name, removed
when the test ends."""

from __future__ import annotations

import os
import uuid
from typing import Iterator

SHM_DIR = "/dev/shm"


class ShmObjects:
    """Create objects (and other things: links, FIFOs) under /dev/shm."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _name(self) -> str:
        name = f"dlserve-test-{uuid.uuid4().hex[:12]}"
        self.paths.append(os.path.join(SHM_DIR, name))
        return name

    def create(self, data: bytes = b"", size: int | None = None) -> str:
        """A shm object holding ``data`` (padded with zeros to ``size``); its key."""
        name = self._name()
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size if size is not None else len(data))
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        return "/" + name

    def symlink(self, target: str) -> str:
        name = self._name()
        os.symlink(target, os.path.join(SHM_DIR, name))
        return "/" + name

    def fifo(self) -> str:
        name = self._name()
        os.mkfifo(os.path.join(SHM_DIR, name), 0o600)
        return "/" + name

    def directory(self) -> str:
        name = self._name()
        os.mkdir(os.path.join(SHM_DIR, name))
        return "/" + name

    def write(self, key: str, data: bytes, offset: int = 0) -> None:
        with open(os.path.join(SHM_DIR, key.lstrip("/")), "r+b") as f:
            f.seek(offset)
            f.write(data)

    def read(self, key: str, size: int, offset: int = 0) -> bytes:
        with open(os.path.join(SHM_DIR, key.lstrip("/")), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def truncate(self, key: str, size: int) -> None:
        os.truncate(os.path.join(SHM_DIR, key.lstrip("/")), size)

    def cleanup(self) -> None:
        for path in self.paths:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            elif os.path.lexists(path):
                os.unlink(path)


def shm_objects() -> Iterator[ShmObjects]:
    """The body of a fixture: ``yield from shm_objects()``."""
    objects = ShmObjects()
    try:
        yield objects
    finally:
        objects.cleanup()

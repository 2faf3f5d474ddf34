"""Client-side shared memory for the shared-memory tests, made the way a
Triton user makes it: ``tritonclient.utils.shared_memory`` (POSIX shm
objects under /dev/shm), each with a unique key, destroyed when the test
ends."""

from __future__ import annotations

import contextlib
import uuid
import warnings
from typing import Any, Iterator

import numpy as np

with warnings.catch_warnings():
    # tritonclient 2.41 finds its libcshm.so through pkg_resources, which warns.
    warnings.simplefilter("ignore", UserWarning)
    import tritonclient.utils.shared_memory as shm_client


class Regions:
    """Shared-memory objects of one test: ``create`` one, read and write it."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def create(
        self, size: int, data: np.ndarray | None = None, offset: int = 0
    ) -> tuple[str, str, Any]:
        """A new object of ``size`` bytes (``data`` at ``offset``): (key, name, handle)."""
        tag = uuid.uuid4().hex[:10]
        key = f"/dlserve-shm-{tag}"
        handle = shm_client.create_shared_memory_region(f"region-{tag}", key, size)
        self.handles.append(handle)
        if data is not None:
            shm_client.set_shared_memory_region(handle, [np.ascontiguousarray(data)], offset)
        return key, f"region-{tag}", handle

    def read(self, handle: Any, datatype: type, shape: list[int], offset: int = 0) -> np.ndarray:
        return np.array(shm_client.get_contents_as_numpy(handle, datatype, shape, offset))


@contextlib.contextmanager
def regions() -> Iterator[Regions]:
    made = Regions()
    try:
        yield made
    finally:
        for handle in made.handles:
            shm_client.destroy_shared_memory_region(handle)

"""The REST routes of Triton's shared-memory extensions over ``service.shm``
(``serving.shm.SharedMemoryRegistry``), with the JSON of Triton's
``extension_shared_memory.md``:

    GET  v2/systemsharedmemory[/region/{name}]/status  -> [{name, key, offset, byte_size}]
    POST v2/systemsharedmemory/region/{name}/register  <- {key, offset, byte_size}
    POST v2/systemsharedmemory[/region/{name}]/unregister
    ... and the same under v2/cudasharedmemory: status [] (no CUDA regions
    here), unregister OK, register 501.

``route`` says which call a path is (and its method); ``answer`` makes it.
"""

from __future__ import annotations

from typing import Any, Callable

from serving.errors import InvalidInput, SharedMemoryDisabled, SharedMemoryNotFound, Unimplemented
from serving.grpc_api.shm_rpcs import CUDA_MESSAGE
from serving.shm import SharedMemoryRegistry
from serving.validation import quoted

ROOTS = frozenset({"systemsharedmemory", "cudasharedmemory"})
_METHOD = {"status": "GET", "register": "POST", "unregister": "POST"}


#: SharedMemoryDisabled: the routes' edge answers it with 400 (Triton's
#: answer over HTTP) where gRPC answers UNAVAILABLE.
__all__ = ("ROOTS", "SharedMemoryDisabled", "answer", "route")


def route(
    rest: list[str], method: str, allow: Callable[[str, str], None]
) -> tuple[str, str, str] | None:
    """(root, action, region name) of a path under /v2 (None: no such path);
    ``allow(method, expected)`` refuses a wrong method."""
    root = rest[0]
    if len(rest) == 2 and rest[1] in ("status", "unregister"):
        call = root, rest[1], ""
    elif len(rest) == 4 and rest[1] == "region" and rest[2] and rest[3] in _METHOD:
        call = root, rest[3], rest[2]
    else:
        return None
    allow(method, _METHOD[call[1]])
    return call


def answer(shm: SharedMemoryRegistry, call: tuple[str, str, str], body: Any) -> Any:
    """The JSON answer of ``call`` (None: an empty 200)."""
    root, action, name = call
    if root == "cudasharedmemory":
        shm.status()  # refused when shared memory is off
        if action == "register":
            raise Unimplemented(CUDA_MESSAGE)
        if action == "status" and name:
            raise SharedMemoryNotFound(f"no CUDA shared-memory region {quoted(name)}")
        return [] if action == "status" else None
    if action == "status":
        return [
            {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
            for r in shm.status(name)
        ]
    if action == "unregister":
        shm.unregister(name)
        return None
    shm.status()  # refused when shared memory is off, before the body is judged
    if not isinstance(body, dict):
        raise InvalidInput(
            'a register request needs a JSON object body: {"key": ..., "offset": ..., '
            '"byte_size": ...}'
        )
    key = body.get("key")
    if type(key) is not str:
        raise InvalidInput(f"'key' must be a string such as \"/my_region\", got {key!r:.40}")
    sizes = []
    for field, default in (("offset", 0), ("byte_size", None)):
        value = body.get(field, default)
        if type(value) is not int or value < 0:
            raise InvalidInput(f"'{field}' must be a whole number >= 0, got {value!r:.40}")
        sizes.append(value)
    shm.register(name, key, sizes[0], sizes[1])
    return None

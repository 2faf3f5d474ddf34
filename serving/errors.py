"""The serving error hierarchy.

Core modules raise these; ``code_name`` gives each its status code name
(gRPC's names, which the metrics' ``code`` label uses for every transport),
resolved along the MRO, so a subclass inherits its parent's code. Each
transport maps a code name to its own status once (``grpc_api.status``).
``message`` is always safe to return to a client.

    ServingError
    ├── InvalidInput            INVALID_ARGUMENT  bad name, datatype, shape, bytes, batch
    │   ├── SharedMemoryKeyError                  a key that is no POSIX shm object in /dev/shm
    │   └── SharedMemoryRangeError                bytes outside a region, or a tensor it cannot hold
    ├── SharedMemoryNotFound    NOT_FOUND         no registered region of that name
    ├── SharedMemoryExists      ALREADY_EXISTS    a region of that name is registered already
    ├── ModelNotFound           NOT_FOUND         unknown model or version
    ├── Unavailable             UNAVAILABLE       the model exists but cannot answer now
    │   ├── ModelNotReady                         failed load, unloaded, loading
    │   ├── QueueFull                             the model's bounded queue is full
    │   ├── QueueTimeout                          the request's deadline expired in the queue
    │   ├── ShuttingDown                          the server is draining
    │   └── SharedMemoryDisabled                  --allow-client-shm is off
    ├── ResourceExhausted       RESOURCE_EXHAUSTED
    ├── Unauthenticated         UNAUTHENTICATED   missing or wrong bearer token
    ├── FailedPrecondition      FAILED_PRECONDITION  e.g. repository control is off
    ├── Unimplemented           UNIMPLEMENTED     a protocol feature we do not offer
    ├── ModelLoadError          INVALID_ARGUMENT  a model folder that cannot be served
    └── InferenceFailed         INTERNAL          the runtime failed on a valid request

This module does not import grpc.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class. ``message`` is safe to return to clients."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request does not match the model (names, datatype, shape, size)."""


class ModelNotFound(ServingError):
    """No such model or version in the repository."""


class Unavailable(ServingError):
    """The model is known but cannot serve this request now."""


class ModelNotReady(Unavailable):
    """The model (version) failed to load, was unloaded, or is loading."""


class QueueFull(Unavailable):
    """The model's queue is at its bound; the client should back off."""


class QueueTimeout(Unavailable):
    """The request's deadline passed before it reached the runtime."""


class ShuttingDown(Unavailable):
    """The server is draining and accepts no new work."""


class SharedMemoryDisabled(Unavailable):
    """Client shared memory is off (the server runs without --allow-client-shm)."""


class SharedMemoryKeyError(InvalidInput):
    """A region's key is not a POSIX shared-memory object under /dev/shm."""


class SharedMemoryRangeError(InvalidInput):
    """An offset or byte size outside a region (or its object), or a tensor
    that does not fit the bytes given for it."""


class SharedMemoryNotFound(ServingError):
    """No shared-memory region of that name is registered."""


class SharedMemoryExists(ServingError):
    """A shared-memory region of that name is registered already."""


class ResourceExhausted(ServingError):
    """A size limit was exceeded."""


class Unauthenticated(ServingError):
    """Authentication is enabled and the credentials are missing or wrong."""


class FailedPrecondition(ServingError):
    """The operation is not allowed in the server's current mode."""


class Unimplemented(ServingError):
    """A protocol feature this server does not provide."""


class ModelLoadError(ServingError):
    """A model folder cannot be served (corrupt ONNX, bad config, no device)."""


class InferenceFailed(ServingError):
    """The runtime failed on a request that passed validation."""


#: The single error -> status code name table (gRPC's code names).
CODE_BY_ERROR: dict[type[ServingError], str] = {
    ServingError: "INTERNAL",
    InvalidInput: "INVALID_ARGUMENT",
    ModelNotFound: "NOT_FOUND",
    SharedMemoryNotFound: "NOT_FOUND",
    SharedMemoryExists: "ALREADY_EXISTS",
    Unavailable: "UNAVAILABLE",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    Unauthenticated: "UNAUTHENTICATED",
    FailedPrecondition: "FAILED_PRECONDITION",
    Unimplemented: "UNIMPLEMENTED",
    ModelLoadError: "INVALID_ARGUMENT",
    InferenceFailed: "INTERNAL",
}

_resolved: dict[type[BaseException], str] = {}


def code_name(exc: BaseException) -> str:
    """The status code name of an exception: its ServingError class's row
    (or its nearest parent's), CANCELLED for a cancellation, else INTERNAL."""
    cls = type(exc)
    code = _resolved.get(cls)
    if code is None:
        code = "INTERNAL"
        if cls.__name__ == "CancelledError":
            code = "CANCELLED"
        for parent in cls.__mro__:
            row = CODE_BY_ERROR.get(parent)
            if row is not None:
                code = row
                break
        _resolved[cls] = code
    return code

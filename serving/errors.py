"""The serving error hierarchy.

Core modules raise these; only ``serving.grpc_api.status`` maps them to gRPC
status codes (resolved along the MRO, so a subclass inherits its parent's
code). ``message`` is always safe to return to a client.

    ServingError
    ├── InvalidInput            INVALID_ARGUMENT  bad name, datatype, shape, bytes, batch
    ├── ModelNotFound           NOT_FOUND         unknown model or version
    ├── Unavailable             UNAVAILABLE       the model exists but cannot answer now
    │   ├── ModelNotReady                         failed load, unloaded, loading
    │   ├── QueueFull                             the model's bounded queue is full
    │   ├── QueueTimeout                          the request's deadline expired in the queue
    │   └── ShuttingDown                          the server is draining
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

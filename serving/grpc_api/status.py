"""The single ServingError -> grpc.StatusCode table, resolved along the MRO
(a subclass without its own row inherits its parent's code)."""

from __future__ import annotations

import grpc

from serving import errors

STATUS_BY_ERROR: dict[type[errors.ServingError], grpc.StatusCode] = {
    errors.ServingError: grpc.StatusCode.INTERNAL,
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
}


def status_of(exc: errors.ServingError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL

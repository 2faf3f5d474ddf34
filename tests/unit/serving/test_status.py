"""Every ServingError subclass has a status code row (its own or a parent's
that is meant for it), and the gRPC mapping is the code of that name."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from serving import errors
from serving.errors import CODE_BY_ERROR, ServingError, code_name
from serving.grpc_api.status import to_status


def _subclasses(cls: type[ServingError]) -> list[type[ServingError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


#: Subclasses that deliberately inherit their parent's code.
INHERITS = {
    errors.ModelNotReady, errors.QueueFull, errors.QueueTimeout, errors.ShuttingDown,
    errors.SharedMemoryDisabled, errors.SharedMemoryKeyError, errors.SharedMemoryRangeError,
}  # fmt: skip


@pytest.mark.parametrize("cls", _subclasses(ServingError), ids=lambda c: c.__name__)
def test_every_serving_error_has_a_row(cls: type[ServingError]) -> None:
    assert cls in CODE_BY_ERROR or cls in INHERITS, f"{cls.__name__} has no status row"
    code = code_name(cls("x"))
    assert code != "INTERNAL" or cls is errors.InferenceFailed
    assert to_status(cls("x")) is grpc.StatusCode[code]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.QueueFull("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.ShuttingDown("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.ModelLoadError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_the_contract_codes(exc: BaseException, code: grpc.StatusCode) -> None:
    assert to_status(exc) is code

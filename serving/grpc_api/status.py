"""ServingError -> grpc.StatusCode: the code name from ``serving.errors``'
single table, as grpc's enum member of that name."""

from __future__ import annotations

import grpc

from serving.errors import code_name


def to_status(exc: BaseException) -> grpc.StatusCode:
    return grpc.StatusCode[code_name(exc)]

"""The shared-memory RPCs of ``GRPCInferenceService`` (Triton's
system_shared_memory and cuda_shared_memory extensions) over
``service.shm`` (``serving.shm.SharedMemoryRegistry``). The servicer binds
each through its error wrapper; they take it as ``servicer``.

CUDA shared memory has no GPU path here: status answers no regions and
unregister answers OK (perf_analyzer calls both before it starts, whatever
memory it uses), register answers UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

from serving._generated import grpc_service_pb2 as pb
from serving.errors import SharedMemoryNotFound, Unimplemented
from serving.validation import quoted

_Region = pb.SystemSharedMemoryStatusResponse.RegionStatus

CUDA_MESSAGE = (
    "dlserve has no CUDA shared memory (it serves from host memory); register system "
    "shared memory (SystemSharedMemoryRegister) or send tensors in the request"
)


async def system_status(servicer: Any, request: Any, context: Any) -> Any:
    regions = servicer.service.shm.status(request.name)
    return pb.SystemSharedMemoryStatusResponse(
        regions={
            r.name: _Region(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
            for r in regions
        }
    )


async def system_register(servicer: Any, request: Any, context: Any) -> Any:
    servicer.service.shm.register(request.name, request.key, request.offset, request.byte_size)
    return pb.SystemSharedMemoryRegisterResponse()


async def system_unregister(servicer: Any, request: Any, context: Any) -> Any:
    servicer.service.shm.unregister(request.name)
    return pb.SystemSharedMemoryUnregisterResponse()


async def cuda_status(servicer: Any, request: Any, context: Any) -> Any:
    servicer.service.shm.status()  # refused when shared memory is off
    if request.name:
        raise SharedMemoryNotFound(f"no CUDA shared-memory region {quoted(request.name)}")
    return pb.CudaSharedMemoryStatusResponse()


async def cuda_register(servicer: Any, request: Any, context: Any) -> Any:
    servicer.service.shm.status()
    raise Unimplemented(CUDA_MESSAGE)


async def cuda_unregister(servicer: Any, request: Any, context: Any) -> Any:
    servicer.service.shm.status()
    return pb.CudaSharedMemoryUnregisterResponse()

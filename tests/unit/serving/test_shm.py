"""serving.shm against real POSIX shared-memory objects under /dev/shm:
what a registration may open, the bounds of every read and write, that
inputs are views of the mapping (no copy), and that a region in use
outlives its unregistration until its last request lets go."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from devtools.inprocess import settings_for
from dlserve.cli import main
from serving import errors
from serving import shm as shared
from serving._generated import grpc_service_pb2 as pb
from serving.grpc_api import codec as grpc_codec
from serving.http_api import codec as http_codec
from serving.shm import RegionStatus, SharedMemoryRegistry, ShmRequest
from serving.tensors import InferResponse, Tensor
from tests.unit.serving.shm_helpers import ShmObjects, shm_objects


@pytest.fixture
def objects() -> Iterator[ShmObjects]:
    yield from shm_objects()


@pytest.fixture
def registry() -> Iterator[SharedMemoryRegistry]:
    reg = SharedMemoryRegistry(enabled=True)
    yield reg
    reg.close()


FLOATS = np.arange(6, dtype=np.float32)


def test_register_status_unregister(registry: SharedMemoryRegistry, objects: ShmObjects) -> None:
    key = objects.create(size=4096)
    registry.register("a", key, 0, 4096)
    registry.register("b", key, 100, 200)
    assert registry.status() == [RegionStatus("a", key, 0, 4096), RegionStatus("b", key, 100, 200)]
    assert registry.status("b") == [RegionStatus("b", key, 100, 200)]
    registry.unregister("a")
    assert [r.name for r in registry.status()] == ["b"]
    registry.unregister("never-registered")  # not an error, as in Triton
    registry.unregister()
    assert registry.status() == []
    with pytest.raises(errors.SharedMemoryNotFound, match="no system shared-memory region 'a'"):
        registry.status("a")


def test_a_name_is_registered_once(registry: SharedMemoryRegistry, objects: ShmObjects) -> None:
    key = objects.create(size=64)
    registry.register("a", key, 0, 64)
    with pytest.raises(errors.SharedMemoryExists, match="'a' is already registered"):
        registry.register("a", key, 0, 32)
    assert registry.status() == [RegionStatus("a", key, 0, 64)]


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("/../etc/passwd", "not a POSIX shared-memory name"),
        ("../etc/passwd", "not a POSIX shared-memory name"),
        ("/a/b", "not a POSIX shared-memory name"),
        ("/..", "not a POSIX shared-memory name"),
        ("/", "not a POSIX shared-memory name"),
        ("//x", "not a POSIX shared-memory name"),
        ("/x\0y", "not a POSIX shared-memory name"),
        ("/" + "x" * 256, "not a POSIX shared-memory name"),
        ("", "needs a key"),
        ("/dlserve-test-does-not-exist", "no POSIX shared-memory object"),
    ],
)
def test_keys_that_are_no_shm_object_are_refused(
    registry: SharedMemoryRegistry, key: str, fragment: str
) -> None:
    with pytest.raises(errors.SharedMemoryKeyError, match=fragment):
        registry.register("r", key, 0, 8)
    assert registry.status() == []


def test_a_link_out_of_dev_shm_is_refused(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    with pytest.raises(errors.SharedMemoryKeyError, match="symbolic link"):
        registry.register("r", objects.symlink("/etc/passwd"), 0, 8)


def test_a_fifo_or_folder_is_refused_without_blocking(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    with pytest.raises(errors.SharedMemoryKeyError, match="not a regular file"):
        registry.register("r", objects.fifo(), 0, 8)  # O_NONBLOCK: no writer needed
    with pytest.raises(errors.SharedMemoryKeyError, match="cannot be opened"):
        registry.register("r", objects.directory(), 0, 8)


@pytest.mark.parametrize(
    ("offset", "byte_size", "fragment"),
    [
        (0, 65, "runs past the end"),
        (60, 8, "runs past the end"),
        (100, 1, "runs past the end"),
        (0, 0, "byte_size > 0"),
        (-1, 8, "offset >= 0"),
    ],
)
def test_a_region_must_lie_inside_its_object(
    registry: SharedMemoryRegistry, objects: ShmObjects, offset: int, byte_size: int, fragment: str
) -> None:
    key = objects.create(size=64)
    with pytest.raises(errors.SharedMemoryRangeError, match=fragment):
        registry.register("r", key, offset, byte_size)
    assert registry.status() == []


def test_the_number_of_regions_is_bounded(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    """Each region holds a descriptor: a client cannot exhaust the server's."""
    key = objects.create(size=64)
    for i in range(shared.MAX_REGIONS):
        registry.register(f"r{i}", key, 0, 64)
    with pytest.raises(errors.InvalidInput, match=f"{shared.MAX_REGIONS} shared-memory regions"):
        registry.register("one-more", key, 0, 64)
    registry.unregister("r0")
    registry.register("one-more", key, 0, 64)


def test_off_refuses_everything_naming_the_flag(objects: ShmObjects) -> None:
    registry = SharedMemoryRegistry(enabled=False)
    key = objects.create(size=64)
    for call in (
        lambda: registry.register("r", key, 0, 64),
        lambda: registry.status(),
        lambda: registry.unregister(),
        lambda: ShmRequest(registry).input("x", "FP32", (1,), ("r", 0, 4)),
    ):
        with pytest.raises(errors.SharedMemoryDisabled, match="--allow-client-shm"):
            call()


def test_an_input_is_a_view_of_the_region_at_an_unaligned_offset(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    key = objects.create(b"\xff" * 100 + FLOATS.tobytes(), size=8192)
    registry.register("r", key, 100, 4096)  # not a multiple of the page size
    request = ShmRequest(registry)
    tensor = request.input("x", "FP32", (2, 3), ("r", 0, FLOATS.nbytes))
    np.testing.assert_array_equal(tensor.data, FLOATS)
    assert tensor.from_raw
    # No copy: what the client writes into its object now is what the tensor holds.
    objects.write(key, np.float32(42).tobytes(), offset=100)
    assert tensor.data[0] == 42
    request.release()


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        (("r", 65, 0), "shared_memory_offset 65 is past the end of region 'r' \\(64 bytes\\)"),
        (("r", 48, 24), "runs past the end of region 'r'"),
        (("r", 0, 20), "is 24 bytes of FP32, but its shared_memory_byte_size is 20"),
        (("r", 0, 28), "is 24 bytes of FP32, but its shared_memory_byte_size is 28"),
    ],
)
def test_input_bounds(
    registry: SharedMemoryRegistry,
    objects: ShmObjects,
    where: tuple[str, int, int],
    fragment: str,
) -> None:
    registry.register("r", objects.create(size=64), 0, 64)
    request = ShmRequest(registry)
    with pytest.raises(errors.SharedMemoryRangeError, match=fragment):
        request.input("x", "FP32", (2, 3), where)
    request.release()


def test_an_unknown_region_in_a_request(registry: SharedMemoryRegistry) -> None:
    with pytest.raises(errors.SharedMemoryNotFound, match="'nope' is registered"):
        ShmRequest(registry).input("x", "FP32", (1,), ("nope", 0, 4))


def test_a_shrunk_object_is_an_error_not_a_crash(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    """Reading mapped pages past the end of a truncated object would SIGBUS."""
    key = objects.create(size=8192)
    registry.register("r", key, 0, 8192)
    objects.truncate(key, 100)
    with pytest.raises(errors.SharedMemoryRangeError, match="now holds 100 bytes"):
        ShmRequest(registry).input("x", "FP32", (2,), ("r", 4096, 8))


def test_outputs_are_written_into_the_region(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    key = objects.create(size=4096)
    registry.register("r", key, 1000, 1000)
    request = ShmRequest(registry)
    request.output("y", ("r", 8, 24))
    request.output("s", ("r", 100, 64))
    params = request.write(Tensor("y", "FP32", (2, 3), FLOATS.reshape(2, 3)))
    assert params == {
        shared.REGION: "r",
        shared.OFFSET: 8,
        shared.BYTE_SIZE: 24,
    }
    assert objects.read(key, 24, 1008) == FLOATS.tobytes()
    encoded = struct.pack("<I", 2) + b"hi"
    assert request.write(Tensor("s", "BYTES", (1,), np.array([b"hi"], object)), encoded) == {
        shared.REGION: "r",
        shared.OFFSET: 100,
        shared.BYTE_SIZE: 6,
    }
    assert objects.read(key, 6, 1100) == encoded
    assert request.write(Tensor("z", "FP32", (1,), FLOATS[:1])) is None  # not asked for there
    request.release()


def test_an_output_larger_than_its_bytes_is_refused(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    key = objects.create(size=64)
    registry.register("r", key, 0, 64)
    request = ShmRequest(registry)
    request.output("y", ("r", 0, 20))
    with pytest.raises(errors.SharedMemoryRangeError, match="'y' is 24 bytes, but its .* is 20"):
        request.write(Tensor("y", "FP32", (6,), FLOATS))
    assert objects.read(key, 24) == b"\0" * 24  # nothing written
    with pytest.raises(errors.SharedMemoryRangeError, match="runs past the end"):
        request.output("y", ("r", 60, 8))
    request.release()


def test_unregister_while_in_use_closes_at_the_last_release(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    key = objects.create(FLOATS.tobytes(), size=4096)
    registry.register("r", key, 0, 4096)
    first, second = ShmRequest(registry), ShmRequest(registry)
    a = first.input("x", "FP32", (6,), ("r", 0, 24))
    second.output("y", ("r", 100, 24))
    (region,) = first.held
    registry.unregister()
    assert registry.status() == []
    with pytest.raises(errors.SharedMemoryNotFound):
        ShmRequest(registry).input("x", "FP32", (6,), ("r", 0, 24))
    # Both requests still read and write their region.
    np.testing.assert_array_equal(a.data, FLOATS)
    second.write(Tensor("y", "FP32", (6,), FLOATS * 2))
    assert objects.read(key, 24, 100) == (FLOATS * 2).tobytes()
    first.release()
    assert not region.map.closed and region.users == 1
    second.release()
    assert region.users == 0
    # The view ``a`` is still alive, so the mmap cannot close yet (Python
    # refuses while buffers are exported): reading it stays safe.
    np.testing.assert_array_equal(a.data, FLOATS)
    del a
    registry.register("r", key, 0, 64)  # the name is free again


def test_release_closes_the_mapping_once_unused(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    registry.register("r", objects.create(size=64), 0, 64)
    request = ShmRequest(registry)
    request.output("y", ("r", 0, 8))
    (region,) = request.held
    registry.unregister("r")
    request.release()
    request.release()  # idempotent
    assert region.map.closed and region.users == 0


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({shared.BYTE_SIZE: 8}, "need shared_memory_region too"),
        ({shared.OFFSET: 0}, "need shared_memory_region too"),
        ({shared.REGION: "r"}, "needs shared_memory_byte_size too"),
        ({shared.REGION: "", shared.BYTE_SIZE: 8}, "must be a region name"),
        ({shared.REGION: 3, shared.BYTE_SIZE: 8}, "must be a region name"),
        ({shared.REGION: "r", shared.BYTE_SIZE: -1}, "whole number >= 0"),
        ({shared.REGION: "r", shared.BYTE_SIZE: "8"}, "whole number >= 0"),
        ({shared.REGION: "r", shared.BYTE_SIZE: 8, shared.OFFSET: 1.5}, "whole number >= 0"),
    ],
)
def test_parameters_are_checked(params: dict[str, object], fragment: str) -> None:
    with pytest.raises(errors.InvalidInput, match=fragment):
        shared.parameters(params, "input", "x")


def test_parameters_without_a_region() -> None:
    assert shared.parameters({"binary_data_size": 8}, "input", "x") is None
    assert shared.parameters({shared.REGION: "r", shared.BYTE_SIZE: 8}, "input", "x") == (
        "r",
        0,
        8,
    )


@pytest.mark.parametrize(
    ("flags", "on"),
    [
        ([], False),
        (["--allow-client-shm"], True),
        (["--allow-client-shm=true"], True),
        (["--allow-client-shm", "false"], False),
    ],
)
def test_the_flag_is_off_by_default(tmp_path: Path, flags: list[str], on: bool) -> None:
    settings, _ = settings_for(tmp_path, flags)
    assert settings.allow_client_shm is on


def test_a_bad_flag_value_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--model-repository", str(tmp_path), "--allow-client-shm=maybe"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-client-shm" in err[0] and "true or false" in err[0]


def test_workers_and_shared_memory_do_not_mix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each worker process would hold regions of its own."""
    code = main(["serve", "--model-repository", str(tmp_path), "--allow-client-shm",
                 "--workers", "2"])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "dlserve serve: error: --allow-client-shm needs --workers 1: each worker has its own "
        "regions\n"
    )


def test_no_descriptor_outlives_its_region(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    key = objects.create(size=64)
    before = len(os.listdir("/proc/self/fd"))
    registry.register("r", key, 0, 64)
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the mapping's own
    with pytest.raises(errors.SharedMemoryRangeError):
        registry.register("s", key, 0, 65)  # a refused registration keeps none
    registry.unregister()
    assert len(os.listdir("/proc/self/fd")) == before


# --- the codecs' hooks ------------------------------------------------------------


def _shm_input(msg: pb.ModelInferRequest, name: str, region: str, byte_size: int) -> None:
    tensor = msg.inputs.add(name=name, datatype="FP32", shape=[byte_size // 4])
    tensor.parameters[shared.REGION].string_param = region
    tensor.parameters[shared.BYTE_SIZE].int64_param = byte_size


def test_grpc_raw_entries_pair_with_the_inputs_not_in_shared_memory(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    registry.register("r", objects.create(FLOATS.tobytes(), size=64), 0, 64)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="first", datatype="FP32", shape=[2])
    _shm_input(msg, "second", "r", 24)
    msg.inputs.add(name="third", datatype="FP32", shape=[1])
    msg.raw_input_contents.extend([np.float32([7, 8]).tobytes(), np.float32([9]).tobytes()])
    request = ShmRequest(registry)
    decoded = grpc_codec.decode_request(msg, request)
    got = {t.name: t.data.tolist() for t in decoded.inputs}
    assert got == {"first": [7, 8], "second": FLOATS.tolist(), "third": [9]}
    msg.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(
        errors.InvalidInput, match="has 3 entries for 2 inputs not in shared memory"
    ):
        grpc_codec.decode_request(msg, request)
    del msg.raw_input_contents[1:]
    with pytest.raises(
        errors.InvalidInput, match="has 1 entries for 2 inputs not in shared memory"
    ):
        grpc_codec.decode_request(msg, request)
    request.release()


def test_grpc_an_input_in_shared_memory_with_contents_too(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    registry.register("r", objects.create(size=64), 0, 64)
    msg = pb.ModelInferRequest(model_name="m")
    _shm_input(msg, "x", "r", 8)
    msg.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(errors.InvalidInput, match="in shared memory and has typed contents too"):
        grpc_codec.decode_request(msg, ShmRequest(registry))
    msg.inputs[0].ClearField("contents")
    with pytest.raises(errors.InvalidInput, match="not supported on this call"):
        grpc_codec.decode_request(msg)  # a caller that holds no regions


def test_grpc_an_output_in_shared_memory_is_answered_without_data(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    key = objects.create(size=64)
    registry.register("r", key, 0, 64)
    msg = pb.ModelInferRequest(model_name="m")
    out = msg.outputs.add(name="y")
    out.parameters[shared.REGION].string_param = "r"
    out.parameters[shared.BYTE_SIZE].int64_param = 24
    out.parameters[shared.OFFSET].int64_param = 16
    msg.outputs.add(name="z")
    request = ShmRequest(registry)
    grpc_codec.decode_request(msg, request)
    answer = InferResponse("m", "1", (Tensor("z", "FP32", (1,), FLOATS[:1]),
                                      Tensor("y", "FP32", (6,), FLOATS)))  # fmt: skip
    encoded = grpc_codec.encode_response(answer, request)
    assert list(encoded.raw_output_contents) == [FLOATS[:1].tobytes(), b""]
    y = encoded.outputs[1].parameters
    assert (y[shared.REGION].string_param, y[shared.OFFSET].int64_param,
            y[shared.BYTE_SIZE].int64_param) == ("r", 16, 24)  # fmt: skip
    assert objects.read(key, 24, 16) == FLOATS.tobytes()
    request.release()


def test_http_an_input_in_shared_memory_with_data_too(
    registry: SharedMemoryRegistry, objects: ShmObjects
) -> None:
    registry.register("r", objects.create(size=64), 0, 64)
    params = {shared.REGION: "r", shared.BYTE_SIZE: 8}
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2],
                          "parameters": params}]}  # fmt: skip
    with pytest.raises(
        errors.InvalidInput, match="in shared memory and has data or binary_data_size"
    ):
        http_codec.decode_request(header, memoryview(b""), "m", "", ShmRequest(registry))
    del header["inputs"][0]["data"]
    decoded = http_codec.decode_request(header, memoryview(b""), "m", "", ShmRequest(registry))
    assert decoded.request.inputs[0].data.tolist() == [0, 0]
    assert decoded.shm is not None
    decoded.shm.release()

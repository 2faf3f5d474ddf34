"""Warm-up before a version is ready: Triton's ``model_warmup``.

Each ``ModelWarmup`` sample of config.pbtxt runs ``count`` times (0 means
once) through the runtime, before the version is activated, so readiness
waits for it and the first request finds a warm session. A sample gives
every required input its ``data_type``, ``dims`` (without the batch
dimension when the model batches) and data: ``zero_data``, ``random_data``,
or ``input_data_file``, raw row-major bytes of one sample read from the
model's ``warmup/`` folder (BYTES elements as a 4-byte little-endian length
and the bytes, as Triton reads them). The sample is repeated
``batch_size`` times along the batch dimension. A sample that does not fit
the model, or a run that fails, fails the load with the reason.

A config without ``model_warmup`` gets one row of zeros, which finds a
graph that cannot run at load time instead of at the first request.

The last sample's CPU time seeds the batcher's estimate of a batch's cost,
so a fast model's first request already takes the direct path on the event
loop (``serving.batcher``) instead of a trip through the thread pool.
"""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving import repository
from serving._generated import model_config_pb2 as mc
from serving.datatypes import DTYPE_BY_DATATYPE
from serving.errors import ModelLoadError, ServingError
from serving.files import read_regular_file
from serving.runtime import Runtime
from serving.validation import TensorSpec

logger = logging.getLogger(__name__)

#: The folder in a model's directory that ``input_data_file`` names a file in.
WARMUP_FOLDER = "warmup"
#: Bytes one warm-up data file may hold.
MAX_WARMUP_FILE_BYTES = 256 * 1024 * 1024


def warm_up(runtime: Runtime, config: mc.ModelConfig, inputs: list[TensorSpec],
            folder: Path, label: str) -> float:  # fmt: skip
    """Run the config's warm-up samples (or one zero row); ModelLoadError if
    one does not fit the model or fails. Returns the CPU seconds of the last
    sample's last run, the batcher's first guess of a batch's cost (inf for
    the zero row: one row says little of what requests will cost)."""
    batching = config.max_batch_size > 0
    if not config.model_warmup:
        _run(runtime, "default", _zero_row(inputs, batching), 1)
        return float("inf")
    cpu = float("inf")
    rng = np.random.default_rng(0)
    for index, sample in enumerate(config.model_warmup):
        name = sample.name or f"#{index + 1}"
        feeds = _feeds(sample, name, config, inputs, folder, rng)
        count = max(sample.count, 1)
        started = time.perf_counter()
        cpu = _run(runtime, name, feeds, count)
        logger.info(
            "model %s: warm-up sample %r ran %d times at batch size %d in %.1f ms", label, name,
            count, max(sample.batch_size, 1), (time.perf_counter() - started) * 1e3,
        )  # fmt: skip
    return cpu


def _run(runtime: Runtime, name: str, feeds: dict[str, np.ndarray], count: int) -> float:
    """Run ``count`` times; the CPU seconds of the last run."""
    cpu = float("inf")
    for _ in range(count):
        start = time.thread_time()
        try:
            runtime.run(feeds)
        except ServingError as exc:
            raise ModelLoadError(
                f"warm-up inference failed (sample {name!r}): {exc.message}"
            ) from exc
        cpu = time.thread_time() - start
    return cpu


def _zero_row(inputs: list[TensorSpec], batching: bool) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in inputs:
        dims = [1 if d == -1 else d for d in spec.dims]
        shape = [1, *dims] if batching else dims
        feeds[spec.name] = np.zeros(shape, dtype=DTYPE_BY_DATATYPE[spec.datatype])
    return feeds


def _feeds(sample: mc.ModelWarmup, name: str, config: mc.ModelConfig,
           inputs: list[TensorSpec], folder: Path,
           rng: np.random.Generator) -> dict[str, np.ndarray]:  # fmt: skip
    what = f"model_warmup {name!r}"
    batching = config.max_batch_size > 0
    batch = sample.batch_size
    if batching and not 1 <= batch <= config.max_batch_size:
        raise ModelLoadError(
            f"{what}: batch_size must be in 1..max_batch_size ({config.max_batch_size}), "
            f"got {batch}"
        )
    if not batching and batch > 1:
        raise ModelLoadError(f"{what}: batch_size must be 1 for a model that does not batch")
    specs = {spec.name: spec for spec in inputs}
    for input_name in sample.inputs:
        if input_name not in specs:
            raise ModelLoadError(
                f"{what}: input {input_name!r} is not an input of the model "
                f"(inputs: {sorted(specs)})"
            )
    feeds = {}
    for spec in inputs:
        if spec.name not in sample.inputs:
            if spec.optional:
                continue
            raise ModelLoadError(f"{what}: lacks the model's input {spec.name!r}")
        data = _sample(sample.inputs[spec.name], spec, f"{what} input {spec.name!r}", folder, rng)
        feeds[spec.name] = np.repeat(data[np.newaxis], batch, axis=0) if batching else data
    return feeds


def _sample(entry: mc.ModelWarmup.Input, spec: TensorSpec, what: str, folder: Path,
            rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    datatype = repository.datatype_of(entry.data_type)
    if datatype != spec.datatype:
        raise ModelLoadError(f"{what} is {datatype}, the model's input is {spec.datatype}")
    dims = tuple(entry.dims)
    if (
        len(dims) != len(spec.dims)
        or any(d <= 0 for d in dims)
        or any(s not in (-1, d) for s, d in zip(spec.dims, dims, strict=True))
    ):
        raise ModelLoadError(
            f"{what} has dims {list(dims)}; the model's input has {list(spec.dims)} "
            "(no batch dimension, every dim positive)"
        )
    dtype = DTYPE_BY_DATATYPE.get(datatype)
    if dtype is None:
        raise ModelLoadError(f"{what}: warm-up data of {datatype} is not supported")
    kind = entry.WhichOneof("input_data_type")
    if kind == "zero_data":
        return np.full(dims, b"", dtype=object) if datatype == "BYTES" else np.zeros(dims, dtype)
    if kind == "random_data":
        return _random(dims, dtype if datatype != "BYTES" else None, rng)
    if kind == "input_data_file":
        return _from_file(entry.input_data_file, dims, datatype, what, folder)
    raise ModelLoadError(f"{what} sets none of zero_data, random_data, input_data_file")


def _random(dims: tuple[int, ...], dtype: np.dtype[Any] | None,
            rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    if dtype is None:  # BYTES
        return np.array([rng.bytes(8) for _ in range(int(np.prod(dims)))],
                        dtype=object).reshape(dims)  # fmt: skip
    if dtype.kind == "f":
        return rng.random(dims).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, dims).astype(dtype)
    return rng.integers(0, 100, dims).astype(dtype)


def _from_file(file_name: str, dims: tuple[int, ...], datatype: str, what: str,
               folder: Path) -> np.ndarray:  # fmt: skip
    safe = repository.safe_file_name(file_name, f"{what} input_data_file")
    try:
        data = read_regular_file(folder / WARMUP_FOLDER / safe, f"{WARMUP_FOLDER}/{safe}",
                                 MAX_WARMUP_FILE_BYTES)  # fmt: skip
    except ModelLoadError as exc:
        raise ModelLoadError(f"{what}: {exc.message}") from exc
    count = int(np.prod(dims))
    if datatype == "BYTES":
        items, offset = [], 0
        for _ in range(count):
            if offset + 4 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, offset)
            items.append(data[offset + 4 : offset + 4 + length])
            offset += 4 + length
        if len(items) < count or offset > len(data):
            raise ModelLoadError(
                f"{what}: {WARMUP_FOLDER}/{safe} holds fewer than the {count} "
                "length-prefixed BYTES elements its dims need"
            )
        return np.array(items, dtype=object).reshape(dims)
    dtype = DTYPE_BY_DATATYPE[datatype]
    need = count * dtype.itemsize
    if len(data) < need:
        raise ModelLoadError(
            f"{what}: {WARMUP_FOLDER}/{safe} holds {len(data)} bytes, its dims "
            f"{list(dims)} of {datatype} need {need}"
        )
    return np.frombuffer(data, dtype=dtype, count=count).reshape(dims).copy()

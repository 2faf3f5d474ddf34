"""``dlserve bench``: closed-loop gRPC or REST load with N requests in flight.

Over REST (``--protocol http`` or an http:// ``--url``) each of the N
workers keeps one keep-alive connection and sends the same prepared
request bytes (the binary tensor data extension, outputs as JSON), reading
only the status line and headers it needs.

Requests are serialized once (unary) and responses are not decoded unless
they fail, so the client spends as little CPU as it can beside a server on
the same machine. With ``--streaming`` one ModelStreamInfer stream carries N
requests in flight, as ``perf_analyzer --streaming`` does.

What the user can fix (bad flags, an unreachable server, an unwritable
--json) raises `dlserve.errors.ClientError`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dlserve.errors import ClientError
from serving.datatypes import DTYPE_BY_DATATYPE

METHOD = "/inference.GRPCInferenceService/"


@dataclass
class LevelResult:
    concurrency: int
    batch_size: int
    streaming: bool
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float
    samples_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    error_codes: dict[str, int] = field(default_factory=dict)


def _percentiles(latencies: list[float]) -> tuple[float, float, float]:
    if not latencies:
        return (float("nan"),) * 3
    p = np.percentile(np.asarray(latencies) * 1e3, [50, 90, 99])
    return float(p[0]), float(p[1]), float(p[2])


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ClientError(f"--concurrency must be comma-separated integers, got {text!r}") from exc
    if not levels or any(c < 1 for c in levels):
        raise ClientError(f"--concurrency values must be >= 1, got {text!r}")
    return levels


async def _request(stub_channel: Any, args: argparse.Namespace, metadata: Any) -> Any:
    """A ModelInferRequest with random data shaped from the model's metadata."""
    import grpc

    from serving._generated import grpc_service_pb2 as pb
    from serving._generated import grpc_service_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(stub_channel)
    try:
        meta = await stub.ModelMetadata(
            pb.ModelMetadataRequest(name=args.model, version=args.version),
            timeout=10, metadata=metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as exc:
        raise ClientError(
            f"server at {args.url} answered {exc.code().name}: {exc.details()}"
        ) from exc
    rng = np.random.default_rng(0)
    request = pb.ModelInferRequest(model_name=args.model, model_version=args.version)
    for spec in meta.inputs:
        shape = list(spec.shape)
        if shape and shape[0] == -1:
            shape[0] = args.batch_size
        shape = [1 if d < 0 else d for d in shape]
        dtype = DTYPE_BY_DATATYPE.get(spec.datatype)
        if dtype is None or spec.datatype == "BYTES":
            raise ClientError(f"input '{spec.name}' is {spec.datatype}: bench sends numbers only")
        data = rng.standard_normal(shape).astype(dtype)
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        request.raw_input_contents.append(data.tobytes())
    return request


@dataclass
class _Window:
    """One concurrency level's measuring window (after ``warmup`` seconds, for
    ``duration``): latencies of the answers that succeeded, failures by code."""

    warmup: float
    duration: float
    latencies: list[float] = field(default_factory=list)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self.start = time.perf_counter() + self.warmup
        self.end = self.start + self.duration

    def result(self) -> tuple[list[float], int, collections.Counter[str], float]:
        elapsed = time.perf_counter() - self.start
        return self.latencies, sum(self.codes.values()), self.codes, elapsed


async def _unary_level(
    channel: Any, payload: bytes, concurrency: int, warmup: float, duration: float, md: Any
) -> tuple[list[float], int, collections.Counter[str], float]:
    import grpc

    call = channel.unary_unary(METHOD + "ModelInfer")  # bytes in, bytes out
    window = _Window(warmup, duration)
    now = time.perf_counter

    async def worker() -> None:
        while True:
            t0 = now()
            if t0 >= window.end:
                return
            try:
                await call(payload, timeout=30, metadata=md)
            except grpc.aio.AioRpcError as exc:
                if t0 >= window.start:
                    window.codes[exc.code().name] += 1
                continue
            if t0 >= window.start:
                window.latencies.append(now() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return window.result()


async def _stream_level(
    channel: Any, request: Any, concurrency: int, warmup: float, duration: float, md: Any
) -> tuple[list[float], int, collections.Counter[str], float]:
    from serving._generated import grpc_service_pb2 as pb

    call = channel.stream_stream(
        METHOD + "ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )(metadata=md)
    latencies: list[float] = []
    codes: collections.Counter[str] = collections.Counter()
    sent: dict[str, float] = {}
    now = time.perf_counter
    start = now() + warmup
    end = start + duration
    counter = 0

    async def send() -> None:
        nonlocal counter
        counter += 1
        request.id = str(counter)
        sent[request.id] = now()
        await call.write(request)

    for _ in range(concurrency):
        await send()
    in_flight = concurrency
    while in_flight:
        response = await call.read()
        if response is None or not hasattr(response, "infer_response"):
            break
        in_flight -= 1
        t0 = sent.pop(response.infer_response.id, None)
        t1 = now()
        if t0 is not None and t0 >= start:
            if response.error_message:
                codes["STREAM_ERROR"] += 1
            else:
                latencies.append(t1 - t0)
        if t1 < end:
            await send()
            in_flight += 1
    await call.done_writing()
    return latencies, sum(codes.values()), codes, now() - start


def _http_request(args: argparse.Namespace, address: str) -> bytes:
    from dlserve.http_client import RestClient, infer_body, model_path, raw_request

    client = RestClient(address, tls=False, tls_ca=None, token=args.auth_token, timeout=10)
    path = model_path(args.model, args.version)
    try:
        meta = client.call("GET", path)
    finally:
        client.close()
    rng = np.random.default_rng(0)
    inputs = []
    for spec in meta["inputs"]:
        shape = [args.batch_size if i == 0 and d == -1 else max(d, 1)
                 for i, d in enumerate(spec["shape"])]  # fmt: skip
        dtype = DTYPE_BY_DATATYPE.get(spec["datatype"])
        if dtype is None or spec["datatype"] == "BYTES":
            raise ClientError(f"input '{spec['name']}' is {spec['datatype']}: bench sends numbers")
        inputs.append((spec["name"], spec["datatype"], rng.standard_normal(shape).astype(dtype)))
    body, headers = infer_body(inputs)
    if args.auth_token:
        headers["Authorization"] = f"Bearer {args.auth_token}"
    return raw_request("POST", f"{path}/infer", body, headers)


async def _http_level(
    address: str, payload: bytes, concurrency: int, warmup: float, duration: float
) -> tuple[list[float], int, collections.Counter[str], float]:
    from dlserve.http_client import AsyncRestConnection

    window = _Window(warmup, duration)
    now = time.perf_counter

    async def worker() -> None:
        connection = AsyncRestConnection(address)
        try:
            while True:
                t0 = now()
                if t0 >= window.end:
                    return
                try:
                    status = await connection.send(payload)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    await connection.close()
                    if t0 >= window.start:
                        window.codes[type(exc).__name__] += 1
                    continue
                if t0 < window.start:
                    continue
                if status == 200:
                    window.latencies.append(now() - t0)
                else:
                    window.codes[f"HTTP_{status}"] += 1
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return window.result()


async def _run(args: argparse.Namespace, levels: list[int]) -> list[LevelResult]:
    import grpc

    from dlserve.http_client import resolve

    protocol, address, tls = resolve(args.url, getattr(args, "protocol", None))
    if protocol == "http":
        if tls or args.streaming:
            raise ClientError("bench over HTTP supports plain http:// and unary requests only")
        payload = _http_request(args, address)
        measured = [await _http_level(address, payload, c, args.warmup, args.duration)
                    for c in levels]  # fmt: skip
        return [_result(args, c, *m) for c, m in zip(levels, measured, strict=True)]
    args.url = address

    md = (("authorization", f"Bearer {args.auth_token}"),) if args.auth_token else None
    options = [("grpc.max_receive_message_length", 64 << 20),
               ("grpc.max_send_message_length", 64 << 20)]  # fmt: skip
    results = []
    async with grpc.aio.insecure_channel(args.url, options=options) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 10)
        except TimeoutError as exc:
            raise ClientError(f"cannot connect to {args.url}") from exc
        request = await _request(channel, args, md)
        payload = request.SerializeToString()
        for c in levels:
            if args.streaming:
                lat, errors, codes, elapsed = await _stream_level(
                    channel, request, c, args.warmup, args.duration, md
                )
            else:
                lat, errors, codes, elapsed = await _unary_level(
                    channel, payload, c, args.warmup, args.duration, md
                )
            results.append(_result(args, c, lat, errors, codes, elapsed))
    return results


def _result(
    args: argparse.Namespace, c: int, lat: list[float], errors: int,
    codes: collections.Counter[str], elapsed: float,
) -> LevelResult:  # fmt: skip
    p50, p90, p99 = _percentiles(lat)
    rps = len(lat) / elapsed if elapsed > 0 else 0.0
    return LevelResult(c, args.batch_size, bool(args.streaming), round(elapsed, 3), len(lat),
                       errors, rps, rps * args.batch_size, p50, p90, p99, dict(codes))  # fmt: skip


def measure(args: argparse.Namespace, levels: list[int]) -> list[LevelResult]:
    """Run the levels (the fields ``main`` reads from ``args``); for ``dlserve tune``."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux
        return asyncio.run(_run(args, levels))
    return uvloop.run(_run(args, levels))


def main(args: argparse.Namespace) -> int:
    from dlserve.http_client import resolve

    levels = parse_concurrency(args.concurrency)
    if args.duration <= 0 or args.warmup < 0:
        raise ClientError("--duration must be > 0 and --warmup >= 0")
    if args.batch_size < 1:
        raise ClientError("--batch-size must be >= 1")
    results = measure(args, levels)
    mode = "ModelStreamInfer" if args.streaming else "ModelInfer"
    if resolve(args.url, getattr(args, "protocol", None))[0] == "http":
        mode = "REST infer"
    print(f"{args.model} @ {args.url}  {mode}  batch {args.batch_size}  {args.duration:g}s/level")
    print(f"{'conc':>5} {'req/s':>10} {'samples/s':>11} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'errors':>7}")  # fmt: skip
    for r in results:
        print(f"{r.concurrency:>5} {r.throughput_rps:>10.1f} {r.samples_per_s:>11.1f} "
              f"{r.p50_ms:>8.3f} {r.p90_ms:>8.3f} {r.p99_ms:>8.3f} {r.errors:>7}")  # fmt: skip
    if args.json is not None:
        try:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        except OSError as exc:
            raise ClientError(f"cannot write --json {args.json}: {exc.strerror}") from exc
        print(f"wrote {args.json}", file=sys.stderr)
    return 0

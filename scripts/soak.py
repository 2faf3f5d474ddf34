#!/usr/bin/env python3
"""Soak test: closed-loop load with a share of bad requests for N minutes.

    .venv/bin/python scripts/soak.py --minutes 10 --concurrency 32 --bad-ratio 0.1

Starts ``dlserve serve`` on free loopback ports over ``--repository``
(default ``models/``), unless ``--url`` points at a running server (then
``--pid`` lets it sample that server's memory). ``--concurrency`` clients
keep one request each in flight. Every good request is checked against
onnxruntime run in-process on the same model file; every bad request (unknown
model or version, wrong datatype, shape, byte length, input name, a batch over
max_batch_size, zero rows, bytes that are no protobuf message) must get its
contract status code.

``--stuck-streams N`` adds N ModelStreamInfer clients that send large
requests as fast as the server reads them and never read an answer (the
server's stream window must bound what they cost). ``--publish-every S``
serves a copy of the repository in poll mode and copies the first model's
newest version to a new version number every S seconds (the default version
policy then retires the old one while traffic flows).

Reports the server's RSS every 10 s and, each minute, throughput and
p50/p99 latency of good requests. Exits non-zero if any good request failed,
any bad one got the wrong code, or RSS grew by more than ``--max-rss-growth``
after the warm-up minute. ``--json FILE`` writes the whole record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from devtools.procs import rss_kb  # noqa: E402
from serving._generated import grpc_service_pb2 as pb  # noqa: E402
from serving._generated import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

RSS_EVERY = 10.0
MINUTE = 60.0


@dataclass
class Model:
    name: str
    version: str
    input: str
    shape: list[int]  # without the batch dimension
    max_batch: int
    outputs: list[str]
    session: ort.InferenceSession


@dataclass
class Minute:
    good: int = 0
    bad: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class Tally:
    good_ok: int = 0
    good_errors: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    bad_ok: int = 0  # bad requests that got their expected code
    bad_wrong: list[str] = field(default_factory=list)
    minutes: dict[int, Minute] = field(default_factory=dict)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds, kB)

    last_minute: int = 0

    def minute(self, t: float) -> Minute:
        return self.minutes.setdefault(min(int(t // MINUTE), self.last_minute), Minute())


def request(model: Model, x: np.ndarray, **overrides: Any) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(
        model_name=overrides.get("name", model.name), model_version=overrides.get("version", "")
    )
    r.inputs.add(
        name=overrides.get("input", model.input),
        datatype=overrides.get("datatype", "FP32"),
        shape=overrides.get("shape", list(x.shape)),
    )
    r.raw_input_contents.append(overrides.get("raw", x.tobytes()))
    return r


def bad_request(model: Model, rng: np.random.Generator) -> tuple[str, Any, grpc.StatusCode]:
    """(kind, request or raw bytes, expected code)."""
    x = rng.standard_normal((2, *model.shape)).astype(np.float32)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    kind = random.choice(
        ["model", "version", "datatype", "shape", "bytes", "input", "batch", "zero", "garbage"]
    )
    if kind == "model":
        return kind, request(model, x, name="no-such-model"), grpc.StatusCode.NOT_FOUND
    if kind == "version":
        return kind, request(model, x, version="987654"), grpc.StatusCode.NOT_FOUND
    if kind == "datatype":
        return kind, request(model, x, datatype="INT32"), invalid
    if kind == "shape":
        return kind, request(model, x, shape=[2, *model.shape[:-1], model.shape[-1] + 1]), invalid
    if kind == "bytes":
        return kind, request(model, x, raw=x.tobytes()[:-4]), invalid
    if kind == "input":
        return kind, request(model, x, input="not-an-input"), invalid
    if kind == "batch":
        big = np.zeros((model.max_batch + 1, *model.shape), np.float32)
        return kind, request(model, big), invalid
    if kind == "zero":
        return kind, request(model, np.zeros((0, *model.shape), np.float32)), invalid
    return kind, b"\x0f\x0f\x0f" + rng.bytes(8), invalid


async def client(
    index: int,
    channel: grpc.aio.Channel,
    models: list[Model],
    tally: Tally,
    stop_at: float,
    start: float,
    bad_ratio: float,
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    rng = np.random.default_rng(index)
    while time.monotonic() < stop_at:
        model = models[int(rng.integers(len(models)))]
        now = time.monotonic()
        minute = tally.minute(now - start)
        if rng.random() < bad_ratio:
            kind, message, want = bad_request(model, rng)
            try:
                if isinstance(message, bytes):
                    await raw_infer(message, timeout=60)
                else:
                    await stub.ModelInfer(message, timeout=60)
                got = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                got = error.code()
            minute.bad += 1
            if got == want:
                tally.bad_ok += 1
            else:
                tally.bad_wrong.append(f"{kind}: wanted {want.name}, got {got.name}")
            continue
        rows = int(rng.integers(1, 5))
        x = rng.uniform(-3, 3, (rows, *model.shape)).astype(np.float32)
        sent = time.perf_counter()
        try:
            reply = await stub.ModelInfer(request(model, x), timeout=60)
        except grpc.aio.AioRpcError as error:
            tally.good_errors.append(f"{model.name}: {error.code().name}: {error.details()}")
            continue
        minute.latencies.append(time.perf_counter() - sent)
        minute.good += 1
        tally.good_ok += 1
        want = model.session.run(model.outputs, {model.input: x})
        for out, raw, expected in zip(reply.outputs, reply.raw_output_contents, want, strict=True):
            got = np.frombuffer(raw, np.float32).reshape(list(out.shape))
            if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
                tally.wrong_answers.append(f"{model.name}/{out.name}: {got} != {expected}")


async def sample_rss(pid: int | None, tally: Tally, start: float, stop_at: float) -> None:
    while True:
        now = time.monotonic()
        if pid is not None:
            kb = rss_kb(pid)
            tally.rss.append((now - start, kb))
            print(f"[{now - start:6.0f} s] server RSS {kb / 1024:7.1f} MiB", flush=True)
        if now >= stop_at:
            return
        await asyncio.sleep(min(RSS_EVERY, max(0.0, stop_at - now)) or RSS_EVERY)


async def report_minutes(tally: Tally, start: float, stop_at: float, total_minutes: float) -> None:
    reported = 0
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        current = int((now - start) // MINUTE)
        while reported <= tally.last_minute and (
            reported < current or (now >= stop_at and reported in tally.minutes)
        ):
            m = tally.minutes.get(reported, Minute())
            print(minute_line(reported, m, total_minutes), flush=True)
            reported += 1
        if now >= stop_at:
            return


def minute_seconds(index: int, total_minutes: float) -> float:
    return max(1e-9, min(MINUTE, total_minutes * MINUTE - index * MINUTE))


def minute_line(index: int, m: Minute, total_minutes: float) -> str:
    lat = np.array(m.latencies) * 1e3 if m.latencies else np.zeros(1)
    rate = m.good / minute_seconds(index, total_minutes)
    return (
        f"minute {index + 1:2d}: {rate:7.1f} good req/s, {m.bad:6d} bad, "
        f"p50 {np.percentile(lat, 50):6.2f} ms, p99 {np.percentile(lat, 99):6.2f} ms"
    )


async def load_models(url: str, names: list[str], repository: Path) -> list[Model]:
    models = []
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in names:
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=30)
            config = (await stub.ModelConfig(pb.ModelConfigRequest(name=name), timeout=30)).config
            version = meta.versions[-1]
            (inp,) = meta.inputs
            if inp.datatype != "FP32" or config.max_batch_size <= 0:
                raise SystemExit(f"soak: model {name} must batch and take one FP32 input")
            path = repository / name / version / (config.default_model_filename or "model.onnx")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            models.append(
                Model(
                    name,
                    version,
                    inp.name,
                    list(inp.shape[1:]),
                    config.max_batch_size,
                    [o.name for o in meta.outputs],
                    session,
                )  # fmt: skip
            )
    return models


async def stuck_stream(channel: grpc.aio.Channel, model: Model, stop_at: float) -> None:
    """Sends for as long as the server reads; never reads an answer."""
    x = np.ones((model.max_batch, *model.shape), np.float32)

    async def requests() -> Any:
        while time.monotonic() < stop_at:
            yield request(model, x)

    call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests())
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    call.cancel()


async def publish(repository: Path, model: str, every: float, stop_at: float) -> None:
    """A new version of ``model`` every ``every`` seconds (a copy of its newest)."""
    import shutil

    folder = repository / model
    while time.monotonic() + every < stop_at:
        await asyncio.sleep(every)
        versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        staging = folder / f".staging-{versions[-1] + 1}"
        shutil.copytree(folder / str(versions[-1]), staging)
        staging.rename(folder / str(versions[-1] + 1))
        print(f"soak: published {model} version {versions[-1] + 1}")


async def soak(args: argparse.Namespace, url: str, pid: int | None) -> Tally:
    models = await load_models(url, args.models.split(","), args.repository)
    tally = Tally(last_minute=max(0, int(np.ceil(args.minutes)) - 1))
    start = time.monotonic()
    stop_at = start + args.minutes * MINUTE
    channels = [grpc.aio.insecure_channel(url) for _ in range(args.channels)]
    try:
        await asyncio.gather(
            sample_rss(pid, tally, start, stop_at),
            report_minutes(tally, start, stop_at, args.minutes),
            *(
                client(
                    i, channels[i % len(channels)], models, tally, stop_at, start, args.bad_ratio
                )  # fmt: skip
                for i in range(args.concurrency)
            ),
            *(
                stuck_stream(channels[i % len(channels)], models[0], stop_at)
                for i in range(args.stuck_streams)
            ),  # fmt: skip
            *(
                [publish(args.repository, models[0].name, args.publish_every, stop_at)]
                if args.publish_every > 0
                else []
            ),  # fmt: skip
        )
    finally:
        for channel in channels:
            await channel.close()
    return tally


def summarize(args: argparse.Namespace, tally: Tally) -> tuple[dict[str, Any], list[str]]:
    warm = [kb for t, kb in tally.rss if t >= args.warmup_secs]
    after_warmup = warm[0] if warm else None
    final = tally.rss[-1][1] if tally.rss else None
    growth = (final - after_warmup) / after_warmup if after_warmup and final else None
    peak = max(warm) if warm else None
    record: dict[str, Any] = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "bad_ratio": args.bad_ratio,
        "models": args.models,
        "good_requests": tally.good_ok + len(tally.good_errors),
        "good_errors": len(tally.good_errors),
        "wrong_answers": len(tally.wrong_answers),
        "bad_requests": tally.bad_ok + len(tally.bad_wrong),
        "bad_wrong_code": len(tally.bad_wrong),
        "rss_kb": tally.rss,
        "rss_after_warmup_kb": after_warmup,
        "rss_final_kb": final,
        "rss_peak_after_warmup_kb": peak,
        "rss_growth_after_warmup": growth,
        "per_minute": [
            {
                "minute": i + 1,
                "good_rps": m.good / minute_seconds(i, args.minutes),
                "bad": m.bad,
                "p50_ms": float(np.percentile(m.latencies, 50) * 1e3) if m.latencies else None,
                "p99_ms": float(np.percentile(m.latencies, 99) * 1e3) if m.latencies else None,
            }
            for i, m in sorted(tally.minutes.items())
        ],
        "first_errors": tally.good_errors[:10] + tally.wrong_answers[:10] + tally.bad_wrong[:10],
    }
    failures = []
    if tally.good_errors or tally.wrong_answers:
        failures.append(f"{len(tally.good_errors)} errors, {len(tally.wrong_answers)} wrong "
                        "answers on good requests")  # fmt: skip
    if tally.bad_wrong:
        failures.append(f"{len(tally.bad_wrong)} bad requests got the wrong code")
    if growth is not None and growth > args.max_rss_growth:
        failures.append(f"RSS grew {growth:.1%} after warm-up (limit {args.max_rss_growth:.0%})")
    return record, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--bad-ratio", type=float, default=0.1)
    p.add_argument("--models", default="mlp-circle,digits-cnn", help="comma-separated")
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--url", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, to sample its RSS")
    p.add_argument("--channels", type=int, default=4, help="gRPC connections the clients share")
    p.add_argument("--warmup-secs", type=float, default=60.0)
    p.add_argument("--max-rss-growth", type=float, default=0.10)
    p.add_argument("--stuck-streams", type=int, default=0, help="streams that never read")
    p.add_argument("--publish-every", type=float, default=0.0, metavar="S",
                   help="poll mode: a new version of the first model every S seconds")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the record here")
    p.add_argument("serve_args", nargs="*", help="extra `dlserve serve` flags (after --)")
    args = p.parse_args(argv)

    server = None
    if args.publish_every > 0 and not args.url:
        import shutil
        import tempfile

        copy = Path(tempfile.mkdtemp(prefix="dlserve-soak-")) / "models"
        shutil.copytree(args.repository, copy)
        args.repository = copy
        args.serve_args = [*args.serve_args, "--model-control-mode", "poll",
                           "--repository-poll-secs", "2"]  # fmt: skip
    if args.url:
        url, pid = args.url, args.pid
    else:
        from devtools.serverproc import ServerProcess

        server = ServerProcess(args.repository, *args.serve_args, allow_loop_stalls=True).start()
        assert server.proc is not None
        url, pid = server.url, server.proc.pid
        print(f"soak: started dlserve (pid {pid}) on {url}: {' '.join(server.command())}")
    print(
        f"soak: {args.minutes:g} min, concurrency {args.concurrency}, {args.bad_ratio:.0%} bad "
        f"requests, models {args.models}, cpus {os.cpu_count()}"
    )
    try:
        tally = asyncio.run(soak(args, url, pid))
    finally:
        if server is not None:
            code = server.stop()
            print(f"soak: server exited with {code}")
            stalls = server.loop_stalls()
            print(f"soak: {len(stalls)} event-loop stall warning(s) over 100 ms")
            for line in stalls[:5]:
                print(f"soak:   {line}")
            if code != 0:
                print(server.log()[-3000:])
    record, failures = summarize(args, tally)
    print(
        f"soak: {record['good_requests']} good requests, {record['good_errors']} errors, "
        f"{record['wrong_answers']} wrong answers; {record['bad_requests']} bad requests, "
        f"{record['bad_wrong_code']} with the wrong code"
    )
    if record["rss_growth_after_warmup"] is not None:
        mib = {k: record[k] / 1024 for k in ("rss_after_warmup_kb", "rss_final_kb",
                                              "rss_peak_after_warmup_kb")}  # fmt: skip
        print(
            f"soak: RSS after warm-up {mib['rss_after_warmup_kb']:.1f} MiB, final "
            f"{mib['rss_final_kb']:.1f} MiB, peak {mib['rss_peak_after_warmup_kb']:.1f} MiB, "
            f"growth {record['rss_growth_after_warmup']:+.1%}"
        )
    for line in record["first_errors"]:
        print(f"soak: error: {line}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    for failure in failures:
        print(f"soak: FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

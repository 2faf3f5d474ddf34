#!/usr/bin/env python3
"""A longer fuzz run than ``make test`` does: the generators of
``devtools/fuzzing.py`` (which ``tests/integration/test_fuzz.py`` runs
briefly) against a fresh ``dlserve serve``.

    .venv/bin/python scripts/fuzz.py --requests 100000

Every answer must be OK or a status the contract gives to a client mistake
(never INTERNAL or UNKNOWN), valid requests must match onnxruntime, garbage
bodies must be refused cleanly, and the server must be alive and correct at
the end with no traceback in its log. Hypothesis shrinks a failure to a
small example and prints it; exit status 1 then.

Batching (requests that must not share a batch) and stream backpressure
(clients that read slowly or never) have their own long run, which imports
no test module: ``scripts/fuzz_batching.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import onnxruntime as ort  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from devtools import fuzzing as fz  # noqa: E402
from devtools.serverproc import ServerProcess  # noqa: E402
from serving._generated import grpc_service_pb2_grpc as pb_grpc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100_000, help="ModelInfer requests to send")
    p.add_argument("--burst", type=int, default=32, help="requests in flight per example")
    p.add_argument("--garbage", type=int, default=2_000, help="garbage bodies to send")
    p.add_argument("serve_args", nargs="*", help="extra `dlserve serve` flags (after --)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dlserve-fuzz-") as tmp:
        repo = fz.build_repo(Path(tmp))
        sessions = {
            name: ort.InferenceSession(
                str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            for name in ("mlp", "fixed")
        }
        with ServerProcess(repo, *args.serve_args) as server, grpc.insecure_channel(
            server.url
        ) as channel:  # fmt: skip
            return run(args, server, channel, sessions)


def run(
    args: argparse.Namespace,
    server: ServerProcess,
    channel: grpc.Channel,
    sessions: dict[str, ort.InferenceSession],
) -> int:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    raw = channel.unary_unary(fz.INFER)
    codes: Counter[str] = Counter()
    started = time.monotonic()
    valid_share = max(1, args.burst // 4)

    @settings(
        max_examples=max(1, args.requests // args.burst), deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(
        st.lists(
            st.one_of(fz.random_requests(), fz.near_misses()),
            min_size=args.burst - valid_share, max_size=args.burst - valid_share,
        ),
        st.lists(fz.valid_requests(), min_size=valid_share, max_size=valid_share),
        st.lists(st.binary(max_size=64), min_size=1, max_size=1),
    )  # fmt: skip
    def burst(randoms: list[Any], valids: list[Any], garbage: list[bytes]) -> None:
        futures = [stub.ModelInfer.future(r, timeout=120) for r in randoms]
        valid_futures = [stub.ModelInfer.future(r, timeout=120) for r, _, _ in valids]
        garbage_futures = [raw.future(b, timeout=120) for b in garbage]
        for request, future in zip(randoms + garbage, futures + garbage_futures, strict=True):
            try:
                future.result()
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1
                fz.assert_client_status(request, error)
        for (request, x, asked), future in zip(valids, valid_futures, strict=True):
            fz.check_valid(future.result(), request, x, asked, sessions)
            codes["OK (checked)"] += 1
        total = sum(codes.values())
        if total % (args.burst * 100) < args.burst + 1:
            print(
                f"{total} requests, {time.monotonic() - started:.0f} s: {dict(codes)}", flush=True
            )

    try:
        burst()
        fz.assert_alive_and_correct(server, channel, sessions)
    except Exception as exc:  # hypothesis has printed the shrunk example
        print(f"fuzz: FAIL after {sum(codes.values())} requests: {exc!r}"[:4000], file=sys.stderr)
        return 1
    print(f"fuzz: {sum(codes.values())} requests in {time.monotonic() - started:.0f} s, "
          f"all answered within the contract: {dict(codes)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

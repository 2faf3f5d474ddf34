"""Background load for monitoring tests: tritonclient threads sending good
requests to every model plus a share of bad ones, so latency, throughput,
batch-size and error series all exist.

    with Load(server.url, {"mlp": 2}):
        ...  # scrape, query Prometheus, open the live page
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

#: The bad requests, in turn: (what is wrong, expected gRPC status).
BAD_KINDS = ("shape", "version", "model")
EXPECTED_FAILURES = {"StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"}


def good_input(features: int, rows: int, seed: int = 0) -> grpcclient.InferInput:
    data = np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)
    tensor = grpcclient.InferInput("input", [rows, features], "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def send_bad(client: grpcclient.InferenceServerClient, model: str, features: int, kind: str) -> str:
    """Send one bad request; returns the status it got."""
    try:
        if kind == "shape":
            client.infer(model, [good_input(features + 1, 1)])
        elif kind == "version":
            client.infer(model, [good_input(features, 1)], model_version="99")
        else:
            client.infer("no-such-model", [good_input(features, 1)])
    except InferenceServerException as exc:
        return str(exc.status())
    raise AssertionError(f"bad request ({kind}) to {model} succeeded")


class Load:
    """``threads`` closed-loop clients per model; every ``bad_every``-th
    request is a bad one; ``pause`` seconds between requests keep the two
    cores free enough for the server, Prometheus and the browser."""

    def __init__(
        self,
        url: str,
        models: dict[str, int],
        threads: int = 1,
        bad_every: int = 10,
        pause: float = 0.002,
    ) -> None:
        self.url = url
        self.models = models
        self.threads = threads
        self.bad_every = bad_every
        self.pause = pause
        self.ok = 0
        self.bad = 0
        self.unexpected: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _run(self, model: str, features: int, seed: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        kinds = itertools.cycle(BAD_KINDS)
        try:
            for i in itertools.count(1):
                if self._stop.is_set():
                    return
                try:
                    if i % self.bad_every == 0:
                        status = send_bad(client, model, features, next(kinds))
                        with self._lock:
                            self.bad += 1
                            if status not in EXPECTED_FAILURES:
                                self.unexpected.append(status)
                    else:
                        client.infer(model, [good_input(features, 1 + i % 4, seed + i)])
                        with self._lock:
                            self.ok += 1
                except Exception as exc:  # noqa: BLE001 - reported by stop()
                    with self._lock:
                        self.unexpected.append(repr(exc))
                time.sleep(self.pause)
        finally:
            client.close()

    def start(self) -> "Load":
        for n, (model, features) in enumerate(self.models.items()):
            for t in range(self.threads):
                worker = threading.Thread(
                    target=self._run, args=(model, features, 1000 * (n * self.threads + t)),
                    name=f"load-{model}-{t}", daemon=True,
                )  # fmt: skip
                worker.start()
                self._workers.append(worker)
        return self

    def stop(self, check: bool = True) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        if check:
            assert not self.unexpected, f"unexpected failures under load: {self.unexpected[:5]}"

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop(check=exc_type is None)

"""Helpers for the priority and queue-policy tests: one request in a thread
through tritonclient (gRPC or HTTP), each recording when it completed, and
the server's queue depth per priority level from /metrics."""

from __future__ import annotations

import re
import threading
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from devtools.serverproc import ServerProcess


def queue_depths(server: ServerProcess, model: str) -> dict[int, float]:
    """dlserve_queue_depth of ``model`` by priority level."""
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
    pattern = (
        rf'^dlserve_queue_depth{{model="{re.escape(model)}",priority="(\d+)",version="\d+"}} (\S+)$'
    )
    return {int(level): float(value) for level, value in re.findall(pattern, text, re.M)}


def infer(server: ServerProcess, protocol: str, model: str, priority: int = 0,
          timeout: int | None = None) -> np.ndarray:  # fmt: skip
    """One request of one zero row; the logits, or InferenceServerException."""
    x = np.zeros((1, 2), np.float32)
    if protocol == "grpc":
        gclient = grpcclient.InferenceServerClient(server.url)
        tensor = grpcclient.InferInput("input", [1, 2], "FP32")
        tensor.set_data_from_numpy(x)
        try:
            result = gclient.infer(model, [tensor], priority=priority, timeout=timeout)
            return result.as_numpy("logits")
        finally:
            gclient.close()
    hclient = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    htensor = httpclient.InferInput("input", [1, 2], "FP32")
    htensor.set_data_from_numpy(x)
    try:
        hresult = hclient.infer(model, [htensor], priority=priority, timeout=timeout)
        return hresult.as_numpy("logits")
    finally:
        hclient.close()


class Requests:
    """Requests sent in threads; ``done`` lists their tags in completion order."""

    def __init__(self, server: ServerProcess, protocol: str, model: str) -> None:
        self.server, self.protocol, self.model = server, protocol, model
        self.done: list[str] = []
        self.errors: dict[str, InferenceServerException] = {}
        #: Anything else a client raised (never expected).
        self.failures: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def send(self, tag: str, priority: int = 0, timeout: int | None = None) -> None:
        def run() -> None:
            try:
                infer(self.server, self.protocol, self.model, priority, timeout)
            except InferenceServerException as exc:
                with self._lock:
                    self.errors[tag] = exc
            except Exception as exc:  # a client failure shows in the test's assertion
                with self._lock:
                    self.failures[tag] = repr(exc)
            with self._lock:
                self.done.append(tag)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive(), "a request never completed"
        assert self.failures == {}, self.failures

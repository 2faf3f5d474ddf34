"""ModelManager's reload logic with a fake runtime: the "model file" is a
line of text the factory reads (a number to multiply by, or "broken"), so
each test says exactly which bytes load and which fail, without onnxruntime.

Built through the composition root (``App`` with ``runtime_factory``), as
the server builds it; requests go through the service."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest

from devtools.onnx_models import config_text
from serving.app import App
from serving.errors import FailedPrecondition, ModelLoadError, ModelNotReady, ShuttingDown
from serving.runtime import TensorInfo
from serving.settings import ServingSettings
from serving.tensors import InferRequest, Tensor


class FakeRuntime:
    provider = "FakeProvider"
    inputs: Sequence[TensorInfo] = (TensorInfo("input", "FP32", (-1, 2)),)
    outputs: Sequence[TensorInfo] = (
        TensorInfo("logits", "FP32", (-1, 2)),
        TensorInfo("probabilities", "FP32", (-1, 2)),
    )
    defaults: Sequence[TensorInfo] = ()

    def __init__(self, factor: float, gate: threading.Event | None) -> None:
        self.factor = factor
        self.gate = gate

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.gate is not None and feeds["input"][0, 0] != 0:  # warm-up rows are zeros
            assert self.gate.wait(10), "test forgot to open the gate"
        x = feeds["input"] * self.factor
        return [x, x]


class Factory:
    """Reads the model file: a factor, or "broken" (the load fails)."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.gate: threading.Event | None = None
        self.load_gate: threading.Event | None = None

    def __call__(self, path: Path, settings: ServingSettings, label: str) -> FakeRuntime:
        self.loads.append(label)
        if self.load_gate is not None:
            assert self.load_gate.wait(10), "test forgot to open the load gate"
        text = path.read_text().strip()
        if text == "broken":
            raise ModelLoadError(f"{path.name} is broken")
        return FakeRuntime(float(text), self.gate)


def write(repo: Path, version: int, content: str, policy: str = "", name: str = "m") -> None:
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    model = folder / str(version) / "model.onnx"
    model.write_text(content)
    # a new mtime for every write, even within one clock tick
    stamp = time.time_ns() + len(content) * 1000 + version
    os.utime(model, ns=(stamp, stamp))
    (folder / "config.pbtxt").write_text(
        config_text(name, labels=False, dynamic_batching=False) + policy
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_app(repo: Path, factory: Factory, mode: str = "none") -> App:
    settings = ServingSettings(
        model_repository=repo, model_control_mode=mode, inference_threads=2, grpc_port=0
    )  # type: ignore[arg-type]
    return App(settings, runtime_factory=factory)


def request(value: float = 1.0, version: str = "") -> InferRequest:
    x = np.full((1, 2), value, np.float32)
    return InferRequest("m", version, (Tensor("input", "FP32", x.shape, x.reshape(-1)),))


async def infer(app: App, value: float = 1.0, version: str = "") -> float:
    service = app.service
    response = await service.answer(service.begin(request(value, version), time.perf_counter()))
    return float(response.outputs[0].data.reshape(-1)[0])


def states(app: App) -> dict[str, tuple[str, str]]:
    return {row.version: (row.state, row.reason) for row in app.service.repository_index()}


def test_a_broken_reload_never_replaces_the_serving_load(
    repo: Path, factory: Factory, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        write(repo, 1, "2")
        app = make_app(repo, factory)
        await app.manager.start()
        assert await infer(app) == 2.0
        write(repo, 1, "broken")
        await app.manager.sync()
        assert await infer(app) == 2.0  # still the first load
        state, reason = states(app)["1"]
        assert state == "READY" and "reload failed" in reason and "broken" in reason
        write(repo, 1, "3")  # fixed bytes load again
        await app.manager.sync()
        assert await infer(app) == 3.0
        await app.manager.stop()

    loop.run_until_complete(main())


def test_a_failed_version_falls_back_under_the_version_policy(
    repo: Path, factory: Factory, loop: asyncio.AbstractEventLoop
) -> None:
    latest = "version_policy { latest { num_versions: 1 } }\n"

    async def main() -> None:
        write(repo, 1, "2", latest)
        app = make_app(repo, factory)
        await app.manager.start()
        write(repo, 2, "broken", latest)
        await app.manager.sync()
        assert await infer(app) == 2.0  # version 1 serves on
        index = states(app)
        assert index["1"][0] == "READY"
        assert index["2"][0] == "UNAVAILABLE" and "broken" in index["2"][1]
        with pytest.raises(ModelNotReady, match="broken"):
            await infer(app, version="2")
        write(repo, 2, "5", latest)  # a good version 2 replaces version 1
        await app.manager.sync()
        assert await infer(app) == 5.0
        assert [row.version for row in app.service.repository_index(ready_only=True)] == ["2"]
        await app.manager.stop()

    loop.run_until_complete(main())


def test_unchanged_bad_bytes_are_not_retried(
    repo: Path, factory: Factory, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        write(repo, 1, "broken")
        app = make_app(repo, factory)
        await app.manager.start()
        for _ in range(3):
            await app.manager.sync()
        assert factory.loads == ["m:1"]
        write(repo, 1, "4")
        await app.manager.sync()
        assert factory.loads == ["m:1", "m:1"]
        assert await infer(app) == 4.0
        await app.manager.stop()

    loop.run_until_complete(main())


def test_unload_answers_the_requests_in_flight(
    repo: Path, factory: Factory, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        write(repo, 1, "2")
        factory.gate = threading.Event()
        app = make_app(repo, factory, mode="explicit")
        await app.manager.start(["m"])
        running = [asyncio.ensure_future(infer(app, value=i + 1)) for i in range(6)]
        await asyncio.sleep(0.05)  # every request is queued or running
        unload = asyncio.ensure_future(app.service.unload_model("m"))
        await asyncio.sleep(0.05)
        assert not unload.done()  # waits for the queued requests
        with pytest.raises(ModelNotReady):  # but no new one gets in
            await infer(app)
        factory.gate.set()
        assert await asyncio.gather(*running) == [2.0 * (i + 1) for i in range(6)]
        await unload
        assert states(app)["1"] == ("UNAVAILABLE", "unloaded")
        await app.manager.stop()

    loop.run_until_complete(main())


def test_a_retired_runtime_is_freed_without_the_cyclic_gc(
    repo: Path, factory: Factory, loop: asyncio.AbstractEventLoop
) -> None:
    """Probe F3: a reload or an unload frees the old session at once."""

    def runtime_of(app: App) -> weakref.ref[object]:
        return weakref.ref(app.manager.serving("m")[0].runtime)

    async def freed(ref: weakref.ref[object]) -> bool:
        """Whether the object goes within 5 s with the cyclic GC off. A
        thread that just ran it (a load, an inference) may hold it on its
        stack for a moment; a reference cycle would hold it for ever."""
        for _ in range(500):
            if ref() is None:
                return True
            await asyncio.sleep(0.01)
        return False

    async def main() -> None:
        write(repo, 1, "2")
        app = make_app(repo, factory, mode="explicit")
        await app.manager.start(["m"])
        for _ in range(3):
            await infer(app)
        first = runtime_of(app)
        write(repo, 1, "3")
        await app.service.load_model("m")  # a reload of the same version
        assert await infer(app) == 3.0
        assert await freed(first)
        second = runtime_of(app)
        await app.service.unload_model("m")
        assert await freed(second)
        await app.manager.stop()

    gc.collect()
    was_enabled = gc.isenabled()  # the session runs with it off (tests/conftest.py)
    gc.disable()
    try:
        loop.run_until_complete(main())
    finally:
        if was_enabled:
            gc.enable()


def test_no_load_after_drain_and_drain_does_not_wait_for_a_load(
    repo: Path, factory: Factory, loop: asyncio.AbstractEventLoop
) -> None:
    """Probe F19 and F22: RepositoryModelLoad during the drain is refused;
    a load in progress does not hold up the drain."""

    async def main() -> None:
        write(repo, 1, "2")
        write(repo, 1, "2", name="slow")
        app = make_app(repo, factory, mode="explicit")
        await app.manager.start(["m"])
        factory.load_gate = threading.Event()
        loading = asyncio.ensure_future(app.service.load_model("slow"))
        await asyncio.sleep(0.05)
        assert factory.loads[-1] == "slow:1"  # inside the (blocked) load
        assert await asyncio.wait_for(app.manager.drain(timeout=5), 5) is True
        with pytest.raises(ShuttingDown, match="shutting down"):  # UNAVAILABLE
            await app.service.load_model("m")
        assert not app.service.model_ready("m")
        factory.load_gate.set()
        with pytest.raises(ShuttingDown, match="began to shut down"):
            await loading
        assert not app.service.model_ready("slow")  # never started serving
        await app.manager.stop()

    loop.run_until_complete(main())


def test_load_and_unload_need_explicit_mode(
    repo: Path, factory: Factory, loop: asyncio.AbstractEventLoop
) -> None:
    async def main() -> None:
        write(repo, 1, "2")
        app = make_app(repo, factory)
        await app.manager.start()
        with pytest.raises(FailedPrecondition, match="explicit"):
            await app.service.load_model("m")
        with pytest.raises(FailedPrecondition, match="explicit"):
            await app.service.unload_model("m")
        await app.manager.stop()

    loop.run_until_complete(main())

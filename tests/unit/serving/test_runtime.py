"""The onnxruntime boundary: a CPU session runs through the C++ session's
``run`` (no Python wrapper), with the same answers and the same errors as
the public ``InferenceSession.run``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from devtools.onnx_models import mlp
from serving.errors import InferenceFailed
from serving.runtime import OnnxRuntime, _direct_run


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runtime") / "model.onnx"
    onnx.save(mlp(features=3, hidden=(5,), classes=4, seed=7), str(path))
    return path


def test_a_cpu_session_runs_the_inner_session_and_answers_as_the_public_run(
    model_path: Path,
) -> None:
    runtime = OnnxRuntime(model_path, device="cpu")
    assert runtime._run.__self__ is runtime._session._sess  # type: ignore[attr-defined]
    x = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    public = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = public.run(["logits", "probabilities"], {"input": x})
    got = runtime.run({"input": x})
    assert [o.shape for o in got] == [(6, 4), (6, 4)]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_an_onnxruntime_failure_is_still_inference_failed(model_path: Path) -> None:
    runtime = OnnxRuntime(model_path, device="cpu")
    with pytest.raises(InferenceFailed, match="onnxruntime failed"):
        runtime.run({"input": np.ones((2, 7), np.float32)})  # 7 features, the graph takes 3
    with pytest.raises(InferenceFailed, match="onnxruntime failed"):
        runtime.run({})  # the required input missing: the wrapper's check is gone, C++'s stays


def test_a_session_without_the_inner_object_keeps_the_public_run() -> None:
    class Wrapped:
        def run(self, names: list[str], feeds: dict[str, np.ndarray], options: None) -> list[str]:
            return names

    session = Wrapped()
    assert _direct_run(session) == session.run


def test_failed_runs_are_logged_first_and_then_counted(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = OnnxRuntime(model_path, device="cpu", label="m:1")
    bad = {"input": np.ones((2, 7), np.float32)}
    with caplog.at_level("WARNING", logger="serving.runtime"):
        for _ in range(3):
            with pytest.raises(InferenceFailed):
                runtime.run(bad)
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.runtime"]
    assert len(lines) == 1, lines  # the next two fall within FAILURE_LOG_EVERY_S
    assert lines[0].startswith("m:1: onnxruntime run failed (1 time(s) since the last report)")
    runtime._logged_at -= 60  # as if the report interval had passed
    caplog.clear()
    with caplog.at_level("WARNING", logger="serving.runtime"), pytest.raises(InferenceFailed):
        runtime.run(bad)
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.runtime"]
    assert len(lines) == 1 and "(3 time(s) since the last report)" in lines[0], lines

"""model_warmup through the composition root with a fake runtime that
records every run it gets, and whether the model was ready at that moment:
the samples' data, batch sizes and counts, readiness after warm-up, and
each way a sample can fail the load."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from devtools.onnx_models import config_text
from serving.app import App
from serving.errors import InferenceFailed
from serving.runtime import TensorInfo
from serving.settings import ServingSettings


class Recorder:
    """A runtime factory whose runtimes log (feeds, model ready?) per run."""

    def __init__(self) -> None:
        self.runs: list[tuple[dict[str, np.ndarray], bool]] = []
        self.app: App | None = None
        #: Runs of this many rows fail as onnxruntime would.
        self.fail_rows: int | None = None

    def __call__(self, path: Path, settings: ServingSettings, label: str) -> object:
        recorder = self

        class Runtime:
            provider = "FakeProvider"
            inputs: Sequence[TensorInfo] = (TensorInfo("input", "FP32", (-1, 2)),)
            outputs: Sequence[TensorInfo] = (
                TensorInfo("logits", "FP32", (-1, 2)),
                TensorInfo("probabilities", "FP32", (-1, 2)),
            )
            defaults: Sequence[TensorInfo] = ()

            def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                assert recorder.app is not None
                ready = recorder.app.service.model_ready("m")
                recorder.runs.append(({k: v.copy() for k, v in feeds.items()}, ready))
                if feeds["input"].shape[0] == recorder.fail_rows:
                    raise InferenceFailed("onnxruntime failed: out of memory")
                return [feeds["input"], feeds["input"]]

        return Runtime()


def start(
    tmp_path: Path, warmup: str, files: dict[str, bytes] | None = None, fail_rows: int | None = None
) -> Recorder:
    folder = tmp_path / "models" / "m"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_text("fake")
    (folder / "config.pbtxt").write_text(config_text("m", labels=False, max_batch_size=8) + warmup)
    for name, data in (files or {}).items():
        (folder / "warmup").mkdir(exist_ok=True)
        (folder / "warmup" / name).write_bytes(data)
    recorder = Recorder()
    recorder.fail_rows = fail_rows
    settings = ServingSettings(
        model_repository=tmp_path / "models", inference_threads=1, grpc_port=0
    )  # type: ignore[call-arg]
    app = App(settings, runtime_factory=recorder)  # type: ignore[arg-type]
    recorder.app = app

    async def main() -> None:
        await app.manager.start()
        recorder.ready = app.service.model_ready("m")  # type: ignore[attr-defined]
        recorder.index = app.service.repository_index()  # type: ignore[attr-defined]
        await app.manager.stop()

    asyncio.run(main())
    return recorder


def test_each_sample_runs_count_times_at_its_batch_size_before_the_model_is_ready(
    tmp_path: Path,
) -> None:
    data = np.array([1.5, -2.0], np.float32)
    recorder = start(tmp_path, """
model_warmup [
  { name: "zeros" batch_size: 4 count: 3
    inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } },
  { name: "random" batch_size: 2
    inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 2 ] random_data: true } } },
  { name: "file" batch_size: 1 count: 2
    inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "x.bin" } } }
]
""", {"x.bin": data.tobytes() + b"extra bytes are ignored"})  # fmt: skip
    assert recorder.ready  # type: ignore[attr-defined]
    runs = recorder.runs
    assert [feeds["input"].shape for feeds, _ in runs] == [(4, 2)] * 3 + [(2, 2)] + [(1, 2)] * 2
    assert not any(ready for _, ready in runs)  # none ran while the model was ready
    assert all(not feeds["input"].any() for feeds, _ in runs[:3])
    assert runs[3][0]["input"].any()  # random data is not zeros
    for feeds, _ in runs[4:]:
        np.testing.assert_array_equal(feeds["input"], data[np.newaxis])


def test_without_model_warmup_one_zero_row_runs(tmp_path: Path) -> None:
    recorder = start(tmp_path, "")
    assert [(f["input"].shape, f["input"].any(), r) for f, r in recorder.runs] == [
        ((1, 2), False, False)
    ]
    assert recorder.ready  # type: ignore[attr-defined]


def sample(entry: str, batch: int = 1) -> str:
    inputs = f'inputs {{ key: "input" value {{ {entry} }} }}'
    return f'model_warmup [ {{ name: "s" batch_size: {batch} {inputs} }} ]'


@pytest.mark.parametrize(
    ("warmup", "files", "fragment"),
    [
        (sample("data_type: TYPE_FP32 dims: [ 2 ] zero_data: true", batch=9),
         {}, "batch_size must be in 1..max_batch_size (8), got 9"),
        (sample("data_type: TYPE_FP32 dims: [ 2 ] zero_data: true", batch=0),
         {}, "got 0"),
        (sample("data_type: TYPE_INT32 dims: [ 2 ] zero_data: true"),
         {}, "is INT32, the model's input is FP32"),
        (sample("data_type: TYPE_FP32 dims: [ 3 ] zero_data: true"), {}, "has dims [3]"),
        (sample("data_type: TYPE_FP32 dims: [ 2 ]"), {}, "sets none of zero_data"),
        (sample('data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "short.bin"'),
         {"short.bin": b"\0\0\0\0"}, "holds 4 bytes, its dims [2] of FP32 need 8"),
        (sample('data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "absent.bin"'),
         {}, "cannot read warmup/absent.bin"),
        (sample('data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "../config.pbtxt"'),
         {}, "must be a plain file name"),
        ('model_warmup [ { name: "s" batch_size: 1 inputs { key: "other" value { '
         'data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } } ]',
         {}, "input 'other' is not an input of the model"),
        ('model_warmup [ { name: "s" batch_size: 1 } ]', {}, "lacks the model's input 'input'"),
    ],
)  # fmt: skip
def test_a_sample_that_does_not_fit_fails_the_load_with_the_reason(
    tmp_path: Path, warmup: str, files: dict[str, bytes], fragment: str
) -> None:
    recorder = start(tmp_path, warmup, files)
    assert not recorder.ready  # type: ignore[attr-defined]
    (row,) = recorder.index  # type: ignore[attr-defined]
    assert row.state == "UNAVAILABLE"
    assert "model_warmup 's'" in row.reason and fragment in row.reason, row.reason
    assert recorder.runs == []  # nothing ran


def test_a_sample_whose_run_fails_fails_the_load_with_the_runtime_reason(tmp_path: Path) -> None:
    recorder = start(tmp_path, sample("data_type: TYPE_FP32 dims: [ 2 ] zero_data: true", 3),
                     fail_rows=3)  # fmt: skip
    assert not recorder.ready  # type: ignore[attr-defined]
    (row,) = recorder.index  # type: ignore[attr-defined]
    assert row.state == "UNAVAILABLE"
    assert row.reason == (
        "warm-up inference failed (sample 's'): onnxruntime failed: out of memory"
    ), row.reason

"""`dlserve optimize`: variants built, gated on held-out data, written and served.

The INT8 tests start from copies of the committed default models (files from
before the training record existed: their data is the preset's, which the
report must say); one test trains a small model so that the file's own
record is what finds its data and seed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from dlserve.cli import main
from training import datasets
from training.optimize_report import session
from training.presets import PRESETS
from training.provenance import TRAINING_KEY, VARIANT_KEY

MODELS = Path(__file__).resolve().parents[2] / "models"
FAST = ["--latency-seconds", "0.02"]


def _repo(tmp_path: Path, *names: str) -> Path:
    repo = tmp_path / "models"
    for name in names:
        shutil.copytree(MODELS / name, repo / name)
    return repo


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _optimize(repo: Path, runs: Path, *args: str) -> int:
    return main(["optimize", "--repository", str(repo), "--runs-dir", str(runs), *FAST, *args])


def _held_out(name: str) -> datasets.Split:
    cfg = PRESETS[name]
    return datasets.load(cfg.dataset, n_samples=cfg.n_samples, noise=cfg.noise, seed=cfg.seed)


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("name", ["digits-cnn", "mlp-spiral"])
def test_int8_keeps_held_out_accuracy_within_the_gate(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, runs = _repo(tmp_path, name), tmp_path / "runs"
    assert _optimize(repo, runs, "--model", name, "--to", "int8") == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "latency batch 64" in out

    path = repo / name / "2" / "model.onnx"
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert proto.ir_version == 10
    assert _metadata(path)[VARIANT_KEY] == "int8"

    # the gate's claim, checked independently on the preset's held-out split
    split = _held_out(name)
    accuracy = {}
    for version in (1, 2):
        sess = session((repo / name / str(version) / "model.onnx").read_bytes())
        logits = sess.run(["logits"], {"input": split.X_val})[0]
        accuracy[version] = float((logits.argmax(1) == split.y_val).mean())
    assert 100 * (accuracy[1] - accuracy[2]) <= 0.5

    report = json.loads((runs / name / "v2" / "optimize.json").read_text())
    assert report["variant"] == "int8"
    assert report["source"]["version"] == 1 and report["output"]["version"] == 2
    assert report["training"]["source"] == f"preset {name}"
    assert report["training"]["dataset"] == PRESETS[name].dataset
    assert report["training"]["seed"] == PRESETS[name].seed
    assert report["calibration"] == {"split": "train", "rows": 256}
    assert report["comparison"]["accuracy_before"] == accuracy[1]
    assert report["comparison"]["accuracy_after"] == accuracy[2]
    assert report["comparison"]["samples"] == len(split.y_val)
    assert report["bytes"]["after"] == path.stat().st_size
    assert set(report["latency"]) == {"1", "8", "64"}

    # digits-cnn passes fully quantized; mlp-spiral fails that (94.4% vs 98.4%)
    # and passes with its input layer kept in FP32
    fallback = name == "mlp-spiral"
    assert report["input_layer_fp32"] is fallback
    assert ("trying again with the input layer in FP32" in out) is fallback
    dequantized = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    first = next(n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul", "Conv"))
    assert (first.input[0] in dequantized) is not fallback


def test_a_gate_set_impossibly_tight_refuses_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, runs = _repo(tmp_path, "mlp-spiral"), tmp_path / "runs"
    before = _tree(repo)
    code = _optimize(repo, runs, "--model", "mlp-spiral", "--max-accuracy-drop", "-1")
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "refused" in err[0] and "a drop of" in err[0] and "-1" in err[0]
    assert _tree(repo) == before
    assert not runs.exists()


def test_the_served_int8_version_answers_as_its_own_session(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from devtools.inprocess import InProcessServer

    repo, runs = _repo(tmp_path, "digits-cnn"), tmp_path / "runs"
    assert _optimize(repo, runs, "--model", "digits-cnn") == 0
    x = _held_out("digits-cnn").X_val[:32]
    own = session((repo / "digits-cnn" / "2" / "model.onnx").read_bytes())
    expected = dict(zip(["logits", "probabilities"], own.run(None, {"input": x}), strict=True))
    fp32 = session((repo / "digits-cnn" / "1" / "model.onnx").read_bytes())
    assert not np.array_equal(expected["logits"], fp32.run(["logits"], {"input": x})[0])

    with InProcessServer(repo) as server:
        g = grpcclient.InferenceServerClient(server.url)
        assert g.is_model_ready("digits-cnn", "2")
        assert not g.is_model_ready("digits-cnn", "1")  # latest 1: the variant replaced it
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        answer = g.infer("digits-cnn", [inp], model_version="2")
        h = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        hinp = httpclient.InferInput("input", list(x.shape), "FP32")
        hinp.set_data_from_numpy(x, binary_data=True)
        hanswer = h.infer("digits-cnn", [hinp])
        for name, want in expected.items():
            np.testing.assert_array_equal(answer.as_numpy(name), want)
            np.testing.assert_array_equal(hanswer.as_numpy(name), want)


def test_a_trained_model_records_its_data_and_a_new_model_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, runs = tmp_path / "models", tmp_path / "runs"
    assert main(
        ["train", "--name", "tiny", "--dataset", "xor", "--model", "mlp", "--hidden", "8",
         "--epochs", "60", "--seed", "7", "--samples", "400", "--repository", str(repo),
         "--runs-dir", str(runs), "--no-progress"]
    ) == 0  # fmt: skip
    recorded = json.loads(_metadata(repo / "tiny" / "1" / "model.onnx")[TRAINING_KEY])
    assert recorded["dataset"] == "xor" and recorded["seed"] == 7 and recorded["n_samples"] == 400

    assert _optimize(repo, runs, "--model", "tiny", "--to", "opt", "--name", "tiny-opt") == 0
    out = capsys.readouterr().out
    assert "training data: xor, seed 7, from model metadata; gated on 100 held-out rows" in out
    report = json.loads((runs / "tiny-opt" / "v1" / "optimize.json").read_text())
    assert report["training"]["source"] == "model metadata"
    assert report["held_out"]["rows"] == 100  # 25% of the 400 recorded samples
    assert report["calibration"] == {"split": None, "rows": 0}
    labels = (repo / "tiny" / "labels.txt").read_bytes()
    assert (repo / "tiny-opt" / "labels.txt").read_bytes() == labels
    assert 'name: "tiny-opt"' in (repo / "tiny-opt" / "config.pbtxt").read_text()
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert _metadata(repo / "tiny-opt" / "1" / "model.onnx")[VARIANT_KEY] == "opt"
    graph = onnx.load(str(repo / "tiny-opt" / "1" / "model.onnx")).graph
    assert {n.domain for n in graph.node} == {""}  # BASIC: plain ONNX, any provider

    import tritonclient.grpc as grpcclient

    from devtools.inprocess import InProcessServer

    with InProcessServer(repo) as server:
        assert grpcclient.InferenceServerClient(server.url).is_model_ready("tiny-opt", "1")


def test_fp16_keeps_fp32_inputs_and_outputs_and_loads_on_cpu(tmp_path: Path) -> None:
    repo, runs = _repo(tmp_path, "mlp-spiral"), tmp_path / "runs"
    assert _optimize(repo, runs, "--model", "mlp-spiral", "--to", "fp16") == 0
    path = repo / "mlp-spiral" / "2" / "model.onnx"
    proto = onnx.load(str(path))
    assert {i.data_type for i in proto.graph.initializer if i.dims} == {onnx.TensorProto.FLOAT16}
    sess = session(path.read_bytes())
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in sess.get_outputs()] == ["tensor(float)"] * 2
    # a second run starts again from the FP32 version 1, not the fp16 version 2
    assert _optimize(repo, runs, "--model", "mlp-spiral", "--to", "int8") == 0
    report = json.loads((runs / "mlp-spiral" / "v3" / "optimize.json").read_text())
    assert report["source"]["version"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "no model 'nope'"),
        (["--model", "custom"], "does not record which data trained it"),
        (["--model", "mlp-spiral", "--version", "3"], "has no version 3"),
        (["--model", "mlp-spiral", "--name", "1234"], "must not be all digits"),
        (["--model", "broken"], "cannot read"),
    ],
)
def test_what_cannot_be_optimized_ends_with_one_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _repo(tmp_path, "mlp-spiral")
    shutil.copytree(repo / "mlp-spiral", repo / "custom")  # no record, and no such preset
    shutil.copytree(repo / "mlp-spiral", repo / "broken")
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    before = _tree(repo)
    assert _optimize(repo, tmp_path / "runs", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert _tree(repo) == before

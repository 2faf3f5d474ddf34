"""The parts of `dlserve optimize` below the command: the training record, the
variant builders and the gate's loader, on small real ONNX models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from devtools.onnx_models import mlp
from training import variants
from training.config import TrainConfig
from training.optimize_report import VariantLoadError, compare, session
from training.provenance import (
    TRAINING_KEY,
    VARIANT_KEY,
    ProvenanceError,
    metadata_for,
    provenance_of,
)

CFG = TrainConfig(name="m", dataset="spiral", model="mlp", hidden=(16, 4), seed=3, noise=0.2)


def test_the_training_record_round_trips() -> None:
    found = provenance_of(metadata_for(CFG), "m", "m/1/model.onnx")
    assert found.config == CFG and found.source == "model metadata"


def test_the_record_in_a_report_names_the_data_then_the_config() -> None:
    record = provenance_of(metadata_for(CFG), "m", "m/1/model.onnx").as_dict()
    data = ["dataset", "seed", "n_samples", "noise", "val_fraction"]
    assert list(record) == ["source", *data, "config"]
    assert [record[k] for k in data] == ["spiral", 3, 1000, 0.2, 0.25]
    assert record["config"] == CFG.as_dict()


def test_a_record_that_is_not_a_config_is_refused() -> None:
    with pytest.raises(ProvenanceError, match="not a training config"):
        provenance_of({TRAINING_KEY: '{"name": "m", "dataset": "mnist"}'}, "m", "f.onnx")


@pytest.mark.parametrize("kind", sorted(variants.KINDS))
def test_each_variant_keeps_the_signature_and_the_record(kind: str) -> None:
    source = mlp(features=2, hidden=(16,), classes=3, seed=1)
    source.metadata_props.add(key=TRAINING_KEY, value=metadata_for(CFG)[TRAINING_KEY])
    rows = np.random.default_rng(0).standard_normal((100, 2)).astype(np.float32)
    data = variants.build(kind, source.SerializeToString(), rows)
    proto = onnx.load_from_string(data)
    assert proto.ir_version == 10
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta == {TRAINING_KEY: metadata_for(CFG)[TRAINING_KEY], VARIANT_KEY: kind}
    ops = [n.op_type for n in proto.graph.node]
    if kind == "int8":  # every Gemm quantized (QDQ), the Softmax left in FP32
        assert ops.count("QuantizeLinear") >= 2 and ops.index("Softmax") == len(ops) - 1
        softmax_input = proto.graph.node[-1].input[0]
        assert any(
            n.output[0] == softmax_input
            for n in proto.graph.node
            if n.op_type == "DequantizeLinear"
        )
    before, after = session(source.SerializeToString()), session(data)
    assert [(i.name, i.type) for i in after.get_inputs()] == [("input", "tensor(float)")]
    assert [o.type for o in after.get_outputs()] == ["tensor(float)"] * 2
    cmp = compare(before, after, rows, before.run(["logits"], {"input": rows})[0].argmax(1))
    assert cmp.accuracy_before == 1.0 and cmp.samples == 100


def test_int8_without_calibration_rows_is_a_variant_error() -> None:
    with pytest.raises(variants.VariantError, match="calibration"):
        variants.build("int8", mlp().SerializeToString(), np.empty((0, 2), np.float32))


def test_a_file_onnxruntime_cannot_load_is_a_load_error() -> None:
    with pytest.raises(VariantLoadError, match="cannot load"):
        session(b"not an onnx model")

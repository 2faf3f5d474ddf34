"""Small ONNX classifiers built with onnx.helper for server tests, scripts and
benchmarks (no torch), in the contract's signature: input ``input`` [-1, F]
FP32, outputs ``logits`` and ``probabilities`` [-1, C] FP32."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The IR version onnxruntime 1.31/1.32 accepts (onnx 1.23 writes 14).
IR_VERSION = 10
OPSET = 17


def mlp(
    features: int = 2,
    hidden: Sequence[int] = (8, 8),
    classes: int = 2,
    seed: int = 0,
    batch: int | None = None,
) -> onnx.ModelProto:
    """A ReLU MLP with random weights; ``batch`` fixes the first dim (None: dynamic)."""
    rng = np.random.default_rng(seed)
    sizes = [features, *hidden, classes]
    nodes, inits = [], []
    x = "input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(sizes) - 2
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        x = out
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    dim: int | str = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [dim, features])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dim, classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [dim, classes]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def config_text(
    name: str,
    features: int = 2,
    classes: int = 2,
    max_batch_size: int = 64,
    dynamic_batching: bool = True,
    labels: bool = True,
    extra: str = "",
    extra_dynamic: str = "",
) -> str:
    label = '\n    label_filename: "labels.txt"' if labels else ""
    batching = f"dynamic_batching {{\n  {extra_dynamic}\n}}\n" if dynamic_batching else ""
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    dims: [ {features} ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {classes} ]
  }},
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ {classes} ]{label}
  }}
]
{batching}{extra}"""


def write_model(
    repo: Path,
    name: str,
    version: int = 1,
    model: onnx.ModelProto | None = None,
    config: str | None = "default",
    labels: Sequence[str] | None = None,
    **config_kwargs: object,
) -> Path:
    """Write ``repo/name/version/model.onnx`` (+ config.pbtxt unless None,
    + labels.txt). Returns the model folder."""
    model = model if model is not None else mlp()
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / str(version) / "model.onnx"))
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    features = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    if config == "default":
        config = config_text(name, features=features, classes=classes, **config_kwargs)  # type: ignore[arg-type]
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    (folder / "labels.txt").write_text(
        "\n".join(labels if labels is not None else [f"class{i}" for i in range(classes)]) + "\n"
    )
    return folder


def slow_mlp(seed: int = 0, matmuls: int = 80, n: int = 512) -> onnx.ModelProto:
    """``mlp(seed=seed)`` with the same outputs, bit for bit, but slow: the
    logits get ``0 * sum(M^(matmuls+1))`` added, where M (n x n) depends on
    the input so onnxruntime cannot fold it away at load time."""
    model = mlp(seed=seed)
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == "logits":
                node.output[i] = "fast_logits"
    nodes = slow_nodes(graph, "input", "fast_logits", "logits", matmuls, n)
    at = next(i for i, node in enumerate(graph.node) if node.op_type == "Softmax")
    ordered = [*graph.node[:at], *nodes, *graph.node[at:]]
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model)
    return model


def slow_nodes(
    graph: onnx.GraphProto, source: str, fast: str, out: str, matmuls: int, n: int
) -> list[onnx.NodeProto]:
    """Nodes that make ``out`` = ``fast`` + 0 * sum(M^(matmuls+1)), where M
    (n x n) depends on input ``source`` so onnxruntime cannot fold it away at
    load time: the same answers, slowly. Adds the constants to ``graph``."""
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([n, n], np.int64), "slow_shape"),
            numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"),
        ]
    )
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0 / n])
    nodes = [
        helper.make_node("ReduceSum", [source], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_z"]),
        helper.make_node("ConstantOfShape", ["slow_shape"], ["slow_fill"], value=fill),
        helper.make_node("Add", ["slow_z", "slow_fill"], ["slow_m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_m{i}", "slow_m0"], [f"slow_m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_m{matmuls}"], ["slow_total"], keepdims=0),
        helper.make_node("Mul", ["slow_total", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", [fast, "slow_nothing"], [out]),
    ]
    return nodes

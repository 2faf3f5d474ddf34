"""Shaping a batch's result into a request's answer: the outputs it asked
for, in its order, and Triton's classification extension."""

from __future__ import annotations

import numpy as np

from serving.batch_jobs import BatchResult
from serving.tensors import RequestedOutput, Tensor
from serving.versions import LoadedVersion


def outputs(
    loaded: LoadedVersion, requested: tuple[RequestedOutput, ...], result: BatchResult
) -> tuple[Tensor, ...]:
    """Every output (none requested) or the requested ones, as tensors."""
    arrays = result.outputs
    index = loaded.output_index
    specs = loaded.signature.outputs
    batching = loaded.signature.batching
    if not requested:
        return tuple([
            Tensor(name, specs[name].datatype, arrays[i].shape, arrays[i])
            for name, i in index.items()
        ])  # fmt: skip
    out = []
    for req in requested:
        array = arrays[index[req.name]]
        if req.class_count > 0:
            out.append(_classify(req, array, specs[req.name].labels, batching))
        else:
            out.append(Tensor(req.name, specs[req.name].datatype, array.shape, array))
    return tuple(out)


def _classify(
    req: RequestedOutput, array: np.ndarray, labels: tuple[str, ...] | None, batching: bool
) -> Tensor:
    """Triton's classification extension: the top ``class_count`` entries of
    each row as "score:index[:label]" strings."""
    rows = array.reshape(array.shape[0], -1) if batching else array.reshape(1, -1)
    k = min(req.class_count, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    strings = []
    for r, row in enumerate(top):
        for idx in row:
            score = rows[r, idx]
            label = labels[idx] if labels is not None and idx < len(labels) else None
            strings.append((f"{score:f}:{idx}:{label}" if label else f"{score:f}:{idx}").encode())
    data = np.array(strings, dtype=np.object_)
    shape = (rows.shape[0], k) if batching else (k,)
    return Tensor(req.name, "BYTES", shape, data.reshape(shape))

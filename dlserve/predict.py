"""``dlserve predict``: one ModelInfer request with the project's own stubs
(the serving install needs no tritonclient).

What the user can fix (bad --data, an unreachable server, an error the
server answered) raises `dlserve.errors.ClientError`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dlserve.errors import ClientError
from serving.tensors import DTYPE_BY_DATATYPE


def channel(url: str, tls_ca: Path | None = None) -> Any:
    import grpc

    if tls_ca is not None:
        try:
            ca = tls_ca.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read --tls-ca {tls_ca}: {exc.strerror}") from exc
        return grpc.secure_channel(url, grpc.ssl_channel_credentials(ca))
    return grpc.insecure_channel(url)


def _load_data(text: str) -> Any:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise ClientError(f"cannot read --data file {text[1:]}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"--data is not valid JSON: {exc.msg} at position {exc.pos}") from exc


def predict(args: argparse.Namespace) -> int:
    import grpc

    from serving._generated import grpc_service_pb2 as pb
    from serving._generated import grpc_service_pb2_grpc as pb_grpc
    from serving.validation import decode_bytes

    data = _load_data(args.data)
    metadata = [("authorization", f"Bearer {args.auth_token}")] if args.auth_token else None
    with channel(args.url, args.tls_ca) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)

        def call(method: Any, request: Any) -> Any:
            try:
                return method(request, timeout=args.timeout, metadata=metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                name = code.name if code is not None else "UNKNOWN"
                raise ClientError(f"server at {args.url} answered {name}: {exc.details()}") from exc

        meta = call(
            stub.ModelMetadata, pb.ModelMetadataRequest(name=args.model, version=args.version)
        )
        config_request = pb.ModelConfigRequest(name=args.model, version=args.version)
        config = call(stub.ModelConfig, config_request).config
        if not isinstance(data, dict):
            if len(meta.inputs) != 1:
                names = [i.name for i in meta.inputs]
                raise ClientError(f"model has inputs {names}: give --data as an object by name")
            data = {meta.inputs[0].name: data}
        unknown = sorted(set(data) - {i.name for i in meta.inputs})
        if unknown:
            names = [i.name for i in meta.inputs]
            raise ClientError(
                f"--data names input(s) {unknown} the model lacks; its inputs: {names}"
            )
        request = pb.ModelInferRequest(model_name=args.model, model_version=args.version)
        for spec in meta.inputs:
            if spec.name not in data:
                raise ClientError(f"--data lacks input '{spec.name}'")
            dtype = DTYPE_BY_DATATYPE.get(spec.datatype)
            if dtype is None or spec.datatype == "BYTES":
                raise ClientError(f"input '{spec.name}' is {spec.datatype}; predict sends numbers")
            try:
                array = np.asarray(data[spec.name], dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise ClientError(
                    f"--data for '{spec.name}' is not a {spec.datatype} array"
                ) from exc
            if len(spec.shape) and spec.shape[0] == -1 and array.ndim == len(spec.shape) - 1:
                array = array[np.newaxis]  # one example for a batching model
            request.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        labelled = {o.name for o in config.output if o.label_filename}
        for out in meta.outputs:
            requested = request.outputs.add(name=out.name)
            if out.name in labelled and args.top > 0:
                requested.parameters["classification"].int64_param = args.top
        response = call(stub.ModelInfer, request)

    result: dict[str, Any] = {
        "model": response.model_name,
        "version": response.model_version,
        "outputs": {},
    }
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        shape = list(out.shape)
        if out.datatype == "BYTES":
            strings = [b.decode() for b in decode_bytes(raw, out.name)]
            rows = []
            per_row = shape[-1] if shape else len(strings)
            for start in range(0, len(strings), max(per_row, 1)):
                row = []
                for s in strings[start : start + per_row]:
                    score, index, *label = s.split(":", 2)
                    row.append({"label": label[0] if label else index, "index": int(index),
                                "score": float(score)})  # fmt: skip
                rows.append(row)
            result["top_classes"] = rows
        else:
            array = np.frombuffer(raw, dtype=DTYPE_BY_DATATYPE[out.datatype]).reshape(shape)
            result["outputs"][out.name] = {
                "datatype": out.datatype, "shape": shape, "data": array.tolist(),
            }  # fmt: skip
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0

"""``dlserve predict``: one inference request, over gRPC with the project's
own stubs or over REST with ``dlserve.http_client`` (the serving install
needs no tritonclient).

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
from serving.datatypes import DTYPE_BY_DATATYPE


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


def _arrays(data: Any, inputs: list[tuple[str, str, list[int]]]) -> list[tuple[str, str, Any]]:
    """--data as (name, datatype, array) per model input (name, datatype, shape)."""
    if not isinstance(data, dict):
        if len(inputs) != 1:
            names = [name for name, _, _ in inputs]
            raise ClientError(f"model has inputs {names}: give --data as an object by name")
        data = {inputs[0][0]: data}
    unknown = sorted(set(data) - {name for name, _, _ in inputs})
    if unknown:
        names = [name for name, _, _ in inputs]
        raise ClientError(f"--data names input(s) {unknown} the model lacks; its inputs: {names}")
    arrays = []
    for name, datatype, shape in inputs:
        if name not in data:
            raise ClientError(f"--data lacks input '{name}'")
        dtype = DTYPE_BY_DATATYPE.get(datatype)
        if dtype is None or datatype == "BYTES":
            raise ClientError(f"input '{name}' is {datatype}; predict sends numbers")
        try:
            array = np.asarray(data[name], dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ClientError(f"--data for '{name}' is not a {datatype} array") from exc
        if len(shape) and shape[0] == -1 and array.ndim == len(shape) - 1:
            array = array[np.newaxis]  # one example for a batching model
        arrays.append((name, datatype, array))
    return arrays


def _top_classes(strings: list[str], shape: list[int]) -> list[list[dict[str, Any]]]:
    rows = []
    per_row = shape[-1] if shape else len(strings)
    for start in range(0, len(strings), max(per_row, 1)):
        row = []
        for s in strings[start : start + per_row]:
            score, index, *label = s.split(":", 2)
            row.append({"label": label[0] if label else index, "index": int(index),
                        "score": float(score)})  # fmt: skip
        rows.append(row)
    return rows


def _predict_http(args: argparse.Namespace, address: str, tls: bool) -> dict[str, Any]:
    from dlserve.http_client import RestClient, infer_body, model_path

    data = _load_data(args.data)
    client = RestClient(address, tls=tls, tls_ca=args.tls_ca, token=args.auth_token,
                        timeout=args.timeout)  # fmt: skip
    try:
        path = model_path(args.model, args.version)
        meta = client.call("GET", path)
        config = client.call("GET", f"{path}/config")
        inputs = [(i["name"], i["datatype"], list(i["shape"])) for i in meta["inputs"]]
        labelled = {o["name"] for o in config.get("output", []) if o.get("label_filename")}
        outputs = []
        for out in meta["outputs"]:
            params: dict[str, Any] = {"binary_data": False}
            if out["name"] in labelled and args.top > 0:
                params["classification"] = args.top
            outputs.append({"name": out["name"], "parameters": params})
        body, headers = infer_body(_arrays(data, inputs), outputs)
        response = client.call("POST", f"{path}/infer", body, headers)
    finally:
        client.close()
    result: dict[str, Any] = {
        "model": response["model_name"],
        "version": response["model_version"],
        "outputs": {},
    }
    for out in response["outputs"]:
        shape = list(out["shape"])
        if out["datatype"] == "BYTES":
            result["top_classes"] = _top_classes(list(out["data"]), shape)
        else:
            array = np.asarray(out["data"], dtype=DTYPE_BY_DATATYPE[out["datatype"]])
            result["outputs"][out["name"]] = {
                "datatype": out["datatype"], "shape": shape, "data": array.reshape(shape).tolist(),
            }  # fmt: skip
    return result


def predict(args: argparse.Namespace) -> int:
    from dlserve.http_client import resolve

    protocol, address, tls = resolve(args.url, getattr(args, "protocol", None))
    if protocol == "http":
        json.dump(_predict_http(args, address, tls), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    args.url = address
    return _predict_grpc(args)


def _predict_grpc(args: argparse.Namespace) -> int:
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
        specs = [(i.name, i.datatype, list(i.shape)) for i in meta.inputs]
        request = pb.ModelInferRequest(model_name=args.model, model_version=args.version)
        for name, datatype, array in _arrays(data, specs):
            request.inputs.add(name=name, datatype=datatype, shape=array.shape)
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
            result["top_classes"] = _top_classes(strings, shape)
        else:
            array = np.frombuffer(raw, dtype=DTYPE_BY_DATATYPE[out.datatype]).reshape(shape)
            result["outputs"][out.name] = {
                "datatype": out.datatype, "shape": shape, "data": array.tolist(),
            }  # fmt: skip
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0

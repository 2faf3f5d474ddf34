"""A bare reference server: grpc.aio + uvloop, ModelInfer straight into
onnxruntime on the event loop. No validation, no metrics, no batching, no
error mapping: the floor a Python gRPC server can reach here, so the cost of
each dlserve feature shows as a ratio against it.

It also answers the few RPCs perf_analyzer needs to start (ServerLive,
ModelMetadata, ModelConfig) and ModelStatistics with a request count, so the
benchmark can divide CPU seconds by requests.

    python -m benchmarks.bare_server MODEL_DIR --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import uvloop
from google.protobuf import text_format

from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from serving._generated import model_config_pb2 as mc


def load_newest(model_dir: Path) -> tuple[mc.ModelConfig, str, ort.InferenceSession]:
    """The folder's config, its newest version and a one-thread session on it."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    config.name = model_dir.name
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_dir / str(versions[-1]) / "model.onnx"), options,
        providers=["CPUExecutionProvider"],
    )  # fmt: skip
    return config, str(versions[-1]), session


class Bare(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model_dir: Path) -> None:
        self.config, self.version, self.session = load_newest(model_dir)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.count = 0

    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerMetadataResponse(name="bare", version="0", extensions=[])

    async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.config.name, versions=[self.version], platform="onnxruntime_onnx",
            inputs=[meta(name=i.name, datatype="FP32", shape=[-1, *i.dims])
                    for i in self.config.input],
            outputs=[meta(name=o.name, datatype="FP32", shape=[-1, *o.dims])
                     for o in self.config.output],
        )  # fmt: skip

    async def ModelConfig(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ModelConfigResponse(config=self.config)

    async def ModelStatistics(self, request, context):  # type: ignore[no-untyped-def]
        stats = pb.ModelStatistics(
            name=self.config.name,
            version=self.version,
            inference_count=self.count,
            execution_count=self.count,
        )
        stats.inference_stats.success.count = self.count
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tensor.shape)
        results = self.session.run(self.outputs, {self.input: x})
        self.count += 1
        out = pb.ModelInferResponse.InferOutputTensor
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version=self.version, id=request.id,
            outputs=[out(name=n, datatype="FP32", shape=r.shape)
                     for n, r in zip(self.outputs, results, strict=True)],
            raw_output_contents=[r.tobytes() for r in results],
        )  # fmt: skip


async def main(model_dir: Path, port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Bare(model_dir), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare server on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8101)
    a = parser.parse_args()
    uvloop.run(main(a.model_dir, a.port))

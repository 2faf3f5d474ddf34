"""A bare REST reference server on the same stack as ``serving/http_api``:
a raw ASGI callable on uvicorn (httptools parser) on uvloop, orjson. One
inference route, ``POST /v2/models/{m}/infer``, taking Triton's binary
tensor data extension (``Inference-Header-Content-Length`` JSON header,
then the raw bytes of one FP32 input) -> ``np.frombuffer`` ->
``session.run`` on the event loop -> raw output bytes after a JSON header
with ``binary_data_size``. No validation, no metrics, no batching, no error
mapping: the floor for dlserve's REST edge, as ``bare_server.py`` is for
its gRPC one.

It also answers the few GETs ``perf_analyzer -i http`` needs to start
(``/v2/health/live|ready``, ``/v2``, model metadata and config) and the
statistics routes with a request count, so the benchmark can divide CPU
seconds by requests.

    python -m benchmarks.bare_asgi MODEL_DIR --port 8100
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn
import uvloop

from benchmarks.bare_server import load_newest
from serving.http_api import views

_JSON = [(b"content-type", b"application/json")]


class BareAsgi:
    def __init__(self, model_dir: Path) -> None:
        config, self.version, self.session = load_newest(model_dir)
        self.name = config.name
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.count = 0

        def tensor(t: Any) -> dict[str, Any]:
            return {"name": t.name, "datatype": "FP32", "shape": [-1, *t.dims]}

        self.metadata = orjson.dumps({
            "name": self.name, "versions": [self.version], "platform": "onnxruntime_onnx",
            "inputs": [tensor(t) for t in config.input],
            "outputs": [tensor(t) for t in config.output],
        })  # fmt: skip
        self.config = orjson.dumps(views.model_config(config))

    def statistics(self) -> bytes:
        zero = {"count": 0, "ns": 0}
        success = {"count": self.count, "ns": 0}
        stats = {
            "name": self.name, "version": self.version, "last_inference": 0,
            "inference_count": self.count, "execution_count": self.count,
            "inference_stats": {k: success if k == "success" else zero for k in (
                "success", "fail", "queue", "compute_input", "compute_infer",
                "compute_output", "cache_hit", "cache_miss")},
            "batch_stats": [],
        }  # fmt: skip
        return orjson.dumps({"model_stats": [stats]})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "POST" and path.endswith("/infer"):
            status, body, headers = await self.infer(scope, receive)
        elif path in ("/v2/health/live", "/v2/health/ready"):
            status, body, headers = 200, b"", []
        elif path == "/v2":
            status, headers = 200, _JSON
            body = b'{"name":"bare-asgi","version":"0","extensions":["binary_tensor_data"]}'
        elif path.endswith("/stats"):
            status, body, headers = 200, self.statistics(), _JSON
        elif path.endswith("/config"):
            status, body, headers = 200, self.config, _JSON
        elif path.startswith("/v2/models/"):
            status, body, headers = 200, self.metadata, _JSON
        else:
            status, body, headers = 404, b'{"error":"not found"}', _JSON
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def infer(self, scope: Any, receive: Any) -> tuple[int, bytes, list[Any]]:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        size = int(dict(scope["headers"])[b"inference-header-content-length"])
        header = orjson.loads(memoryview(body)[:size])
        x = np.frombuffer(body, dtype=np.float32, offset=size).reshape(header["inputs"][0]["shape"])
        results = self.session.run(self.outputs, {self.input: x})
        self.count += 1
        raw = [r.tobytes() for r in results]
        head = orjson.dumps({
            "model_name": self.name, "model_version": self.version,
            "outputs": [{"name": n, "datatype": "FP32", "shape": list(r.shape),
                         "parameters": {"binary_data_size": len(b)}}
                        for n, r, b in zip(self.outputs, results, raw, strict=True)],
        })  # fmt: skip
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"inference-header-content-length", str(len(head)).encode())]  # fmt: skip
        return 200, b"".join((head, *raw)), headers


def main(model_dir: Path, port: int) -> None:
    # The same uvicorn settings as serving/http_api/server.py, where they matter per request.
    config = uvicorn.Config(
        BareAsgi(model_dir), host="127.0.0.1", port=port, loop="none", http="httptools",
        ws="none", lifespan="off", interface="asgi3", log_config=None, access_log=False,
        server_header=False, timeout_keep_alive=15, log_level="warning",
    )  # fmt: skip
    print(f"bare ASGI server on 127.0.0.1:{port}", flush=True)
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8100)
    a = parser.parse_args()
    main(a.model_dir, a.port)

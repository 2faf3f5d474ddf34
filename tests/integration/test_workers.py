"""``dlserve serve --workers 2``: two processes share the gRPC port, the
supervisor serves their combined metrics and drains both on SIGTERM."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as tc

from devtools.onnx_models import write_model
from devtools.serverproc import ServerProcess, run_cli


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_answer_and_report_one_set_of_metrics(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", max_batch_size=8)
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    server = ServerProcess(tmp_path, "--workers", "2").start()
    try:
        n = 40
        for i in range(n):
            # A new connection per request lets the kernel pick either worker.
            client = tc.InferenceServerClient(server.url)
            x = np.full((1, 2), i / n, dtype=np.float32)
            inp = tc.InferInput("input", [1, 2], "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("m", [inp]).as_numpy("logits")
            np.testing.assert_allclose(got, session.run(["logits"], {"input": x})[0], atol=1e-6)
            client.close()
        text = urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10).read().decode()
        assert _metric(text, 'dlserve_requests_total{code="OK",model="m",version="1"}') == n
        assert _metric(text, 'dlserve_model_ready{model="m"') == 1.0
    finally:
        code = server.stop()
    assert code == 0
    assert server.log().count("stopped") == 2  # both workers drained


def test_workers_refuse_explicit_model_control(tmp_path: Path) -> None:
    write_model(tmp_path, "m")
    result = run_cli("serve", "--model-repository", str(tmp_path), "--workers", "2",
                     "--model-control-mode", "explicit", "--grpc-port", "18999")  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers 1" in lines[0], result.stderr

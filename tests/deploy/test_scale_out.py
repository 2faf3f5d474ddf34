"""The client-side load balancing recipe of deploy/README.md works: its
tritonclient snippet (headless Service + round_robin), aimed at two real
dlserve replicas, spreads requests over both."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from devtools.onnx_models import write_model
from devtools.serverproc import ServerProcess
from tests.deploy.promql import REPO

README = REPO / "deploy" / "README.md"
REQUESTS = 40


def readme_snippet() -> str:
    """The ```python block of deploy/README.md that sets up round_robin."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if "round_robin" in b]
    return "\n".join(line[2:] if line.startswith("  ") else line for line in block.splitlines())


def ok_requests(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "dlserve_requests_total"
                and sample.labels.get("model") == model
                and sample.labels.get("code") == "OK"
            ):
                return sample.value
    return 0.0


def test_round_robin_snippet_spreads_requests_over_replicas(tmp_path: Path) -> None:
    write_model(tmp_path, "m")
    with ServerProcess(tmp_path) as a, ServerProcess(tmp_path) as b:
        snippet = readme_snippet()
        target = re.search(r'"(dns:///[^"]+)"', snippet)
        assert target, "the README snippet names no dns:/// target"
        # In a cluster DNS returns one address per pod; here the two replicas
        # are listed explicitly (gRPC's ipv4: resolver), same channel args.
        code = snippet.replace(
            target.group(1), f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
        )
        namespace: dict[str, object] = {}
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own doc
        client = namespace["client"]
        assert isinstance(client, triton.InferenceServerClient)
        try:
            assert client.is_server_ready()
            for _ in range(REQUESTS):
                inp = triton.InferInput("input", [1, 2], "FP32")
                inp.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
                client.infer("m", [inp])
        finally:
            client.close()
        served = [ok_requests(a, "m"), ok_requests(b, "m")]
    assert sum(served) == REQUESTS
    assert min(served) > 0, f"one replica got every request: {served}"

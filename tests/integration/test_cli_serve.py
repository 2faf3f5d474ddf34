"""``dlserve serve`` start-up failures, ``dlserve predict`` and ``dlserve bench``
as a user runs them: real processes, and errors that end in one line on
stderr with a non-zero exit and no traceback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from devtools.serverproc import ServerProcess, run_cli
from tests.integration.helpers import CLASSIFIER_LABELS, DEFAULT_MODELS, model_file, reference
from tests.support import free_port


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The process failed with exactly one stderr line holding every fragment."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("serve", "--host", "127.0.0.1", *args, timeout=60)


# --- dlserve serve: start-up failures ------------------------------------------


def test_serve_nonexistent_repository() -> None:
    result = serve("--model-repository", "/nonexistent", "--grpc-port", "0")
    one_line_error(result, "dlserve serve: error:", "/nonexistent")


def test_serve_repository_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "models.txt"
    file.write_text("not a folder")
    one_line_error(serve("--model-repository", str(file)), str(file), "not a folder")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_serve_grpc_port_in_use(model_repo: Path, busy_port: int) -> None:
    result = serve(
        "--model-repository", str(model_repo),
        "--grpc-port", str(busy_port), "--metrics-port", str(free_port()),
    )  # fmt: skip
    one_line_error(result, "dlserve serve: error:", str(busy_port), "in use")


def test_serve_same_port_twice(model_repo: Path) -> None:
    port = str(free_port())
    result = serve(
        "--model-repository", str(model_repo), "--grpc-port", port, "--metrics-port", port
    )  # fmt: skip
    one_line_error(result, "--grpc-port and --metrics-port", port)


def test_serve_unknown_host(model_repo: Path) -> None:
    result = run_cli(
        "serve", "--model-repository", str(model_repo), "--host", "no-such-host.invalid",
        "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
    )  # fmt: skip
    one_line_error(result, "dlserve serve: error:", "no-such-host.invalid")


def test_serve_metrics_port_in_use(model_repo: Path, busy_port: int) -> None:
    result = serve(
        "--model-repository", str(model_repo),
        "--grpc-port", str(free_port()), "--metrics-port", str(busy_port),
    )  # fmt: skip
    one_line_error(result, "dlserve serve: error:", str(busy_port), "in use")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--grpc-port", "70000"], ["grpc-port"]),
        (["--max-message-bytes", "0"], ["max-message-bytes"]),
        (["--device", "tpu"], ["--device", "tpu"]),
        (["--auth-token-file", "/nonexistent/token"], ["/nonexistent/token"]),
        (["--tls-cert", "/nonexistent/cert.pem"], ["--tls-cert", "--tls-key"]),
        (["--load-model", "classifier"], ["--load-model", "explicit"]),
        (["--trace-config", "rate=0"], ["--trace-config", "rate", ">= 1"]),
        (["--trace-config", "triton,file=/tmp/t.json"], ["--trace-config", "opentelemetry"]),
    ],
    ids=[
        "port-range",
        "message-bytes",
        "device",
        "token-file",
        "tls-half",
        "load-model",
        "trace-rate",
        "trace-mode",
    ],
)
def test_serve_bad_arguments(model_repo: Path, args: list[str], fragments: list[str]) -> None:
    result = serve(
        "--model-repository", str(model_repo),
        "--grpc-port", str(free_port()), "--metrics-port", str(free_port()), *args,
    )  # fmt: skip
    one_line_error(result, *fragments)


def test_serve_stops_cleanly_on_sigterm(model_repo: Path) -> None:
    proc = ServerProcess(model_repo).start()
    try:
        assert proc.stop(signal.SIGTERM) == 0
        assert "Traceback" not in proc.log()
    finally:
        proc.kill()


# --- dlserve predict ------------------------------------------------------------


def predict(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("predict", "--url", url, "--timeout", "10", *args, timeout=60)


def test_predict_prints_outputs_and_labelled_top_classes(
    server: ServerProcess, model_repo: Path
) -> None:
    x = np.array([[0.5, -1.25], [1.5, 0.75]], dtype=np.float32)
    result = predict(server.url, "--model", "classifier", "--data", json.dumps(x.tolist()))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["model"], printed["version"]) == ("classifier", "1")
    want = reference(model_file(model_repo, "classifier"), x)
    logits = printed["outputs"]["logits"]
    assert (logits["datatype"], logits["shape"]) == ("FP32", [2, 3])
    np.testing.assert_allclose(np.array(logits["data"]), want["logits"], atol=1e-6)
    top = printed["top_classes"]
    assert len(top) == 2  # one list per row
    for row, probabilities in zip(top, want["probabilities"], strict=True):
        order = np.argsort(-probabilities)
        assert [c["index"] for c in row] == list(order)  # --top 3 of 3 classes
        assert [c["label"] for c in row] == [CLASSIFIER_LABELS[i] for i in order]
        np.testing.assert_allclose([c["score"] for c in row], probabilities[order], atol=1e-5)


def test_predict_adds_the_batch_dimension_and_reads_a_file(
    server: ServerProcess, model_repo: Path, tmp_path: Path
) -> None:
    data = tmp_path / "row.json"
    data.write_text(json.dumps({"input": [0.25, 0.5]}))
    result = predict(server.url, "--model", "classifier", "--data", f"@{data}", "--top", "1")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["outputs"]["logits"]["shape"] == [1, 3]
    want = reference(model_file(model_repo, "classifier"), np.array([[0.25, 0.5]], np.float32))
    (row,) = printed["top_classes"]
    assert [c["label"] for c in row] == [CLASSIFIER_LABELS[int(np.argmax(want["probabilities"]))]]


@pytest.mark.parametrize(
    ("model", "data"),
    [("mlp-xor", [[1.0, -1.0], [1.0, 1.0]]), ("digits-cnn", np.zeros((1, 8, 8)).tolist())],
)
def test_predict_on_default_models(
    default_server: ServerProcess, model: str, data: list[object]
) -> None:
    result = predict(default_server.url, "--model", model, "--data", json.dumps(data))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    x = np.array(data, dtype=np.float32)
    x = x[np.newaxis] if model == "digits-cnn" else x  # predict adds the batch dim
    want = reference(DEFAULT_MODELS / model / "1" / "model.onnx", x)
    np.testing.assert_allclose(printed["outputs"]["logits"]["data"], want["logits"], atol=1e-6)
    labels = (DEFAULT_MODELS / model / "labels.txt").read_text().split()
    for row, probabilities in zip(printed["top_classes"], want["probabilities"], strict=True):
        assert row[0]["label"] == labels[int(np.argmax(probabilities))]
        assert len(row) == min(3, len(labels))


def test_predict_on_a_model_without_batching(server: ServerProcess, model_repo: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    result = predict(server.url, "--model", "fixed", "--data", json.dumps(x.tolist()))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    want = reference(model_file(model_repo, "fixed"), x)["logits"]
    np.testing.assert_allclose(printed["outputs"]["logits"]["data"], want, atol=1e-6)
    # No batch dimension to add: the data goes as given, and the error says so.
    one_line_error(
        predict(server.url, "--model", "fixed", "--data", "[1, 2]"),
        "INVALID_ARGUMENT", "has shape [2], expected [3, 2]",
    )  # fmt: skip


def test_predict_on_a_model_without_labels_prints_outputs_only(server: ServerProcess) -> None:
    result = predict(server.url, "--model", "autocomplete", "--data", "[[1, 2]]")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert sorted(printed["outputs"]) == ["logits", "probabilities"]
    assert "top_classes" not in printed


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "classifier", "--data", "[[1, 2"], ["--data is not valid JSON"]),
        (["--model", "classifier", "--data", "@/nonexistent.json"], ["/nonexistent.json"]),
        (["--model", "no-such-model", "--data", "[[1, 2]]"], ["NOT_FOUND", "no-such-model"]),
        (["--model", "classifier", "--version", "7", "--data", "[[1, 2]]"], ["NOT_FOUND"]),
        (["--model", "broken", "--data", "[[1, 2]]"], ["UNAVAILABLE", "broken"]),
        (["--model", "classifier", "--data", "[[1, 2, 3]]"], ["INVALID_ARGUMENT", "'input'"]),
        (["--model", "classifier", "--data", '[["a", "b"]]'], ["'input'", "FP32"]),
        (["--model", "classifier", "--data", '{"x": [[1, 2]]}'], ["['x']", "inputs: ['input']"]),
        (
            ["--model", "classifier", "--data", '{"input": [[1, 2]], "mask": [1]}'],
            ["'mask'", "['input']"],
        ),
    ],
    ids=[
        "bad-json", "missing-file", "unknown-model", "unknown-version", "not-ready",
        "wrong-shape", "not-numbers", "wrong-name", "extra-input",
    ],
)  # fmt: skip
def test_predict_errors_are_one_line(
    server: ServerProcess, args: list[str], fragments: list[str]
) -> None:
    one_line_error(predict(server.url, *args), "dlserve predict: error:", *fragments)


def test_predict_unreachable_server_is_one_line() -> None:
    url = f"127.0.0.1:{free_port()}"
    line = one_line_error(
        predict(url, "--model", "classifier", "--data", "[[1, 2]]"), "dlserve predict: error:"
    )
    assert url in line and "UNAVAILABLE" in line


# --- dlserve bench --------------------------------------------------------------


def bench(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("bench", "--url", url, "--warmup", "0", "--duration", "0.3", *args, timeout=60)


def test_bench_prints_a_row_per_concurrency_and_writes_json(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    result = bench(server.url, "--model", "classifier", "--concurrency", "1,2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert [r["concurrency"] for r in records] == [1, 2]
    for record in records:
        assert {"throughput_rps", "p50_ms", "p90_ms", "p99_ms", "errors"} <= set(record)
        assert record["errors"] == 0 and record["requests"] > 0
    assert len(result.stdout.strip().splitlines()) == 2 + len(records)  # title, header, rows


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "classifier", "--concurrency", "1,x"], ["--concurrency", "'1,x'"]),
        (["--model", "classifier", "--concurrency", "0"], ["--concurrency values must be >= 1"]),
        (["--model", "classifier", "--batch-size", "0"], ["--batch-size must be >= 1"]),
        (["--model", "no-such-model"], ["NOT_FOUND", "no-such-model"]),
        (["--model", "classifier", "--json", "/nonexistent/b.json"], ["/nonexistent/b.json"]),
    ],
    ids=["concurrency-text", "concurrency-zero", "batch-size", "unknown-model", "json-path"],
)
def test_bench_errors_are_one_line(
    server: ServerProcess, args: list[str], fragments: list[str]
) -> None:
    one_line_error(bench(server.url, *args), "dlserve bench: error:", *fragments)

"""``dlserve tune`` end to end: real ``dlserve serve`` processes per candidate,
driven by the real load generator, on a tiny MLP and a tiny search space.

What is checked: the config.pbtxt it writes is one a server loads and answers
with (the answers equal onnxruntime's own); the table has every measured
level, in the order of the sweep's rule, and marks the best; the PNG is a PNG
of the size drawn; Ctrl-C keeps what was measured and leaves no server
running; --url measures a running server's config; bad input ends in one line.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from serving.repository import read_config
from tests.integration.helpers import infer_input, reference, rows
from tests.integration.tune_helpers import (
    Outputs,
    png_size,
    processes_mentioning,
    read_outputs,
    run_tune,
    tune_command,
    tune_env,
)

MODEL = "tiny"
#: Loose enough that a loaded test machine still meets it (the tight-budget
#: test checks what happens when nothing does).
BUDGET_MS = 1000.0
#: A tiny space: 6 distinct configs (max_batch_size 1 has no queue delay).
SPACE = (
    "--max-batch-sizes", "1,8", "--queue-delays-us", "0,500", "--preferred", "off",
    "--instances", "1,2", "--intra-op-threads", "1",
)  # fmt: skip
LOAD = ("--concurrency", "1,4,16", "--duration", "1", "--warmup", "0.2", "--max-windows", "2")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune-repo")
    write_model(root, MODEL, model=mlp(seed=7), max_batch_size=64)
    return root


@pytest.fixture(scope="module")
def tuned(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Outputs, str]:
    base = tmp_path_factory.mktemp("tune-run")
    out = base / "out"
    result = run_tune(
        "--repository", str(repo), "--model", MODEL, "--latency-budget-ms", str(BUDGET_MS),
        *LOAD, *SPACE, "--output", str(out), tmp=base / "tmp",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "best:" in result.stderr
    assert not processes_mentioning(str(base / "tmp")), "a candidate server is still running"
    return read_outputs(out), result.stdout


def test_the_best_config_loads_in_a_server_and_answers(
    tuned: tuple[Outputs, str], repo: Path, tmp_path: Path
) -> None:
    outputs, _ = tuned
    best = outputs.summary["best"]
    config = read_config(outputs.folder / "config.pbtxt")
    assert config.name == MODEL
    assert config.max_batch_size == best["max_batch_size"]
    assert [g.count for g in config.instance_group] == [best["instances"]]
    if best["max_batch_size"] > 1:
        assert config.dynamic_batching.max_queue_delay_microseconds == best["max_queue_delay_us"]
    assert best["p99_ms"] <= BUDGET_MS

    served = tmp_path / "repo"
    shutil.copytree(repo / MODEL, served / MODEL)
    shutil.copy(outputs.folder / "config.pbtxt", served / MODEL / "config.pbtxt")
    with InProcessServer(served, *best["serve_flags"]) as server:
        client = triton.InferenceServerClient(server.url)
        answered = client.get_model_config(MODEL, as_json=True)["config"]
        assert int(answered["max_batch_size"]) == best["max_batch_size"]
        x = rows(min(best["max_batch_size"], 4))
        result = client.infer(MODEL, [infer_input(x)])
        want = reference(served / MODEL / "1" / "model.onnx", x)
        np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_the_table_has_every_measured_level_in_the_sweeps_order(
    tuned: tuple[Outputs, str],
) -> None:
    outputs, printed = tuned
    table_rows = [line for line in printed.splitlines()[1:] if line.strip()]
    assert len(table_rows) == len(outputs.rows) > 0
    configs = sorted({int(r["config"]) for r in outputs.rows})
    assert configs == list(range(1, outputs.summary["configs_measured"] + 1))
    assert outputs.summary["configs_measured"] <= outputs.summary["grid_configs"] == 6
    for c in configs:
        levels = [r for r in outputs.rows if int(r["config"]) == c]
        conc = [int(r["concurrency"]) for r in levels]
        assert conc == [1, 4, 16][: len(conc)], f"config {c}: levels {conc}"
        # a level over the budget ends the sweep; every level before it is within
        assert all(r["status"].startswith("ok") for r in levels[:-1])
        if len(conc) < 3:
            assert not levels[-1]["status"].startswith("ok")
        for r in levels:
            assert (float(r["p99_ms"]) <= BUDGET_MS) == r["status"].startswith("ok")
            assert r["windows"] in ("1", "2")  # one, or two that agreed within 10 %
    best_rows = [r for r in outputs.rows if r["status"].endswith("(best)")]
    assert len(best_rows) == 1
    ok = [float(r["throughput_rps"]) for r in outputs.rows if r["status"].startswith("ok")]
    assert float(best_rows[0]["throughput_rps"]) == max(ok)
    assert int(best_rows[0]["concurrency"]) == outputs.summary["best"]["concurrency"]
    # the climb's path starts at the small corner of the space
    assert outputs.summary["path"][0] == {
        "max_batch_size": 1, "max_queue_delay_us": 0, "preferred": 0, "instances": 1,
        "intra_op_threads": 1,
    }  # fmt: skip


def test_the_plot_is_a_png_of_the_size_drawn(tuned: tuple[Outputs, str]) -> None:
    outputs, _ = tuned
    path = outputs.folder / "frontier.png"
    assert png_size(path) == (640, 460)
    assert 10_000 < path.stat().st_size < 500_000


def test_ctrl_c_keeps_what_was_measured_and_stops_the_server(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            tune_command(
                "--repository", str(repo), "--model", MODEL, "--latency-budget-ms", "1000",
                "--concurrency", "1", "--duration", "1", "--warmup", "0", "--stability-pct", "0",
                "--max-batch-sizes", "1,2,4,8", "--instances", "1", "--intra-op-threads", "1",
                "--queue-delays-us", "0", "--preferred", "off", "--output", str(out),
            ),
            stdout=subprocess.PIPE, stderr=err, text=True, env=tune_env(tmp_path / "tmp"),
        )  # fmt: skip
        try:
            # interrupt once the first config is measured (tqdm counts it: "1/4")
            deadline = time.monotonic() + 120
            while "1/4" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            stdout, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130, log.read_text()
    assert "interrupted" in log.read_text()
    outputs = read_outputs(out)
    assert outputs.summary["interrupted"] is True
    assert 1 <= outputs.summary["configs_measured"] < 4
    assert outputs.rows and outputs.rows[0]["max_batch_size"] == "1"
    assert png_size(out / "frontier.png") == (640, 460)
    assert (out / "config.pbtxt").is_file()  # the best of what was measured
    assert not processes_mentioning(str(tmp_path / "tmp")), "a candidate server is still running"


def test_a_budget_nothing_meets_ends_each_sweep_at_its_first_level(
    repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_tune(
        "--repository", str(repo), "--model", MODEL, "--latency-budget-ms", "0.001",
        "--concurrency", "1,4", "--duration", "0.5", "--warmup", "0", "--stability-pct", "0",
        "--max-batch-sizes", "1,8", "--queue-delays-us", "0", "--preferred", "off",
        "--instances", "1", "--intra-op-threads", "1", "--output", str(out), tmp=tmp_path / "tmp",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no measured level met p99 <= 0.001 ms" in result.stderr
    outputs = read_outputs(out)
    assert outputs.rows and all(r["concurrency"] == "1" for r in outputs.rows)
    assert all(r["status"] == "over budget" for r in outputs.rows)
    assert "best" not in outputs.summary and not (out / "config.pbtxt").exists()
    assert png_size(out / "frontier.png") == (640, 460)


def test_url_mode_measures_the_running_servers_config(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with InProcessServer(repo) as server:
        result = run_tune(
            "--url", server.url, "--model", MODEL, "--latency-budget-ms", "1000",
            "--concurrency", "1,2", "--duration", "0.5", "--warmup", "0", "--output", str(out),
            tmp=tmp_path / "tmp",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "current config only" in result.stderr
    outputs = read_outputs(out)
    assert [r["concurrency"] for r in outputs.rows] == ["1", "2"]
    assert read_config(out / "config.pbtxt").max_batch_size == 64


def test_a_candidate_that_does_not_load_is_a_failed_row_not_a_crash(tmp_path: Path) -> None:
    # no config.pbtxt and a fixed batch dimension: every max_batch_size > 0 fails to load
    repo = tmp_path / "repo"
    write_model(repo, "fixed", model=mlp(seed=4, batch=3), config=None)
    out = tmp_path / "out"
    result = run_tune(
        "--repository", str(repo), "--model", "fixed", "--latency-budget-ms", "50",
        "--concurrency", "1", "--duration", "0.5", "--warmup", "0", "--max-batch-sizes", "1",
        "--instances", "1", "--intra-op-threads", "1", "--output", str(out), tmp=tmp_path / "tmp",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no measured level met" in result.stderr
    outputs = read_outputs(out)
    assert len(outputs.rows) == 1 and outputs.rows[0]["status"].startswith("failed: ")
    assert "dynamic first dimension" in outputs.rows[0]["status"]
    assert not (out / "config.pbtxt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--latency-budget-ms", "0"), "--latency-budget-ms must be > 0"),
        (("--latency-budget-ms", "5", "--concurrency", "0"), "--concurrency values must be >= 1"),
        (("--latency-budget-ms", "5", "--max-batch-sizes", "4,x"), "--max-batch-sizes must be"),
        (("--latency-budget-ms", "5", "--preferred", "sometimes"), "--preferred takes off"),
        (("--latency-budget-ms", "5", "--instances", "0"), "--instances needs distinct values"),
    ],
)
def test_bad_flags_end_in_one_line(
    repo: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_tune("--repository", str(repo), "--model", MODEL, *args,
                      "--output", str(tmp_path / "out"), tmp=tmp_path / "tmp")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_an_unknown_model_ends_in_one_line(repo: Path, tmp_path: Path) -> None:
    result = run_tune("--repository", str(repo), "--model", "nope", "--latency-budget-ms", "5",
                      tmp=tmp_path / "tmp")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"dlserve tune: error: no model folder {repo / 'nope'}\n"

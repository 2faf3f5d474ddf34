"""`dlserve experiment NAME --quick` end to end, through the real CLI.

Each experiment runs once (module-scoped fixture) in a subprocess into a
temporary folder; the tests then check that the files exist and hold what
they claim: PNGs decode with the size the report records, the markdown
tables have one row per configuration and agree with results.json, and the
numbers the issue promises (XOR defeats the perceptron but not the MLP;
gradient descent finds x = -2) are there.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from matplotlib import image as mpimg  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("activations", "perceptron-limits", "optimizers", "sensitivity")


def dlserve(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlserve", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


class Run:
    """One finished experiment: its folder, stdout and parsed outputs."""

    def __init__(self, out: Path, proc: subprocess.CompletedProcess[str]) -> None:
        assert proc.returncode == 0, proc.stderr
        self.out = out
        self.stdout = proc.stdout
        self.results: dict[str, Any] = json.loads((out / "results.json").read_text())
        self.report = (out / "report.md").read_text()
        self.tables = parse_markdown_tables(self.report)

    def table(self, name: str) -> tuple[list[str], list[list[Any]], list[list[str]]]:
        """(headers, JSON rows, markdown rows) of one table, matched by its header."""
        spec = self.results["tables"][name]
        headers = spec["headers"]
        matches = [rows for head, rows in self.tables if head == headers]
        assert len(matches) == 1, f"table {name} with headers {headers} not in report.md"
        return headers, spec["rows"], matches[0]


def run_experiment(tmp: Path, name: str, *extra: str) -> Run:
    out = tmp / name
    return Run(out, dlserve("experiment", name, "--quick", "--out", str(out), *extra))


def parse_markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table in `text` as (header cells, body rows of cells)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            block.append([c.strip().replace("\\|", "|") for c in cells])
        elif block:
            assert all(set(c) <= {"-", ":"} for c in block[1]), f"no separator row: {block}"
            assert all(len(r) == len(block[0]) for r in block), f"ragged table: {block}"
            tables.append((block[0], block[2:]))
            block = []
    return tables


def cell_matches(text: str, value: Any) -> bool:
    """Does a markdown cell show this JSON value (floats to 6 significant digits)?"""
    if value is None:
        return text == "—"
    if isinstance(value, bool):
        return text == ("yes" if value else "no")
    if isinstance(value, (int, float)):
        return math.isclose(float(text), value, rel_tol=1e-5, abs_tol=1e-12)
    return text == str(value)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """All four experiments, two at a time (each trains on one torch thread)."""
    tmp = tmp_path_factory.mktemp("experiments")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(
            zip(NAMES, pool.map(lambda name: run_experiment(tmp, name), NAMES), strict=True)
        )
    return done


@pytest.mark.parametrize("name", NAMES)
def test_writes_report_results_and_pngs_and_says_where(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    assert run.results["experiment"] == name
    assert run.results["seed"] == 0 and run.results["quick"] is True
    assert run.results["images"], "every experiment draws at least one figure"
    assert str(run.out) in run.stdout
    for filename in ["report.md", "results.json", *run.results["images"]]:
        assert (run.out / filename).is_file()
        assert str(run.out / filename) in run.stdout, f"{filename} not announced"


@pytest.mark.parametrize("name", NAMES)
def test_pngs_decode_with_the_recorded_size(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    for filename, (width, height) in run.results["images"].items():
        pixels = mpimg.imread(run.out / filename)
        assert pixels.shape[:2] == (height, width), filename
        assert width >= 600 and height >= 300, f"{filename} too small to read"
        assert pixels.std() > 0.05, f"{filename} is (nearly) blank"
        assert f"]({filename})" in run.report, f"{filename} not shown in report.md"


@pytest.mark.parametrize("name", NAMES)
def test_markdown_tables_match_results_json(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    assert run.results["tables"]
    for table in run.results["tables"]:
        headers, rows, shown = run.table(table)
        assert len(shown) == len(rows)
        for row, cells in zip(rows, shown, strict=True):
            assert len(cells) == len(headers)
            for value, text in zip(row, cells, strict=True):
                assert cell_matches(text, value), f"{table}: {text!r} shows {value!r}"


def test_activations_has_one_row_per_dataset_and_activation(runs: dict[str, Run]) -> None:
    _, rows, _ = runs["activations"].table("runs")
    pairs = [(r[0], r[1]) for r in rows]
    expected = {
        (d, a) for d in ("circle", "xor", "spiral") for a in ("relu", "sigmoid", "tanh", "gelu")
    }
    assert sorted(pairs) == sorted(expected)
    epochs = runs["activations"].results["config"]["epochs"]
    for _, _, acc, loss, reached in rows:
        assert 0.0 <= acc <= 1.0 and loss > 0
        assert reached is None or 1 <= reached <= epochs


def test_perceptron_fails_on_xor_while_the_mlp_solves_it(runs: dict[str, Run]) -> None:
    res = runs["perceptron-limits"].results
    linear, xor = res["perceptron"]["linear"], res["perceptron"]["xor"]
    assert linear["converged"] is True and linear["final_mistakes"] == 0
    assert xor["converged"] is False
    assert xor["final_mistakes"] > 0
    assert min(xor["mistakes_per_epoch"]) > 0, "mistakes on XOR never reach zero"
    assert len(xor["mistakes_per_epoch"]) == res["config"]["pla_epochs"]
    assert res["mlp"]["dataset"] == "xor" and res["mlp"]["val_acc"] >= 0.95

    headers, rows, _ = runs["perceptron-limits"].table("runs")
    by = {(r[0].split(" ")[0], r[1]): dict(zip(headers, r, strict=True)) for r in rows}
    assert by[("perceptron", "xor")]["mistakes in last epoch"] == xor["final_mistakes"]
    assert by[("perceptron", "linear")]["mistakes in last epoch"] == 0
    assert by[("MLP", "xor")]["val acc"] == res["mlp"]["val_acc"]


def test_optimizers_compares_four_optimizers_and_gd_finds_minus_two(runs: dict[str, Run]) -> None:
    res = runs["optimizers"].results
    _, rows, _ = runs["optimizers"].table("optimizers")
    assert [r[0] for r in rows] == ["sgd", "momentum", "rmsprop", "adam"]

    gd = res["gd_1d"]
    assert abs(gd["final_x"] - (-2.0)) < 1e-3
    headers, rows, _ = runs["optimizers"].table("gd_1d")
    reference = next(dict(zip(headers, r, strict=True)) for r in rows if r[0] == gd["reference_lr"])
    assert abs(reference["final x"] - (-2.0)) < 1e-3
    assert reference["stopped because"] == "|f'(x)| < tol"
    stops = {r[0]: r[-1] for r in rows}
    assert stops[1.0] == "step budget" and stops[1.05] == "diverged"

    bowl = res["gd_2d"]
    assert [r["method"] for r in bowl["runs"]] == ["full-batch GD", "mini-batch GD", "SGD"]
    assert [r["batch_size"] for r in bowl["runs"]] == [200, 16, 1]
    full = bowl["runs"][0]
    assert full["stop"] == "‖∇L‖ < tol"
    assert math.dist(full["final_w"], bowl["w_star"]) < 0.01
    for r in bowl["runs"][1:]:
        assert math.dist(r["final_w"], bowl["w_star"]) < 0.2, r


def test_sensitivity_has_one_row_per_grid_cell(runs: dict[str, Run]) -> None:
    res = runs["sensitivity"].results
    lrs, batches = res["config"]["lrs"], res["config"]["batch_sizes"]
    _, rows, _ = runs["sensitivity"].table("grid")
    assert sorted((r[0], r[1]) for r in rows) == sorted((lr, b) for lr in lrs for b in batches)
    assert len(res["val_acc"]) == len(lrs) and all(len(r) == len(batches) for r in res["val_acc"])
    heat = {
        (lrs[i], batches[j]): v for i, row in enumerate(res["val_acc"]) for j, v in enumerate(row)
    }
    for lr, batch, _, _, acc in rows:
        assert heat[(lr, batch)] == acc


@pytest.mark.parametrize("name", ["perceptron-limits", "sensitivity"])
def test_same_seed_gives_the_same_results(runs: dict[str, Run], name: str, tmp_path: Path) -> None:
    again = run_experiment(tmp_path, name)
    assert again.results == runs[name].results


def test_another_seed_gives_other_results(runs: dict[str, Run], tmp_path: Path) -> None:
    other = run_experiment(tmp_path, "perceptron-limits", "--seed", "1")
    assert other.results["seed"] == 1
    first = runs["perceptron-limits"].results["perceptron"]["xor"]["mistakes_per_epoch"]
    assert other.results["perceptron"]["xor"]["mistakes_per_epoch"] != first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["perceptron-limits", "--dataset", "linear"], "does not fit experiment perceptron-limits"),
        (["activations", "--dataset", "digits"], "needs a 2-D data set"),
        (["sensitivity", "--dataset", "moons"], "invalid choice"),
        (["tea-party"], "invalid choice"),
    ],
)
def test_bad_arguments_end_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = dlserve("experiment", *args, "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "a rejected run leaves no folder behind"


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("not a folder")
    proc = dlserve("experiment", "perceptron-limits", "--quick", "--out", str(target))
    assert proc.returncode != 0
    assert (
        proc.stderr.strip()
        == f"dlserve experiment: error: --out {target} exists and is not a folder"
    )
    assert target.read_text() == "not a folder"

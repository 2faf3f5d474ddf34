"""`ExperimentReport`'s tables: the markdown and the results.json rows agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.experiments.report import ExperimentReport


def _report(tmp_path: Path) -> ExperimentReport:
    return ExperimentReport("demo", "Demo", tmp_path, "dlserve experiment demo", 0, True)


def test_a_keyed_table_is_the_table_of_its_rows_columns(tmp_path: Path) -> None:
    keyed, listed = _report(tmp_path / "keyed"), _report(tmp_path / "listed")
    rows = [
        {"model": "a", "acc": 0.5, "converged": True},
        {"model": "b|c", "acc": None, "converged": False},
    ]
    keyed.keyed_table("runs", rows)
    listed.table("runs", ["model", "acc", "converged"], [list(r.values()) for r in rows])
    for report in (keyed, listed):
        report.out.mkdir()
        report.write()
    assert (keyed.out / "report.md").read_text() == (listed.out / "report.md").read_text()
    assert "| b\\|c | — | no |" in (keyed.out / "report.md").read_text()
    table = json.loads((keyed.out / "results.json").read_text())["tables"]["runs"]
    assert table == {
        "headers": ["model", "acc", "converged"],
        "rows": [["a", 0.5, True], ["b|c", None, False]],
    }


def test_a_keyed_row_with_other_columns_is_refused(tmp_path: Path) -> None:
    report = _report(tmp_path)
    with pytest.raises(ValueError, match="does not have the columns"):
        report.keyed_table("runs", [{"model": "a", "acc": 0.5}, {"acc": 0.5, "model": "b"}])
    assert report.tables == {}

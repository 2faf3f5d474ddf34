"""`training.pipeline.run` in-process: report folders and the dry run."""

from __future__ import annotations

from pathlib import Path

from training.pipeline import run
from training.presets import PRESETS


def test_reports_of_two_repositories_sharing_a_runs_folder_are_both_kept(tmp_path: Path) -> None:
    cfg = PRESETS["perceptron-linear"]
    runs = tmp_path / "runs"
    first = run(cfg, repository=tmp_path / "a", runs_dir=runs, progress=False, log=lambda _: None)
    second = run(cfg, repository=tmp_path / "b", runs_dir=runs, progress=False, log=lambda _: None)
    assert first.report_dir == runs / "perceptron-linear" / "v1"
    assert second.report_dir == runs / "perceptron-linear" / "v1-2"
    for outcome in (first, second):
        assert outcome.report_dir is not None
        assert (outcome.report_dir / "metrics.json").is_file()
        assert all(p.parent == outcome.report_dir and p.is_file() for p in outcome.plots)
    assert sorted(p.name for p in (runs / "perceptron-linear").iterdir()) == ["v1", "v1-2"]


def test_dry_run_exports_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    outcome = run(
        PRESETS["mlp-spiral"],
        repository=tmp_path / "models",
        runs_dir=tmp_path / "runs",
        dry_run=True,
        progress=False,
        log=lines.append,
    )
    assert outcome.export is None and outcome.report_dir is None
    assert outcome.metrics["history"]["epochs"] == 1
    assert lines[-1] == "dry run: one batch trained, nothing exported"
    assert list(tmp_path.iterdir()) == []

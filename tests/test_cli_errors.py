"""`dlserve.cli.main`'s error translation: which errors end a command with one
stderr line, and with which exit code (the end-to-end lines are checked by
tests/training/test_cli.py and tests/integration/test_cli_serve.py)."""

from __future__ import annotations

import pytest

from dlserve.cli import LIBRARY_ERRORS, exit_code_for, main
from dlserve.errors import ClientError, CliError
from serving.workers import WorkersError
from training.errors import ExperimentError, TrainingError
from training.repository import RepositoryError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CliError("bad flag"), 2),
        (CliError("export refused", exit_code=1), 1),
        (ClientError("server answered NOT_FOUND"), 2),
        (TrainingError("x"), 2),
        (ExperimentError("--out is a file"), 2),
        (RepositoryError("cannot write"), 2),
        (WorkersError("--workers > 1 needs a fixed --grpc-port"), 2),
        (ValueError("a bug"), None),
        (OSError("a bug"), None),
    ],
)
def test_exit_code_for(error: Exception, code: int | None) -> None:
    assert exit_code_for(error) == code


def test_library_errors_name_real_classes() -> None:
    import importlib

    for module, name in LIBRARY_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception)


def test_a_library_error_ends_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["experiment", "perceptron-limits", "--out", __file__])
    assert code == 2
    assert capsys.readouterr().err == (
        f"dlserve experiment: error: --out {__file__} exists and is not a folder\n"
    )

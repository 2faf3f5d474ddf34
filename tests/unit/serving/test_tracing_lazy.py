"""The OpenTelemetry SDK is loaded only by a server configured to trace
(a fresh interpreter each: the test process has long imported it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROBE = """
import sys
from serving.app import App
from serving.settings import ServingSettings
App(ServingSettings(model_repository="models", trace_config=sys.argv[1:]))
print(sorted({m.split(".")[1] for m in sys.modules if m.startswith("opentelemetry.")}))
"""


@pytest.mark.parametrize(
    ("entries", "loaded"),
    [([], False), (["level=OFF"], True), (["level=TIMESTAMPS", "rate=100"], True)],
)
def test_sdk_loaded_only_with_trace_config(entries: list[str], loaded: bool) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *entries], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    modules = result.stdout.strip().splitlines()[-1]
    assert (modules != "[]") is loaded, (entries, modules)
    if loaded:
        assert "sdk" in modules and "exporter" in modules

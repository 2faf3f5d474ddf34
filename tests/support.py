"""Helpers shared by the test suite (no fixtures here: see conftest.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from devtools.ports import free_port

__all__ = ["REQUIRE_SYSTEM_TOOLS", "free_port", "require_binary"]

#: Set by .ci/run: a test that needs a system binary fails instead of skipping,
#: so a missing install step in CI cannot hide behind a skip.
REQUIRE_SYSTEM_TOOLS = os.environ.get("DLSERVE_REQUIRE_SYSTEM_TOOLS") == "1"


def require_binary(name: str, *candidates: str) -> str:
    """Return the path of a system binary, or skip (fail in CI) when missing."""
    for candidate in (name, *candidates):
        path = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        if path:
            return path
    message = f"system binary {name!r} is not installed"
    if REQUIRE_SYSTEM_TOOLS:
        pytest.fail(f"{message}, but DLSERVE_REQUIRE_SYSTEM_TOOLS=1 (.ci/run must install it)")
    pytest.skip(message)

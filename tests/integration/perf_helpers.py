"""Finding NVIDIA's perf_analyzer (from the tritonclient 2.41.0 wheel) and
the environment it starts in, for the tests that run it.

The binary needs Debian's libb64-0d and libcudart.so.12 from the pip package
nvidia-cuda-runtime-cu12. Missing pieces skip the test locally and fail it
under DLSERVE_REQUIRE_SYSTEM_TOOLS=1 (CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REQUIRE_SYSTEM_TOOLS, require_binary


def _cuda_runtime_lib() -> str | None:
    try:
        import nvidia.cuda_runtime  # namespace package: no __file__
    except ImportError:
        return None
    for base in nvidia.cuda_runtime.__path__:
        lib = Path(base) / "lib"
        if (lib / "libcudart.so.12").is_file():
            return str(lib)
    return None


def _unavailable(message: str) -> None:
    if REQUIRE_SYSTEM_TOOLS:
        pytest.fail(f"{message}, but DLSERVE_REQUIRE_SYSTEM_TOOLS=1 (.ci/run must install it)")
    pytest.skip(message)


def find_perf_analyzer() -> tuple[str, dict[str, str]]:
    """The binary and the environment it runs in, once it is known to start
    (skips, or fails in CI, when it cannot)."""
    binary = require_binary("perf_analyzer", str(Path(sys.executable).parent / "perf_analyzer"))
    lib = _cuda_runtime_lib()
    if lib is None:
        _unavailable("libcudart.so.12 not found (pip install nvidia-cuda-runtime-cu12)")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (lib, os.environ.get("LD_LIBRARY_PATH")) if p
    )
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env)
    if "error while loading shared libraries" in probe.stderr:
        _unavailable(f"perf_analyzer cannot start: {probe.stderr.strip()} (apt install libb64-0d)")
    assert probe.returncode == 0, probe.stderr
    return binary, env

"""Helpers for tests/integration/test_tune.py: running ``dlserve tune`` as a
process, reading what it wrote, checking a PNG, finding servers it left."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The PNG signature and the first chunk every PNG starts with.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tune_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlserve", "tune", *args]


def tune_env(tmp: Path) -> dict[str, str]:
    """The environment with TMPDIR under the test's folder, so the candidate
    servers' repositories (and command lines) are found there."""
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


def run_tune(*args: str, tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tune_command(*args), capture_output=True, text=True, timeout=timeout, env=tune_env(tmp)
    )


@dataclass
class Outputs:
    folder: Path
    rows: list[dict[str, str]]
    summary: dict[str, Any]


def read_outputs(folder: Path) -> Outputs:
    with (folder / "measurements.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return Outputs(folder, rows, json.loads((folder / "summary.json").read_text()))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; asserts the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline))
    return found

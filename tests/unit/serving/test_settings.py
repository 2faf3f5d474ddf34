"""serving.settings.usable_cpus (probe finding F11): the default
``--inference-threads`` is the CPUs the process may use, not the host's.

The cgroup v2 quota is parsed from a real ``cpu.max`` file written in
tmp_path (the format the kernel writes: "QUOTA PERIOD" or "max PERIOD");
the affinity mask is set for real with os.sched_setaffinity in a child
process, so the test process keeps its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from serving.settings import CGROUP_CPU_MAX, usable_cpus

ROOT = Path(__file__).resolve().parents[3]
needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only"
)


def affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("100000 100000\n", 1),  # one CPU
        ("50000 100000\n", 1),  # half a CPU: never 0
        ("150000 100000\n", 2),  # 1.5 CPUs round up
        ("400000 100000\n", 4),
    ],
)
def test_a_cgroup_quota_bounds_the_cpus(tmp_path: Path, text: str, cpus: int) -> None:
    assert usable_cpus(cpu_max(tmp_path, text)) == min(cpus, affinity())


@pytest.mark.parametrize(
    "text",
    [
        "max 100000\n",  # no quota
        "100000 0\n",  # a period of 0 is no quota
        "",
        "max\n",
        "garbage here\n",
    ],
)
def test_no_quota_or_an_unreadable_one_leaves_the_affinity(tmp_path: Path, text: str) -> None:
    assert usable_cpus(cpu_max(tmp_path, text)) == affinity()


def test_a_missing_quota_file_leaves_the_affinity(tmp_path: Path) -> None:
    """cgroup v1, or no cgroup file system at all."""
    assert usable_cpus(tmp_path / "absent" / "cpu.max") == affinity()


def test_the_default_reads_this_machines_quota() -> None:
    expected = usable_cpus(CGROUP_CPU_MAX)
    assert usable_cpus() == expected and 1 <= expected <= affinity()


@needs_affinity
def test_the_affinity_mask_bounds_the_cpus_and_the_default_threads(tmp_path: Path) -> None:
    """A child pinned to one CPU (as ``taskset -c N`` or a cpuset would)
    counts 1 CPU whatever the host has; a quota above the mask changes
    nothing, and ServingSettings' default inference_threads follows."""
    quota = cpu_max(tmp_path, "800000 100000\n")  # 8 CPUs: above the mask
    cpu = min(os.sched_getaffinity(0))
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        os.sched_setaffinity(0, {{{cpu}}})
        from serving.settings import ServingSettings, usable_cpus
        print(usable_cpus(Path({str(tmp_path / "absent")!r})), usable_cpus(Path({str(quota)!r})),
              ServingSettings().inference_threads, os.cpu_count())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVING_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    alone, with_quota, threads, host = map(int, result.stdout.split())
    assert (alone, with_quota) == (1, 1), result.stdout
    # The host's CPUs would be os.cpu_count(); a cgroup quota below 1 CPU on
    # the test machine could only lower the default further, never raise it.
    assert threads == 1, (threads, host)

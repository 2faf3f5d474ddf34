"""What tests, scripts and benchmarks read of a server process."""

from __future__ import annotations


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS, kB); 0 if the kernel does not say."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

"""What ``dlserve tune`` writes: a row per measured load level (CSV and a
printed table), the best config.pbtxt and a summary JSON; the PNG is
``dlserve.tune_plot``'s."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from dlserve.tune_search import Level

#: The columns of the table and the CSV, in order.
COLUMNS = (
    "config", "max_batch_size", "max_queue_delay_us", "preferred", "instances",
    "intra_op_threads", "concurrency", "throughput_rps", "p99_ms", "errors", "windows", "status",
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One measured load level of one config (``level`` None: it did not serve)."""

    config: int
    point: Mapping[str, int]
    level: Level | None
    status: str
    best: bool = False

    def values(self) -> dict[str, Any]:
        lv = self.level
        return {
            "config": self.config,
            **{k: self.point.get(k, "") for k in COLUMNS[1:6]},
            "concurrency": lv.concurrency if lv else "",
            "throughput_rps": round(lv.throughput, 1) if lv else "",
            "p99_ms": round(lv.p99_ms, 3) if lv and math.isfinite(lv.p99_ms) else "",
            "errors": lv.errors if lv else "",
            "windows": lv.windows if lv else "",
            "status": self.status + (" (best)" if self.best else ""),
        }


def rows_of(
    measured: Sequence[tuple[Mapping[str, int], Sequence[Level], str]],
    budget_ms: float,
    best: tuple[int, int] | None,
) -> list[Row]:
    """Rows from (point, levels, failure reason) per config in measuring
    order; ``best`` is (config index, concurrency) of the recommendation."""
    rows = []
    for i, (point, levels, failure) in enumerate(measured, start=1):
        if not levels:
            rows.append(Row(i, point, None, f"failed: {failure}" if failure else "failed"))
        for lv in levels:
            status = "ok" if lv.within(budget_ms) else ("errors" if lv.errors else "over budget")
            rows.append(Row(i, point, lv, status, best == (i, lv.concurrency)))
    return rows


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.values())


def table(rows: Sequence[Row]) -> str:
    """The rows as a plain fixed-width table."""
    headers = ["cfg", "mbs", "delay_us", "pref", "inst", "intra", "conc", "req/s", "p99 ms",
               "err", "win", "status"]  # fmt: skip
    cells = [[str(v) for v in row.values().values()] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")

"""What every experiment writes: a markdown report with its tables, a results
JSON with the same numbers, and the PNGs.

`ExperimentReport` collects sections, tables and figures while an experiment
runs and writes `report.md` and `results.json` at the end, so the table in the
report and the JSON a test reads are built from one list of rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from training.errors import ExperimentError

Cell = str | int | float | bool | None

REPORT_NAME = "report.md"
RESULTS_NAME = "results.json"


def format_cell(value: Cell) -> str:
    """One table cell: floats with 6 significant digits, None as an em dash.

    A `|` inside a cell is escaped as `\\|` so it does not split the row.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A GitHub-flavoured markdown table, one line per row."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(headers)}")
    lines = [
        "| " + " | ".join(format_cell(h) for h in headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
    ]
    lines += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """JSON-safe copy: tuples become lists, NaN/inf become None, numpy scalars plain."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


@dataclass
class Table:
    """A named table: `rows` are what the markdown shows, cell for cell."""

    name: str
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass
class ExperimentReport:
    """Accumulates one experiment's output; `write()` puts it into `out`."""

    name: str
    title: str
    out: Path
    command: str
    seed: int
    quick: bool
    _blocks: list[str] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    images: dict[str, list[int]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def text(self, paragraph: str) -> None:
        self._blocks.append(paragraph.strip())

    def heading(self, title: str) -> None:
        self._blocks.append(f"## {title}")

    def table(self, name: str, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
        table = Table(name, list(headers), [list(r) for r in rows])
        self.tables[name] = table
        self._blocks.append(markdown_table(table.headers, table.rows))

    def keyed_table(self, name: str, rows: Sequence[Mapping[str, Cell]]) -> None:
        """`table` from rows that name each cell's column, so a header stands
        beside its value: the first row's keys, in order, are the headers, and
        every row has those keys in that order."""
        headers = list(rows[0])
        for row in rows:
            if list(row) != headers:
                raise ValueError(f"row {dict(row)!r} does not have the columns {headers}")
        self.table(name, headers, [[row[h] for h in headers] for row in rows])

    def image(self, filename: str, size: tuple[int, int], caption: str) -> None:
        """Reference a PNG already saved into `out` (size is width, height in px)."""
        self.images[filename] = [size[0], size[1]]
        self._blocks.append(f"![{caption}]({filename})")

    def write(self) -> list[Path]:
        """Write report.md and results.json; return every file of the experiment."""
        header = [
            f"# Experiment: {self.title}",
            f"Reproduce with `{self.command}` (seed {self.seed}"
            + (", quick mode" if self.quick else "")
            + ").",
        ]
        report = self.out / REPORT_NAME
        results = self.out / RESULTS_NAME
        payload = {
            "experiment": self.name,
            "seed": self.seed,
            "quick": self.quick,
            "images": self.images,
            "tables": {
                t.name: {"headers": t.headers, "rows": t.rows} for t in self.tables.values()
            },
            **self.results,
        }
        try:
            report.write_text("\n\n".join(header + self._blocks) + "\n", encoding="utf-8")
            results.write_text(
                json.dumps(_clean(payload), indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
        except OSError as exc:
            raise ExperimentError(
                f"cannot write the report into {self.out}: {exc.strerror}"
            ) from exc
        return [report, results, *(self.out / name for name in self.images)]


def prepare_out(out: Path) -> Path:
    """Create the output folder (and parents); a user-fixable failure is an ExperimentError."""
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ExperimentError(f"cannot write into --out {out}: {exc.strerror}") from exc
    return out

"""``dlserve tune``'s picture: throughput against p99 for every measured
level, the Pareto frontier, the latency budget and the recommended point.

matplotlib (and tqdm, tune's progress bar) are not part of the serving
install: they come with the ``tune`` extra (``pip install 'dlserve[tune]'``)
and are imported only when used; `require` says so before any measuring starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from dlserve.errors import CliError
from dlserve.tune_report import Row
from dlserve.tune_search import pareto_front

MISSING = (
    "dlserve tune draws its plot with matplotlib and its progress bar with tqdm "
    "(not in the serving install): pip install 'dlserve[tune]'"
)


def require() -> None:
    """Fail now, in one line, if the plot could not be drawn at the end."""
    try:
        import matplotlib  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        raise CliError(MISSING) from exc


def plot(path: Path, rows: Sequence[Row], budget_ms: float, title: str) -> None:
    """Write the PNG (Agg: no display needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - require() ran first
        raise CliError(MISSING) from exc

    measured = [r for r in rows if r.level is not None and math.isfinite(r.level.p99_ms)]
    xy = [(r.level.p99_ms, r.level.throughput) for r in measured if r.level is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=100)
    try:
        _draw(ax, measured, xy, budget_ms)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _draw(ax: Any, measured: Sequence[Row], xy: list[tuple[float, float]], budget: float) -> None:
    inside = [p for p, r in zip(xy, measured, strict=True) if r.status == "ok"]
    outside = [p for p, r in zip(xy, measured, strict=True) if r.status != "ok"]
    if inside:
        ax.scatter(*zip(*inside, strict=True), s=18, c="tab:blue", label="within budget")
    if outside:
        ax.scatter(*zip(*outside, strict=True), s=18, c="tab:gray", marker="x",
                   label="over budget / errors")  # fmt: skip
    front = [xy[i] for i in pareto_front(xy)]
    if front:
        ax.step(*zip(*front, strict=True), where="post", c="tab:orange", lw=1.5,
                label="Pareto frontier")  # fmt: skip
    ax.axvline(budget, c="tab:red", ls="--", lw=1, label=f"p99 budget {budget:g} ms")
    for (x, y), row in zip(xy, measured, strict=True):
        if row.best and row.level is not None:
            ax.scatter([x], [y], s=120, facecolors="none", edgecolors="tab:green", lw=2,
                       label="recommended")  # fmt: skip
            p = row.point
            ax.annotate(
                f"mbs {p.get('max_batch_size')}, delay {p.get('max_queue_delay_us')} us,\n"
                f"inst {p.get('instances')}, conc {row.level.concurrency}",
                (x, y), textcoords="offset points", xytext=(8, -22), fontsize=7,
            )  # fmt: skip
    xs = [x for x, _ in xy] + [budget]
    if max(xs) / max(min(xs), 1e-6) > 10:
        from matplotlib import ticker

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (req/s)")
    ax.grid(True, alpha=0.3)
    # below the axes, so it never covers a point
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)

"""``dlserve tune``: the fastest config that meets a p99 latency budget,
measured (Model Analyzer's job, in one command).

With ``--repository`` each candidate config is served by a real ``dlserve
serve`` process and driven by ``dlserve bench``'s closed loop at rising
concurrency until its p99 passes the budget (``dlserve.tune_server``); the
candidates are chosen by a hill climb over max_batch_size, queue delay,
preferred batch size, instance count and intra-op threads
(``dlserve.tune_search``). With ``--url`` the running server's current config
is measured only: RepositoryModelLoad on this server takes no config
override, so tune cannot try other configs on a server it did not start.

Written to ``--output``: ``config.pbtxt`` (the best config: the highest
throughput within the budget), ``measurements.csv`` (every measured level;
also printed), ``frontier.png`` (throughput vs p99, the Pareto frontier, the
budget line) and ``summary.json`` (the best point, its serve flags, the
points visited against the grid's size). Ctrl-C stops measuring and writes
the same files from what was measured.

This module only registers the command: the rest is imported when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from dlserve.argparsing import add_command
from dlserve.errors import CliError

#: The space's dimensions and their default values (flag, point key, default).
DIMENSION_FLAGS = (
    ("--max-batch-sizes", "max_batch_size", "1,2,4,8,16,32,64,128"),
    ("--queue-delays-us", "max_queue_delay_us", "0,100,500,2000"),
    ("--preferred", "preferred", "off,max"),
    ("--instances", "instances", "1,2,4"),
    ("--intra-op-threads", "intra_op_threads", "1,2,4"),
)


def register(sub: Any) -> None:
    p = add_command(sub, "tune", run_tune)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path, metavar="DIR", help="model repository")
    where.add_argument("--url", metavar="HOST:PORT", help="a running server's gRPC address")
    p.add_argument("--model", required=True)
    p.add_argument("--latency-budget-ms", type=float, required=True, metavar="P99")
    p.add_argument("--concurrency", default="1,8,32", help="requests in flight, e.g. 1,8,32")
    p.add_argument("--duration", type=float, default=5.0, metavar="S", help="seconds per level")
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="before each level")
    p.add_argument("--output", type=Path, metavar="DIR", help="default: tune-MODEL")
    for flag, _, default in DIMENSION_FLAGS:
        p.add_argument(flag, default=default, metavar="LIST", help=f"default {default}")
    p.add_argument(
        "--min-gain-pct", type=float, default=2.0, metavar="PCT",
        help="a step must raise throughput by this much to be taken (noise); default 2",
    )  # fmt: skip
    p.add_argument(
        "--stability-pct", type=float, default=10.0, metavar="PCT",
        help="measure each level again until two windows agree this closely in req/s and p99 "
        "(as perf_analyzer does); 0: one window; default 10",
    )  # fmt: skip
    p.add_argument("--max-windows", type=int, default=3, metavar="N",
                   help="windows per level at most; default 3")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _ints(flag: str, text: str) -> tuple[int, ...]:
    if flag == "--preferred":
        words = {"off": 0, "max": 1}
        try:
            values = tuple(words[w.strip()] for w in text.split(",") if w.strip())
        except KeyError as exc:
            raise CliError(f"--preferred takes off and/or max, got {text!r}") from exc
    else:
        try:
            values = tuple(int(w) for w in text.split(",") if w.strip())
        except ValueError as exc:
            raise CliError(f"{flag} must be comma-separated integers, got {text!r}") from exc
    low = 1 if flag in ("--max-batch-sizes", "--instances", "--intra-op-threads") else 0
    if not values or min(values) < low or len(set(values)) != len(values):
        raise CliError(f"{flag} needs distinct values >= {low}, got {text!r}")
    return values


def build_space(args: argparse.Namespace, batching: bool) -> Any:
    """The search space from the flags; without batching (the model's config
    has max_batch_size 0) only instances and threads vary."""
    from dlserve.tune_search import Dimension, Space

    dims = [Dimension(key, _ints(flag, getattr(args, _dest(flag)))) for flag, key, _ in
            DIMENSION_FLAGS]  # fmt: skip
    if not batching:
        dims[0], dims[1], dims[2] = (Dimension(d.name, (0,)) for d in dims[:3])

    def canonical(point: dict[str, int]) -> dict[str, int]:
        # One row per batch: the queue delay and a preferred size cannot matter.
        if point["max_batch_size"] <= 1:
            point["max_queue_delay_us"] = dims[1].values[0]
            point["preferred"] = dims[2].values[0]
        return point

    return Space(tuple(dims), canonical)


def _short(point: dict[str, int]) -> str:
    """A point for the progress bar: mbs=8 delay=100 pref=max inst=2 intra=1."""
    names = {"max_batch_size": "mbs", "max_queue_delay_us": "delay", "preferred": "pref",
             "instances": "inst", "intra_op_threads": "intra"}  # fmt: skip
    return " ".join(f"{names.get(k, k)}={v}" for k, v in point.items())


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _check(args: argparse.Namespace) -> None:
    from dlserve.bench import parse_concurrency
    from dlserve.errors import ClientError

    try:
        args.levels = parse_concurrency(args.concurrency)
    except ClientError as exc:
        raise CliError(str(exc)) from exc
    if not args.latency_budget_ms > 0:
        raise CliError("--latency-budget-ms must be > 0")
    if not args.duration > 0 or args.warmup < 0:
        raise CliError("--duration must be > 0 and --warmup >= 0")
    if args.stability_pct < 0 or args.max_windows < 1:
        raise CliError("--stability-pct must be >= 0 and --max-windows >= 1")
    if args.repository is not None and not (args.repository / args.model).is_dir():
        raise CliError(f"no model folder {args.repository / args.model}")
    args.output = args.output or Path(f"tune-{args.model}")
    if args.output.exists() and not args.output.is_dir():
        raise CliError(f"--output {args.output} exists and is not a folder")


def run_tune(args: argparse.Namespace) -> int:
    """measure candidate configs under load; write the best config.pbtxt, a table, a plot

    Serve MODEL under candidate configs (a hill climb over the dimensions below, starting from
    each one's first value), drive each with closed-loop gRPC load at rising --concurrency until
    p99 passes --latency-budget-ms, and write the config with the highest throughput within the
    budget. With --url only the running server's current config is measured (this server takes
    no config override on load).
    """
    from dlserve import tune_plot

    _check(args)
    tune_plot.require()
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create --output {args.output}: {exc.strerror}") from exc
    if args.url is not None:
        return _measure_url(args)
    return _search(args)


def _settings(args: argparse.Namespace) -> Any:
    from dlserve.tune_server import Settings

    return Settings(args.model, args.levels, args.duration, args.warmup, args.latency_budget_ms,
                    args.device, args.stability_pct / 100, args.max_windows)  # fmt: skip


def _search(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dlserve.tune_search import Climb, Point
    from dlserve.tune_server import Candidates

    candidates = Candidates(args.repository, _settings(args))
    space = build_space(args, candidates.base.max_batch_size > 0 or not candidates.base.input)
    grid = len(space.grid())
    per = len(args.levels) * (args.duration * args.max_windows + args.warmup) + 2
    print(f"tune {args.model}: p99 <= {args.latency_budget_ms:g} ms; a hill climb over a grid "
          f"of {grid} configs, each up to ~{per:.0f} s", file=sys.stderr)  # fmt: skip
    bar = tqdm(total=grid, unit="config", desc="tune", file=sys.stderr, dynamic_ncols=True)

    def evaluate(point: Point) -> list[Any]:
        values = space.as_dict(point)
        bar.set_postfix_str(_short(values), refresh=True)
        levels = candidates.measure(point, values)
        bar.update(1)
        return levels

    climb = Climb(space, evaluate, args.latency_budget_ms, args.min_gain_pct / 100)
    interrupted = False
    try:
        climb.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        candidates.close()
    measured = [
        (space.as_dict(p), levels, candidates.failures.get(p, ""))
        for p, levels in climb.results.items()
    ]
    best = climb.best()
    best_config = None
    if best is not None:
        from dlserve.tune_server import candidate_config

        best_config = candidate_config(candidates.base, space.as_dict(best))
    index = list(climb.results).index(best) if best is not None else None
    path = [space.as_dict(p) for p in climb.path]
    extra = {"grid_configs": grid, "path": path}
    return _write(args, measured, index, best_config, interrupted, extra)


def _measure_url(args: argparse.Namespace) -> int:
    from dlserve.tune_server import CandidateFailed, sweep

    config = _server_config(args.url, args.model)
    db = config.dynamic_batching
    point = {
        "max_batch_size": config.max_batch_size,
        "max_queue_delay_us": db.max_queue_delay_microseconds,
        "preferred": int(bool(db.preferred_batch_size)),
        "instances": sum(max(g.count, 1) for g in config.instance_group) or 1,
    }
    print(f"tune {args.model} at {args.url}: measuring the server's current config only "
          "(no config override on load; use --repository to search)", file=sys.stderr)  # fmt: skip
    interrupted = False
    levels: list[Any] = []
    try:
        levels = sweep(args.url, _settings(args))
    except CandidateFailed as exc:
        raise CliError(f"{args.url}: {exc}") from exc
    except KeyboardInterrupt:
        interrupted = True
    from dlserve.tune_search import best_level

    best = 0 if best_level(levels, args.latency_budget_ms) is not None else None
    return _write(args, [(point, levels, "")], best, config if best is not None else None,
                  interrupted, {"url": args.url})  # fmt: skip


def _server_config(url: str, model: str) -> Any:
    import grpc

    from serving._generated import grpc_service_pb2 as pb
    from serving._generated import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(url) as channel:
        try:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelConfig(
                pb.ModelConfigRequest(name=model), timeout=10
            )
        except grpc.RpcError as exc:
            raise CliError(f"{url}: ModelConfig of {model}: {exc.code().name}: "
                           f"{exc.details()}") from exc  # fmt: skip
    return reply.config


def _write(
    args: argparse.Namespace,
    measured: Sequence[tuple[dict[str, int], Sequence[Any], str]],
    best_index: int | None,
    best_config: Any,
    interrupted: bool,
    extra: dict[str, Any],
) -> int:
    """Every output from what was measured; the exit code."""
    from dlserve import tune_plot, tune_report
    from dlserve.tune_search import best_level
    from dlserve.tune_server import config_text, serve_flags

    budget = args.latency_budget_ms
    best = None  # (config index, point, level)
    if best_index is not None:
        point, levels, _ = measured[best_index]
        level = best_level(levels, budget)
        assert level is not None
        best = (best_index, point, level)
    marked = (best[0] + 1, best[2].concurrency) if best is not None else None
    rows = tune_report.rows_of(measured, budget, marked)
    out = args.output
    tune_report.write_csv(out / "measurements.csv", rows)
    print(tune_report.table(rows))
    title = f"dlserve tune {args.model}: {len(measured)} configs, {len(rows)} levels"
    tune_plot.plot(out / "frontier.png", rows, budget, title)
    summary: dict[str, Any] = {"model": args.model, "latency_budget_ms": budget,
                               "configs_measured": len(measured), "interrupted": interrupted,
                               **extra}  # fmt: skip
    config_path = out / "config.pbtxt"
    flags: list[str] = []
    if best is not None:
        _, point, level = best
        config_path.write_text(config_text(best_config))
        flags = serve_flags(point) if "intra_op_threads" in point else []
        summary["best"] = {**point, "concurrency": level.concurrency,
                           "throughput_rps": level.throughput, "p99_ms": level.p99_ms,
                           "serve_flags": flags}  # fmt: skip
    elif config_path.exists():
        config_path.unlink()  # an earlier run's, not this one's
    tune_report.write_summary(out / "summary.json", summary)
    wrote = [p.name for p in (config_path, out / "measurements.csv", out / "frontier.png",
                              out / "summary.json") if p.exists()]  # fmt: skip
    print(f"wrote {', '.join(wrote)} to {out}{os.sep}", file=sys.stderr)
    if "grid_configs" in extra:
        print(f"measured {len(measured)} of the grid's {extra['grid_configs']} configs",
              file=sys.stderr)  # fmt: skip
    if interrupted:
        print(f"dlserve tune: interrupted; kept the {len(rows)} level(s) measured",
              file=sys.stderr)  # fmt: skip
        return 130
    if best is None:
        print(f"dlserve tune: no measured level met p99 <= {budget:g} ms (see the table); "
              "no config.pbtxt written", file=sys.stderr)  # fmt: skip
        return 1
    _, point, level = best
    how = f" and dlserve serve {' '.join(flags)}" if flags else ""
    print(f"best: {level.throughput:.1f} req/s at p99 {level.p99_ms:.2f} ms (concurrency "
          f"{level.concurrency}); serve it with config.pbtxt{how}", file=sys.stderr)  # fmt: skip
    return 0

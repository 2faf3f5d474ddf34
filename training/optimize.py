"""``dlserve optimize``: a faster variant of a model as a new version, kept only
if its held-out accuracy holds.

`optimize` takes one FP32 version of ``REPOSITORY/MODEL`` (the newest one
that is not itself a variant, or ``version``), finds the training run that
built it (`training.provenance`: the data set, seed and split), and

1. builds the variant with ONNX Runtime's tools (`training.variants`): INT8
   calibrated on ``calibration`` rows of that run's training split, FP16, or
   offline graph optimization;
2. gates it on that run's held-out split (`training.optimize_report.compare`):
   a variant that ONNX Runtime does not load, or whose accuracy drops by more
   than ``max_accuracy_drop`` percentage points, raises `VariantRefused` and
   nothing is written;
3. measures in-process latency before/after at batch 1/8/64;
4. writes the variant as version N+1 of the model (or of a new model
   ``name``: config.pbtxt, renamed, and labels.txt copied), atomically as
   `training.repository.write_version` does, and the report to
   ``RUNS_DIR/<model>/v<N+1>/optimize.json``.

Errors (under `training.errors.TrainingError`)::

    OptimizeError        the model, its versions or the flags do not allow it
    └── VariantRefused   the gate refused the variant (exit 1, nothing written)
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from training import datasets, optimize_report, variants
from training.errors import TrainingError
from training.provenance import VARIANT_KEY, Provenance, provenance_of
from training.repository import (
    check_repository_writable,
    preflight,
    roll_back,
    snapshot,
    write_text_atomic,
    write_version,
)

__all__ = [
    "DEFAULT_CALIBRATION",
    "DEFAULT_MAX_DROP",
    "KINDS",
    "OptimizeError",
    "OptimizeOutcome",
    "VariantRefused",
    "optimize",
]

KINDS = tuple(variants.KINDS)
DEFAULT_CALIBRATION = 256
DEFAULT_MAX_DROP = 0.5


class OptimizeError(TrainingError):
    """The model cannot be optimized as asked (no such model or version, bad name...)."""


class VariantRefused(OptimizeError):
    """The variant failed its gate: it does not load, or accuracy dropped too far."""


@dataclass(frozen=True)
class OptimizeOutcome:
    model_dir: Path
    version: int
    model_path: Path
    report_path: Path
    report: dict[str, Any]


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def _metadata(onnx: Any, path: Path) -> dict[str, str]:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise OptimizeError(f"cannot read {path} as ONNX: {exc}") from None
    return {p.key: p.value for p in proto.metadata_props}


def _source(model_dir: Path, version: int | None) -> tuple[int, Path, dict[str, str]]:
    """The FP32 version to optimize: ``version``, or the newest that is no variant."""
    import onnx

    if not model_dir.is_dir():
        raise OptimizeError(f"no model {model_dir.name!r} in {model_dir.parent}")
    versions = _versions(model_dir)
    if version is not None:
        path = model_dir / str(version) / "model.onnx"
        if version not in versions or not path.is_file():
            raise OptimizeError(f"{model_dir.name} has no version {version} (it has {versions})")
        meta = _metadata(onnx, path)
        if VARIANT_KEY in meta:
            raise OptimizeError(
                f"{path} is already a {meta[VARIANT_KEY]} variant: optimize an FP32 version"
            )
        return version, path, meta
    for v in reversed(versions):
        path = model_dir / str(v) / "model.onnx"
        if path.is_file():
            meta = _metadata(onnx, path)
            if VARIANT_KEY not in meta:
                return v, path, meta
    raise OptimizeError(f"{model_dir} holds no FP32 version (model.onnx) to optimize")


def _target_config(source_dir: Path, target: str) -> str | None:
    """The config.pbtxt text for a new model ``target`` (the source's, renamed)."""
    path = source_dir / "config.pbtxt"
    if not path.is_file():
        return None
    from google.protobuf import text_format

    from serving._generated import model_config_pb2 as mc

    config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    config.name = target
    return text_format.MessageToString(config)


def _write(source_dir: Path, target_dir: Path, data: bytes) -> int:
    """Version N+1 of ``target_dir``; a new model gets the source's config and labels."""
    created, previous = snapshot(target_dir)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        if target_dir != source_dir and not (target_dir / "config.pbtxt").exists():
            labels = source_dir / "labels.txt"
            if labels.is_file():
                write_text_atomic(target_dir / "labels.txt", labels.read_text(encoding="utf-8"))
            config = _target_config(source_dir, target_dir.name)
            if config is not None:
                write_text_atomic(target_dir / "config.pbtxt", config)
        return write_version(target_dir, data)
    except BaseException as exc:
        roll_back(target_dir, created, previous)
        if isinstance(exc, OSError):
            raise OptimizeError(f"cannot write to {target_dir}: {exc.strerror or exc}") from exc
        raise


def optimize(
    repository: Path,
    model: str,
    to: str = "int8",
    *,
    calibration: int = DEFAULT_CALIBRATION,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    name: str | None = None,
    version: int | None = None,
    runs_dir: Path = Path("runs"),
    latency_seconds: float = 0.3,
    log: Callable[[str], None] = print,
) -> OptimizeOutcome:
    """Build, gate and write the ``to`` variant of ``repository/model`` (see the module)."""
    if to not in variants.KINDS:
        raise OptimizeError(f"unknown variant {to!r}; choose one of {', '.join(KINDS)}")
    if calibration < 1:
        raise OptimizeError(f"--calibration must be a positive number of rows, got {calibration}")
    source_dir = repository / model
    src_version, src_path, meta = _source(source_dir, version)
    prov = provenance_of(meta, model, str(src_path))
    target = name or model
    try:
        replace(prov.config, name=target).validate()
    except ValueError as exc:
        raise OptimizeError(str(exc)) from None
    preflight(repository, target)
    check_repository_writable(runs_dir, target)

    split = datasets.load_for(prov.config)
    fp32 = src_path.read_bytes()
    try:
        before = optimize_report.session(fp32)
    except optimize_report.VariantLoadError as exc:
        raise OptimizeError(f"{src_path}: {exc}") from None
    shape = before.get_inputs()[0].shape[1:]
    if list(shape) != list(split.input_shape):
        raise OptimizeError(
            f"{src_path} takes rows of {shape}, but its training data ({prov.source}: "
            f"{prov.config.dataset}) has rows of {list(split.input_shape)}"
        )
    rows = split.X_train[:calibration]
    started = time.perf_counter()
    # int8: every layer first; if that fails the gate, again with the input
    # layer in FP32 (the accuracy-driven fallback of accuracy-aware quantizers).
    for keep_input_layer in (False, True) if to == "int8" else (False,):
        try:
            data = variants.build(to, fp32, rows if to == "int8" else None,
                                  keep_input_layer=keep_input_layer)  # fmt: skip
            after = optimize_report.session(data)
            cmp = optimize_report.compare(before, after, split.X_val, split.y_val)
        except (variants.VariantError, optimize_report.VariantLoadError) as exc:
            raise VariantRefused(
                f"refused: the {to} variant of {model} version {src_version} failed ({exc}); "
                "nothing was written"
            ) from None
        if cmp.drop_points <= max_accuracy_drop or to != "int8" or keep_input_layer:
            break
        log(
            f"int8 with every layer quantized: held-out accuracy {cmp.accuracy_after:.2%} "
            f"(a drop of {cmp.drop_points:.2f} points); trying again with the input layer "
            "in FP32"
        )
    built_s = time.perf_counter() - started
    if cmp.drop_points > max_accuracy_drop:
        raise VariantRefused(
            f"refused: {to} held-out accuracy {cmp.accuracy_after:.2%} vs "
            f"{cmp.accuracy_before:.2%} for {model} version {src_version} on {cmp.samples} "
            f"held-out rows, a drop of {cmp.drop_points:.2f} points > --max-accuracy-drop "
            f"{max_accuracy_drop:g}; nothing was written"
        )
    lat = optimize_report.latency(before, after, split.X_val, seconds=latency_seconds)

    target_dir = repository / target
    new_version = _write(source_dir, target_dir, data)
    model_path = target_dir / str(new_version) / "model.onnx"
    report = _report(
        model, src_version, src_path, to, target, new_version, model_path, prov,
        split, len(rows), max_accuracy_drop, cmp, len(fp32), len(data), lat, built_s,
        keep_input_layer,
    )  # fmt: skip
    report_dir = runs_dir / target / f"v{new_version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    report_path = report_dir / "optimize.json"
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    calibrated = f"calibrated on {len(rows)} training rows, " if to == "int8" else ""
    log(
        f"{to} variant of {model} v{src_version} written as {model_path} "
        f"(training data: {prov.config.dataset}, seed {prov.config.seed}, from {prov.source}; "
        f"{calibrated}gated on {cmp.samples} held-out rows)"
    )
    log(optimize_report.format_table(report))
    log(f"report {report_path}")
    return OptimizeOutcome(target_dir, new_version, model_path, report_path, report)


def _report(
    model: str,
    src_version: int,
    src_path: Path,
    to: str,
    target: str,
    new_version: int,
    model_path: Path,
    prov: Provenance,
    split: datasets.Split,
    calibration_rows: int,
    max_accuracy_drop: float,
    cmp: optimize_report.Comparison,
    bytes_before: int,
    bytes_after: int,
    lat: dict[str, dict[str, float]],
    built_s: float,
    input_layer_fp32: bool,
) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "variant": to,
        "source": {"model": model, "version": src_version, "path": str(src_path)},
        "output": {"model": target, "version": new_version, "path": str(model_path)},
        "training": prov.as_dict(),
        "calibration": {
            "split": "train" if to == "int8" else None,
            "rows": calibration_rows if to == "int8" else 0,
        },
        # int8: whether the input layer stayed FP32 (the fully quantized model failed the gate)
        "input_layer_fp32": input_layer_fp32,
        "held_out": {"split": "val", "rows": int(len(split.y_val))},
        "max_accuracy_drop": max_accuracy_drop,
        "comparison": cmp.as_dict(),
        "bytes": {"before": bytes_before, "after": bytes_after},
        "latency": lat,
        "latency_method": "in-process InferenceSession.run, CPU provider, the server's "
        "session options (1 intra-op thread, ORT_ENABLE_ALL); median per run",
        "build_and_gate_s": built_s,
        "environment": {
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }

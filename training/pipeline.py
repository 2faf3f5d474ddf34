"""One `dlserve train` run: data -> model -> training -> parity-checked export -> report.

`run` takes an explicit `TrainConfig` and paths (no argparse namespace) and
returns a `TrainOutcome`; `run_fresh` is `run` into a model folder that then
replaces the old one (``dlserve train --fresh``, ``make models``). The CLI is a
thin layer on them.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from training import datasets, engine, provenance, report
from training.config import TrainConfig
from training.export import PARITY_TOLERANCE, ExportResult, export_to_repository
from training.models import (
    MLP,
    DigitsCNN,
    Normalize,
    PerceptronResult,
    parameter_count,
    train_perceptron,
    with_normalization,
)
from training.repository import TMP_PREFIX, check_repository_writable, preflight

__all__ = ["TrainOutcome", "build_model", "run", "run_fresh"]


@dataclass
class TrainOutcome:
    config: TrainConfig
    metrics: dict[str, Any]
    model: nn.Module
    split: datasets.Split
    export: ExportResult | None = None
    report_dir: Path | None = None
    plots: list[Path] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics["val"]["accuracy"])


def build_model(cfg: TrainConfig, split: datasets.Split) -> nn.Module:
    """The untrained network for ``cfg`` (mlp|cnn), taking raw features: Normalize -> net."""
    per_feature = split.name != "digits"  # images: one mean/std for all pixels
    if cfg.model == "mlp":
        net: nn.Module = MLP(
            int(np.prod(split.input_shape)), cfg.hidden, split.classes, cfg.activation
        )
    elif cfg.model == "cnn":
        net = DigitsCNN(split.classes, activation=cfg.activation)
    else:
        raise ValueError(f"build_model does not build {cfg.model!r} (PLA trains it directly)")
    return with_normalization(net, split.X_train, per_feature=per_feature)


def _threads_for(cfg: TrainConfig) -> int:
    # These networks and data sets are tiny: thread start-up and synchronisation
    # cost more than the math. Measured on 2 busy cores, digits-cnn trained in
    # 1.1 s on one thread and 9.9 s on two (same weights: results do not depend
    # on it here).
    return 1


def run(
    cfg: TrainConfig,
    *,
    repository: Path,
    runs_dir: Path,
    dry_run: bool = False,
    progress: bool = True,
    parity_tolerance: float = PARITY_TOLERANCE,
    log: Callable[[str], None] = print,
) -> TrainOutcome:
    """Train ``cfg`` and export it as a new version of ``repository/<name>``.

    ``dry_run`` trains on one batch (one PLA epoch) and exports nothing.
    Raises `ValueError` for a bad config, `training.export.ExportError` for a
    refused export or an unwritable repository (checked before training).
    """
    cfg.validate()
    if not dry_run:
        preflight(repository, cfg.name)
        check_repository_writable(runs_dir, cfg.name)
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(_threads_for(cfg))
    try:
        split = datasets.load_for(cfg)
        t_data = time.perf_counter()
        engine.seed_everything(cfg.seed)
        history: engine.History | None = None
        pla: PerceptronResult | None = None
        if cfg.model == "perceptron":
            norm = Normalize.fit(split.X_train)
            with torch.no_grad():
                Xn = norm(torch.from_numpy(split.X_train)).numpy()
            pla = train_perceptron(
                Xn, split.y_train, max_epochs=1 if dry_run else cfg.epochs, seed=cfg.seed, lr=cfg.lr
            )
            model: nn.Module = nn.Sequential(norm, pla.to_module())
        else:
            model = build_model(cfg, split)
            history = engine.fit(
                model,
                split.X_train,
                split.y_train,
                split.X_val,
                split.y_val,
                progress=progress,
                max_steps=1 if dry_run else None,
                **cfg.fit_kwargs(),
            )
        t_train = time.perf_counter()
        model.eval()
        train_loss, train_acc = engine.evaluate(model, split.X_train, split.y_train)
        val_loss, val_acc = engine.evaluate(model, split.X_val, split.y_val)
        for value, what in ((train_loss, "training loss"), (val_loss, "held-out loss")):
            if not math.isfinite(value):
                raise ValueError(f"training diverged ({what} is {value}); try a smaller --lr")
        metrics: dict[str, Any] = {
            "name": cfg.name,
            "preset": cfg.preset,
            "seed": cfg.seed,
            "config": cfg.as_dict(),
            "data": {
                "dataset": cfg.dataset,
                "train_samples": len(split.y_train),
                "val_samples": len(split.y_val),
                "classes": list(split.labels),
                "input_shape": list(split.input_shape),
            },
            "train": {"accuracy": train_acc, "loss": train_loss},
            "val": {"accuracy": val_acc, "loss": val_loss},
            "parameters": parameter_count(model),
        }
        if pla is not None:
            metrics["perceptron"] = {
                "algorithm": "perceptron learning algorithm (mistake-driven updates)",
                "converged": pla.converged,
                "epochs": pla.epochs,
                "mistakes_per_epoch": pla.mistakes_per_epoch,
            }
        if history is not None:
            metrics["history"] = {
                "epochs": history.epochs,
                "train_loss": history.train_loss,
                "train_acc": history.train_acc,
                "val_loss": history.val_loss,
                "val_acc": history.val_acc,
                "layer_names": history.layer_names,
                "grad_magnitude": history.grad_magnitude,
            }
        outcome = TrainOutcome(cfg, metrics, model, split)
        log(
            f"trained {cfg.name}: held-out accuracy {val_acc:.2%} (train {train_acc:.2%}), "
            f"{_training_summary(history, pla)} in {t_train - t_data:.1f}s"
        )
        if dry_run:
            log("dry run: one batch trained, nothing exported")
            return outcome

        result = export_to_repository(
            model,
            repository=repository,
            name=cfg.name,
            labels=split.labels,
            example=split.X_val,
            X_parity=split.X_val,
            max_batch_size=cfg.max_batch_size,
            tolerance=parity_tolerance,
            metadata=provenance.metadata_for(cfg),
        )
        outcome.export = result
        t_export = time.perf_counter()
        metrics["version"] = result.version
        metrics["model_path"] = str(result.model_path)
        metrics["onnx"] = {
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": result.opset,
            "ir_version": result.ir_version,
            "bytes": result.onnx_bytes,
        }
        metrics["parity"] = result.parity.as_dict()
        log(
            f"exported {result.model_path} (opset {result.opset}, IR {result.ir_version}); "
            f"parity on {result.parity.samples} held-out inputs: max |Δ logits| "
            f"{result.parity.max_abs_diff_logits:.2g}, argmax agrees "
            f"{result.parity.argmax_agreement}/{result.parity.samples}"
        )

        # The report is built in a temp folder and renamed into place, like a version.
        (runs_dir / cfg.name).mkdir(parents=True, exist_ok=True)
        building = runs_dir / cfg.name / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        building.mkdir()
        try:
            plots = _plots(outcome, history, pla, building)
            t_report = time.perf_counter()
            metrics["durations_s"] = {
                "data": t_data - t0,
                "train": t_train - t_data,
                "export_and_parity": t_export - t_train,
                "report": t_report - t_export,
                "total": t_report - t0,
            }
            metrics["environment"] = _environment()
            report.write_metrics(building / "metrics.json", metrics)
            report_dir = _claim_report_dir(building, runs_dir / cfg.name, result.version)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        outcome.report_dir = report_dir
        outcome.plots = [report_dir / p.name for p in plots]
        log(
            f"report {report_dir}/ (metrics.json, " + ", ".join(p.name for p in outcome.plots) + ")"
        )
        return outcome
    finally:
        torch.set_num_threads(threads_before)


def run_fresh(
    cfg: TrainConfig,
    *,
    repository: Path,
    runs_dir: Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainOutcome:
    """`run`, then replace ``repository/<name>`` with a folder holding only the new version 1.

    The new folder (config.pbtxt and labels.txt written afresh) is built under
    ``<repository>/.dlserve-tmp-fresh-*`` and swapped in by rename; whatever the
    old folder held (versions, a config that does not parse) is dropped. The
    report's ``model_path`` names the final place.
    """
    check_repository_writable(repository)
    repository.mkdir(parents=True, exist_ok=True)
    staging = repository / f"{TMP_PREFIX}fresh-{uuid.uuid4().hex}"
    staging.mkdir()
    target = repository / cfg.name
    built = str(staging / cfg.name)
    try:
        outcome = run(
            cfg,
            repository=staging,
            runs_dir=runs_dir,
            progress=progress,
            log=lambda line: log(line.replace(built, str(target))),
        )
        old = repository / f"{TMP_PREFIX}old-{uuid.uuid4().hex}"
        if target.exists():
            target.rename(old)
        (staging / cfg.name).rename(target)
        shutil.rmtree(old, ignore_errors=True)
        if outcome.report_dir is not None:
            outcome.metrics["model_path"] = str(target / "1" / "model.onnx")
            report.write_metrics(outcome.report_dir / "metrics.json", outcome.metrics)
        log(f"{cfg.name}: {target} now holds only version 1")
        return outcome
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _claim_report_dir(building: Path, parent: Path, version: int) -> Path:
    """Rename ``building`` to ``parent/v<version>``; if a report of that name exists
    (from another repository sharing this runs folder, or one wiped since), it is
    kept and this one becomes ``v<version>-2``, ``-3``, ..."""
    for k in range(1, 1000):
        target = parent / (f"v{version}" if k == 1 else f"v{version}-{k}")
        if target.exists():
            continue
        try:
            os.rename(building, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue  # another run took it a moment ago
            raise
        return target
    raise OSError(f"no free report folder name for v{version} in {parent}")


def _training_summary(history: engine.History | None, pla: PerceptronResult | None) -> str:
    if pla is not None:
        state = "converged" if pla.converged else "did not converge"
        return f"perceptron learning algorithm {state} after {pla.epochs} epochs"
    return f"{history.epochs} epochs" if history is not None else "no training"


def _plots(
    outcome: TrainOutcome,
    history: engine.History | None,
    pla: PerceptronResult | None,
    out: Path,
) -> list[Path]:
    cfg, split, model = outcome.config, outcome.split, outcome.model
    val_acc = outcome.val_accuracy
    title = f"{cfg.name}: {cfg.model} on {cfg.dataset}"
    plots = []
    if pla is not None:
        plots.append(
            report.plot_mistakes(
                out / "loss.png", pla.mistakes_per_epoch, f"{title}\nPLA mistakes per epoch"
            )
        )
    elif history is not None:
        plots.append(
            report.plot_loss(
                out / "loss.png",
                history.train_loss,
                history.val_loss,
                history.train_acc,
                history.val_acc,
                f"{title} ({cfg.optimizer}, lr {cfg.lr:g})",
            )
        )
    if split.input_shape == (2,):

        def proba(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()

        plots.append(
            report.plot_decision_boundary(
                out / "decision_boundary.png",
                proba,
                split.X_train,
                split.y_train,
                split.X_val,
                split.y_val,
                split.labels,
                f"{title}\nheld-out accuracy {val_acc:.1%}",
            )
        )
    if history is not None and history.layer_names:
        plots.append(
            report.plot_gradients(
                out / "gradients.png",
                history.grad_magnitude,
                history.layer_names,
                f"{title}: mean |gradient| per layer",
            )
        )
    if split.name == "digits":
        y_pred = engine.predict(model, split.X_val)
        plots.append(
            report.plot_confusion_matrix(
                out / "confusion_matrix.png",
                split.y_val,
                y_pred,
                split.labels,
                f"{title}: held-out confusion matrix (accuracy {val_acc:.1%})",
            )
        )
    return plots


def _environment() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "platform": sys.platform,
    }

"""The five presets of the contract: the default models' fixed configs and seeds.

    dlserve train --all-presets --repository models --fresh

trains every preset with its fixed seed and exports it into the repository
(``make models`` runs exactly this; ``--fresh`` is `training.pipeline.run_fresh`).

The gradient-trained presets use label smoothing 0.05 (`TrainConfig`'s default): it keeps the logits
within a few units (without it they grow to 20-35), so float32 rounding
differences between ONNX Runtime's and PyTorch's kernels stay well inside the
1e-5 parity bound (measured: about 1e-6 instead of 4-6e-6).

This module imports no torch (the CLI reads `PRESETS`).
"""

from __future__ import annotations

from dataclasses import replace

from training.config import TrainConfig

__all__ = ["PRESETS", "preset_config"]


def _mlp(dataset: str, hidden: tuple[int, ...], epochs: int) -> TrainConfig:
    """The ``mlp-<dataset>`` preset: an MLP of ``hidden`` ReLU layers, Adam at lr 0.01."""
    name = f"mlp-{dataset}"
    return TrainConfig(
        name=name,
        preset=name,
        dataset=dataset,
        model="mlp",
        hidden=hidden,
        activation="relu",
        optimizer="adam",
        lr=0.01,
        epochs=epochs,
    )


PRESETS: dict[str, TrainConfig] = {
    cfg.name: cfg
    for cfg in (
        TrainConfig(
            name="perceptron-linear",
            preset="perceptron-linear",
            dataset="linear",
            model="perceptron",
            hidden=(),
            lr=1.0,
            epochs=100,  # PLA epoch limit; it converges in a few epochs
        ),
        # The seed's network: six hidden layers of 8, ReLU, Adam.
        _mlp("circle", (8, 8, 8, 8, 8, 8), epochs=300),
        _mlp("xor", (8, 8), epochs=300),
        _mlp("spiral", (32, 32, 32), epochs=1000),
        TrainConfig(
            name="digits-cnn",
            preset="digits-cnn",
            dataset="digits",
            model="cnn",
            hidden=(),
            activation="relu",
            optimizer="adam",
            lr=0.002,
            epochs=15,
            batch_size=64,
            max_batch_size=256,
        ),
    )
}


def preset_config(preset: str, **overrides: object) -> TrainConfig:
    """The preset's config with ``overrides`` (fields of `TrainConfig`) applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **overrides)  # type: ignore[arg-type]


if __name__ == "__main__":  # the old entry point, replaced by the dlserve command
    raise SystemExit(
        "python -m training.presets is gone: use dlserve train --all-presets "
        "[--repository DIR] [--fresh], or dlserve train --preset NAME [--fresh]"
    )

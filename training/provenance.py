"""Which training run built a model file: the data set, seed and split behind it.

`dlserve train` writes the run's `TrainConfig` (as JSON) into the exported
ONNX file's model-level ``metadata_props`` under `TRAINING_KEY`
(`training.export.to_onnx`), so the file itself says how to rebuild its
training and held-out data with `training.datasets.load`. `dlserve optimize`
reads it back to calibrate on the training split and gate on the held-out
split of exactly that run, and marks its variants with `VARIANT_KEY`.

A file exported before this key existed (the committed default models) has
no record; for a model named like a preset, the preset's config is taken,
which is how ``make models`` built them, and the source says so. Anything
else is refused: guessing the data would gate on the wrong held-out set.

Imports no torch and no onnx at module level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

from training.config import TrainConfig
from training.errors import TrainingError
from training.presets import PRESETS

__all__ = [
    "TRAINING_KEY",
    "VARIANT_KEY",
    "Provenance",
    "ProvenanceError",
    "config_from_metadata",
    "metadata_for",
    "provenance_of",
]

#: metadata_props key of the JSON `TrainConfig` that built the file.
TRAINING_KEY = "dlserve.training"
#: metadata_props key `dlserve optimize` sets on a variant (int8, fp16, opt).
VARIANT_KEY = "dlserve.variant"


class ProvenanceError(TrainingError):
    """A model file does not say which data trained it (and no preset does either)."""


@dataclass(frozen=True)
class Provenance:
    """The config that trained a model, and where that fact came from."""

    config: TrainConfig
    #: "model metadata" (the file's own record) or "preset <name>" (a fallback)
    source: str

    def as_dict(self) -> dict[str, Any]:
        """The source, the fields that decide the data, then the whole config."""
        cfg = self.config
        return {"source": self.source, **cfg.data_fields(), "config": cfg.as_dict()}


def metadata_for(cfg: TrainConfig) -> dict[str, str]:
    """The metadata_props `dlserve train` writes into an exported file."""
    return {TRAINING_KEY: json.dumps(cfg.as_dict(), sort_keys=True)}


def config_from_metadata(text: str) -> TrainConfig:
    """`TrainConfig` from `TRAINING_KEY`'s JSON (unknown keys ignored, newer writers)."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in raw.items() if k in known}
    values["hidden"] = tuple(int(h) for h in values.get("hidden", ()))
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def provenance_of(metadata: Mapping[str, str], model_name: str, where: str) -> Provenance:
    """The training run behind a file with ``metadata`` (its metadata_props as a dict).

    ``where`` names the file in messages. Raises `ProvenanceError`.
    """
    text = metadata.get(TRAINING_KEY)
    if text is not None:
        try:
            return Provenance(config_from_metadata(text), "model metadata")
        except (ValueError, TypeError) as exc:
            raise ProvenanceError(
                f"{where}: its {TRAINING_KEY} metadata is not a training config ({exc})"
            ) from None
    if model_name in PRESETS:
        return Provenance(PRESETS[model_name], f"preset {model_name}")
    raise ProvenanceError(
        f"{where} does not record which data trained it (no {TRAINING_KEY} metadata) and "
        f"{model_name!r} is not a preset; retrain it with dlserve train, which records it"
    )

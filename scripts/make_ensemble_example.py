#!/usr/bin/env python3
"""Build the example ensemble next to a classifier in a model repository:
a standardiser ONNX graph (``(raw - mean) / std`` per feature) feeding the
classifier, in Triton's layout (docs: README, "Ensembles").

    .venv/bin/python scripts/make_ensemble_example.py --repository models \\
        --classifier mlp-circle --mean 0,0 --std 0.5,0.5

writes ``models/<classifier>-standardiser/`` (an ONNX model) and
``models/<classifier>-pipeline/`` (``platform: "ensemble"``: config.pbtxt,
labels.txt and an empty version folder ``1/``). Clients send raw points to
the pipeline; the classifier sees them standardised. The features, classes,
labels and max_batch_size come from the classifier's config.pbtxt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script from a checkout: its root (devtools/, serving/) on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.ensembles import write_pipeline  # noqa: E402
from serving.errors import ModelLoadError  # noqa: E402
from serving.repository import read_config  # noqa: E402


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--classifier", default="mlp-circle", help="a model in the repository")
    parser.add_argument("--mean", type=floats, help="per feature (default 0 each)")
    parser.add_argument("--std", type=floats, help="per feature (default 1 each)")
    args = parser.parse_args(argv)
    folder = args.repository / args.classifier
    try:
        config = read_config(folder / "config.pbtxt")
    except ModelLoadError as exc:
        print(f"make_ensemble_example: {exc.message}", file=sys.stderr)
        return 2
    if len(config.input) != 1 or len(config.input[0].dims) != 1 or len(config.output) < 2:
        print("make_ensemble_example: the classifier needs one [-1, F] input and outputs "
              "logits and probabilities", file=sys.stderr)  # fmt: skip
        return 2
    features = int(config.input[0].dims[0])
    classes = int(config.output[0].dims[-1])
    mean = args.mean or [0.0] * features
    std = args.std or [1.0] * features
    if len(mean) != features or len(std) != features or not all(s > 0 for s in std):
        print(f"make_ensemble_example: --mean and --std need {features} numbers each "
              "(std > 0)", file=sys.stderr)  # fmt: skip
        return 2
    labels_file = folder / "labels.txt"
    labels = labels_file.read_text().splitlines() if labels_file.is_file() else []
    out = write_pipeline(
        args.repository, f"{args.classifier}-pipeline", args.classifier, mean, std, classes,
        labels=labels, max_batch_size=config.max_batch_size,
        standardiser_name=f"{args.classifier}-standardiser",
    )  # fmt: skip
    print(f"wrote {out} and {args.repository / (args.classifier + '-standardiser')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

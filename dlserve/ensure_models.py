"""``python -m dlserve.ensure_models [DIR]``: make sure the five default
models are in the repository before ``make serve`` starts the server.

They are committed to git, so this normally only checks. If one is missing
it is trained (which needs the train extra); without torch it says how to
get them, in one line, and exits non-zero.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEFAULT_MODELS = ("perceptron-linear", "mlp-circle", "mlp-xor", "mlp-spiral", "digits-cnn")


def present(folder: Path) -> bool:
    return (folder / "config.pbtxt").is_file() and any(
        p.name.isdigit() and (p / "model.onnx").is_file() for p in folder.iterdir()
    )


def main(argv: list[str]) -> int:
    repository = Path(argv[0]) if argv else Path("models")
    missing = [m for m in DEFAULT_MODELS if not (repository / m).is_dir()
               or not present(repository / m)]  # fmt: skip
    if not missing:
        return 0
    try:
        import torch  # noqa: F401
    except ImportError:
        print(
            f"ensure_models: {', '.join(missing)} missing from {repository}/ and training needs "
            "the train extra: run `make models` (or `git checkout -- models`)",
            file=sys.stderr,
        )
        return 1
    print(f"ensure_models: training {', '.join(missing)} into {repository}/", file=sys.stderr)
    for name in missing:
        code = subprocess.call([sys.executable, "-m", "dlserve", "train", "--preset", name,
                                "--repository", str(repository)])  # fmt: skip
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

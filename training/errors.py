"""The training stage's errors: `str(exc)` is one line the user can act on.

Errors::

    TrainingError              base: the user can fix it (a flag, a file, a folder)
    ├── ExportError            training.repository: the export cannot be written
    │   ├── RepositoryError    training.repository: cannot write, or a config.pbtxt is unreadable
    │   └── ParityError        training.export: ONNX Runtime disagrees with PyTorch
    └── ExperimentError        training.experiments: an experiment cannot run as asked

The command line (``training.cli``, ``dlserve.cli``) turns them into its
one-line stderr message; nothing here knows about it. Imports nothing.
"""

from __future__ import annotations

__all__ = ["ExperimentError", "TrainingError"]


class TrainingError(Exception):
    """Base of the training stage's user-facing failures."""


class ExperimentError(TrainingError):
    """An experiment cannot run as asked: a data set it cannot use, an unwritable --out."""

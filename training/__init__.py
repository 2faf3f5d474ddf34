"""Training stage: data sets, models, the training loop, ONNX export into a
Triton-style model repository, and the `dlserve train` command.

Importing this package does not import torch; `training.cli` stays cheap so
that `dlserve --help` works on a serving-only install.
"""

"""dlserve: train classifiers in PyTorch, export them to ONNX, serve them over
Triton-compatible KServe V2 gRPC on ONNX Runtime."""

__version__ = "0.1.0"

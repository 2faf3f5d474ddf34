"""dlserve's inference server: a KServe V2 / Triton-compatible gRPC front end
over ONNX Runtime.

Imports point toward the runtime: ``grpc_api`` -> ``service`` ->
``validation``/``batcher`` -> ``runtime``. ``metrics`` may be imported by
anything and imports nothing from ``serving``.
"""

"""Moved to ``devtools.onnx_models``; kept as a re-export for the modules
that still import it from here. New code imports ``devtools.onnx_models``."""

from devtools.onnx_models import IR_VERSION, OPSET, config_text, mlp, slow_mlp, write_model

__all__ = ["IR_VERSION", "OPSET", "config_text", "mlp", "slow_mlp", "write_model"]

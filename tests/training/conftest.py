"""Training tests run torch on one thread (the fixture is in tests/torch_threads.py)."""

from tests.torch_threads import _one_torch_thread

__all__ = ["_one_torch_thread"]

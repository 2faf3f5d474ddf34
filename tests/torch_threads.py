"""The fixture both training conftests use (tests/training/ and
tests/unit/training/): training tests run torch on one thread: these models
are tiny, and on a busy 2-core machine a second thread makes them several
times slower. It is not in tests/conftest.py because it skips without torch,
and the serving tests run without it."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)

"""Settings and hooks for every test.

Hypothesis runs without its per-example deadline (a wall-clock limit of
200 ms per example is a timed assertion, and fails on a busy shared machine:
seen on test_codec's BYTES round trip under load).

The loop-stall watchdog: after each phase of a test (setup, call, teardown),
the stalls of the running test servers (devtools.serverproc.ServerProcess and
devtools.inprocess.InProcessServer, except those created with
``allow_loop_stalls=True``) that no earlier phase reported fail this phase, so
a stall fails the test during which the event loop blocked, not the module's
last test when a module-scoped server stops.

The cyclic GC runs only between test modules, in the main thread, when no
module's server is running (the two session-wide in-process servers are
exempt from the watchdog): a full collection holds the GIL, and with
torch, the clients and the server imported one took 98-104 ms here
(254,621 objects). Left automatic, a collection could land in an
in-process server's thread or while its loop waited for the GIL: two CI
runs failed on loop stalls of 106 and 137 ms (test_tracing,
test_triton_repository), and a run of tests/integration with a gc callback
saw 27 pauses over 20 ms, the worst 258 ms in the server's own thread.
What collection imported is frozen (``gc.freeze``): it lives for the whole
session, so those collections need not scan it.
"""

from __future__ import annotations

import gc
import sys
from typing import Generator

import pytest
from hypothesis import settings

settings.register_profile("dlserve", deadline=None)
settings.load_profile("dlserve")


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()
    gc.disable()


_last_module: list[object] = [None]


def _collect_between_modules(item: pytest.Item) -> None:
    """A new module's first setup: the last module's fixtures are torn down."""
    module = getattr(item, "module", None)
    if module is not _last_module[0]:
        _last_module[0] = module
        gc.collect()


def _stalls() -> str:
    """Unreported stalls of the watched servers ("" if none, or if no test
    of this session ever imported devtools.serverproc, so started none)."""
    serverproc = sys.modules.get("devtools.serverproc")
    if serverproc is None:
        return ""
    found: str = serverproc.watched_stalls()
    return found


def _phase(when: str) -> Generator[None, object, object]:
    try:
        result = yield
    except BaseException as exc:
        found = _stalls()
        if found:  # the phase failed anyway: say that the loop also stalled
            exc.add_note(f"...and during this test's {when}, {found}")
        raise
    found = _stalls()
    if found:
        pytest.fail(f"during this test's {when}, {found}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    _collect_between_modules(item)
    return (yield from _phase("setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _phase("call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    return (yield from _phase("teardown"))

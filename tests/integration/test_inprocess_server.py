"""devtools.inprocess.InProcessServer itself: a stall of its own loop fails
the test at stop, and another watchdog's lines in the same process do not;
with tests/conftest.py's hooks a stall fails the test during which it
happened, not the module's last one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from devtools.serverproc import wait_for
from serving.watchdog import LoopWatchdog


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "m", model=mlp(seed=1))
    return tmp_path


def test_a_stall_of_its_loop_fails_at_stop(repo: Path) -> None:
    server = InProcessServer(repo).start()
    assert server._loop is not None
    server._loop.call_soon_threadsafe(time.sleep, 0.4)  # blocks the server's loop
    assert wait_for(lambda: server.loop_stalls(), 10), server.log()
    with pytest.raises(AssertionError, match="event loop was blocked 1 time"):
        server.stop()


def test_another_watchdogs_stall_is_not_counted(repo: Path) -> None:
    with InProcessServer(repo) as server:
        loop = asyncio.new_event_loop()
        other = LoopWatchdog(loop, 0.05)
        other.start()
        loop.call_soon(time.sleep, 0.3)
        loop.run_until_complete(asyncio.sleep(0.5))
        other.stop()
        loop.close()
        assert "event loop blocked" in server.log()  # seen by the handler...
        assert server.loop_stalls() == []  # ...but not this server's stall


INNER_CONFTEST = """
from tests.conftest import pytest_runtest_call, pytest_runtest_setup, pytest_runtest_teardown
"""

INNER_TESTS = """
import asyncio
import time

import pytest

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "m", model=mlp(seed=1))
    with InProcessServer(repo) as proc:
        yield proc


async def blocks() -> None:
    time.sleep(0.4)  # the loop runs nothing else meanwhile


def test_before(server):
    assert server.loop_stalls() == []


def test_blocks_the_loop(server):
    asyncio.run_coroutine_threadsafe(blocks(), server._loop).result(30)


def test_after(server):
    assert len(server.loop_stalls()) == 1  # logged, and reported by the test before
"""


def test_a_stall_fails_the_test_during_which_it_happened(tmp_path: Path) -> None:
    """A pytest run of its own, with tests/conftest.py's hooks: the module's
    server stalls during its second test, which fails for it; the tests
    before and after pass, and the server's teardown does not fail again."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    report = tmp_path / "report.xml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    outcomes: dict[str, list[str]] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcomes[case.attrib["name"]] = [child.tag for child in case]
    assert outcomes == {
        "test_before": [], "test_blocks_the_loop": ["failure"], "test_after": [],
    }, run.stdout + run.stderr  # fmt: skip
    assert "during this test's call" in run.stdout, run.stdout
    assert "event loop was blocked 1 time(s)" in run.stdout, run.stdout

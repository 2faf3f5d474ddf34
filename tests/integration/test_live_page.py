"""The live page at http://HOST:<metrics-port>/ in headless Chromium (Debian's
`chromium`) while load runs: it shows every model with a non-zero
throughput, refreshes every second, draws its charts, loads nothing from
anywhere but the server, and a screenshot is saved.

Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-terminated JSON on fds 3 and 4), so no
websocket client or browser download is needed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from tests.integration.loadgen import Load
from tests.support import require_binary

WIDTH, HEIGHT = 1400, 900
#: Set to a file path to keep the screenshot (docs/img/live-page.png is made so).
SCREENSHOT_ENV = "DLSERVE_LIVE_PAGE_SCREENSHOT"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
    f"--window-size={WIDTH},{HEIGHT}",
]


class DevTools:
    """A Chromium process and its DevTools pipe, attached to one page."""

    def __init__(self, binary: str, user_data_dir: Path, log: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4; a shell
        # puts the pipe ends there (no preexec_fn: the load threads run; bash,
        # not dash, as the pipe fds may have two digits).
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            ["bash", "-c", script, binary, *CHROMIUM_FLAGS,
             f"--user-data-dir={user_data_dir}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._buffer = b""
        self.session: str | None = None

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline - time.monotonic())
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def _read(self, timeout: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(timeout, 0))
            if not ready:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(raw))

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close", timeout=10)
                self.proc.wait(10)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._log.close()


#: What the page shows, read from its DOM (rows carry data-* hooks).
READ_PAGE = """(() => !document.getElementById("status") ? {updates: 0, rows: []} : ({
  updates: Number(document.body.dataset.updates || 0),
  text: document.body.innerText,
  status: document.getElementById("status").className,
  rows: [...document.querySelectorAll("#models tbody tr")].map((tr) => ({
    model: tr.dataset.model,
    shown: tr.querySelector("td.model").innerText,
    throughput: tr.querySelector('[data-field="throughput_rps"]').dataset.value,
    throughputText: tr.querySelector('[data-field="throughput_rps"]').innerText,
    p50: tr.querySelector('[data-field="p50_ms"]').dataset.value,
    p99: tr.querySelector('[data-field="p99_ms"]').dataset.value,
    batch: tr.querySelector('[data-field="mean_batch"]').dataset.value,
  })),
}))()"""

#: Pixels drawn in each chart that differ from the blank background.
CHART_INK = """(() => Object.fromEntries([...document.querySelectorAll("canvas")].map((c) => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
    // Coloured pixels only (series), not the grey axes and labels.
    if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) ink++;
  }
  return [c.id, ink];
})))()"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "mlp-circle", model=mlp(features=2, hidden=(8,) * 6, classes=2))
    write_model(repo, "digits", model=mlp(features=64, hidden=(32,), classes=10, seed=1))
    with InProcessServer(repo) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    binary = require_binary("chromium", "chromium-browser")
    devtools = DevTools(binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield devtools
    finally:
        devtools.close()


def poll(read: Any, done: Any, timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.25)
        value = read()
    return value


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_live_page_shows_models_and_throughput_under_load(
    server: InProcessServer, browser: DevTools, tmp_path: Path
) -> None:
    with Load(server.url, {"mlp-circle": 2, "digits": 64}, threads=1, bad_every=12):
        browser.open(server.metrics_url + "/")

        def serving(page: dict[str, Any]) -> bool:
            rows = {r["model"]: r for r in page["rows"]}
            return (
                page["updates"] >= 4
                and {"mlp-circle", "digits"} <= rows.keys()
                and all(float(rows[m]["throughput"] or 0) > 0 for m in ("mlp-circle", "digits"))
            )

        page = poll(lambda: browser.evaluate(READ_PAGE), serving)
        assert serving(page), json.dumps(page, indent=1)[:3000]
        ink = poll(lambda: browser.evaluate(CHART_INK), lambda ink: min(ink.values()) > 0)
        shot = browser.screenshot()
        resources = browser.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
        origin = browser.evaluate("location.origin")

    rows = {r["model"]: r for r in page["rows"]}
    for model in ("mlp-circle", "digits"):
        row = rows[model]
        assert row["shown"].strip() == model and model in page["text"]
        # A number is shown, not a dash, and it is above zero.
        assert float(row["throughputText"].rstrip("/s").strip()) > 0, row
        assert 0 < float(row["p50"]) <= float(row["p99"]), row
        assert float(row["batch"]) >= 1, row
    # Bad requests to an unknown model show up as their own row.
    assert "(unknown model)" in page["text"]
    assert page["status"] == "status ok"
    # The page kept refreshing (about once a second).
    assert page["updates"] >= 4
    # Throughput, latency, errors and batch charts all drew series.
    assert set(ink) == {"chart-throughput", "chart-latency", "chart-errors", "chart-batches"}
    assert min(ink.values()) > 0, ink
    # Everything came from the server itself: no CDN, no internet.
    assert origin == server.metrics_url
    assert resources and all(url.startswith(origin + "/") for url in resources), resources
    assert {url.rsplit("/", 1)[-1] for url in resources} >= {"live.js", "live.css"}

    assert png_size(shot) == (WIDTH, HEIGHT)
    saved = tmp_path / "live-page.png"
    saved.write_bytes(shot)
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(saved, os.environ[SCREENSHOT_ENV])

"""A real Prometheus (Debian's `prometheus` binary) for tests: started on a
free port with a config scraping the given targets every second
(tests/deploy/promql.py), queried through its HTTP API.

prom = Prometheus(binary, workdir, ["127.0.0.1:8002"])
prom.wait_ready(); prom.query("up"); prom.stop()
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from dlserve.processes import terminate
from tests.deploy import promql
from tests.support import free_port

#: Upper bound on waiting for series and rule evaluations; a healthy run
#: needs a few scrapes (about 5 s at the 1 s interval).
SETTLE_TIMEOUT = 60.0


class Prometheus:
    def __init__(
        self, binary: str, workdir: Path, targets: list[str], extra_args: tuple[str, ...] = ()
    ) -> None:
        """``extra_args``: more flags, e.g. ``--enable-feature=exemplar-storage``."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(promql.prometheus_config(targets)))
        self.log = workdir / "prometheus.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
                *extra_args,
            ],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = self.get("/api/v1/query", query=expr)
        assert reply["status"] == "success", reply
        assert reply["data"]["resultType"] == "vector", (expr, reply["data"]["resultType"])
        return list(reply["data"]["result"])

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        terminate(self.proc, 20)
        self._log.close()


def wait_until(check: Any, timeout: float = SETTLE_TIMEOUT, interval: float = 1.0) -> Any:
    """Call ``check()`` until it returns a falsy "still missing" value."""
    deadline = time.monotonic() + timeout
    missing = check()
    while missing and time.monotonic() < deadline:
        time.sleep(interval)
        missing = check()
    return missing

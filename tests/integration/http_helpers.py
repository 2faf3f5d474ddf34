"""The REST tests' HTTP client and JSON-error check (from devtools.rest_client,
which the scripts share), and reading Prometheus counters."""

from __future__ import annotations

import re
import urllib.request

from devtools.rest_client import Http as Http
from devtools.rest_client import error_of as error_of
from devtools.serverproc import ServerProcess


def counter(server: ServerProcess, model: str, code: str, version: str = "1") -> float:
    """dlserve_requests_total for (model, version, code) from /metrics."""
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
    labels = f'code="{code}",model="{model}",version="{version}"'
    pattern = r"^dlserve_requests_total{(.*?)} (\S+)$"
    for match in re.finditer(pattern, text, re.M):
        if sorted(match.group(1).split(",")) == sorted(labels.split(",")):
            return float(match.group(2))
    return 0.0

"""Helpers of the response-cache tests: a repository with a cached and an
uncached model, the cache counters as ModelStatistics (gRPC and REST) and
/metrics report them, and the bytes one answer counts against the budget."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from devtools.onnx_models import config_text, mlp, write_model

CACHED = "cached"
UNCACHED = "uncached"
ENABLE = "response_cache { enable: true }\n"
#: A key is a SHA-256 digest.
KEY_BYTES = 32
#: The mlp's outputs and their datatype (two classes, FP32).
OUTPUTS = ("logits", "probabilities")


def build_repo(repo: Path, seed: int = 1) -> Path:
    write_model(repo, CACHED, model=mlp(seed=seed), config=config_text(CACHED) + ENABLE)
    write_model(repo, UNCACHED, model=mlp(seed=seed + 1))
    return repo


def entry_bytes(rows: int, classes: int = 2) -> int:
    """What one answer of ``rows`` rows (both outputs) counts against the budget."""
    return KEY_BYTES + sum(len(name) + len("FP32") + rows * classes * 4 for name in OUTPUTS)


@dataclass(frozen=True)
class CacheCounts:
    hits: int
    misses: int
    success: int
    inference_count: int
    execution_count: int


def grpc_counts(client: grpcclient.InferenceServerClient, model: str) -> CacheCounts:
    (stats,) = client.get_inference_statistics(model).model_stats
    s = stats.inference_stats
    return CacheCounts(s.cache_hit.count, s.cache_miss.count, s.success.count,
                       stats.inference_count, stats.execution_count)  # fmt: skip


def http_counts(client: httpclient.InferenceServerClient, model: str) -> CacheCounts:
    (stats,) = client.get_inference_statistics(model)["model_stats"]
    s = stats["inference_stats"]
    return CacheCounts(s["cache_hit"]["count"], s["cache_miss"]["count"], s["success"]["count"],
                       stats["inference_count"], stats["execution_count"])  # fmt: skip


def scrape(metrics_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def metric(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:  # fmt: skip
    return scraped.get((name, tuple(sorted(labels.items()))))


def batch(seed: int, rows: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (rows, 2)).astype(np.float32)

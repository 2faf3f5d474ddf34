"""Triton's logging extension end to end: tritonclient's
``update_log_settings`` (gRPC and HTTP) changes what the running server
logs; bad settings are refused and change nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from devtools.serverproc import ServerProcess

DEFAULTS = {"log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
            "log_format": "default", "log_file": ""}  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "plain", model=mlp(seed=1))
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(repo, "--model-control-mode", "explicit", "--load-model", "*") as running:
        yield running


@pytest.fixture
def client(server: InProcessServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url)
    yield c
    c.update_log_settings(DEFAULTS)
    c.close()


def settings_of(answer: dict[str, Any]) -> dict[str, Any]:
    """A gRPC LogSettingsResponse (as JSON) as plain values."""
    return {k: next(iter(v.values())) if v else None for k, v in answer["settings"].items()}


def test_defaults(client: triton.InferenceServerClient) -> None:
    got = settings_of(client.get_log_settings(as_json=True))
    # MessageToJson writes uint32 as a number, bools as booleans.
    assert got == DEFAULTS


def test_log_info_off_silences_info_lines(
    client: triton.InferenceServerClient, server: InProcessServer
) -> None:
    answer = settings_of(client.update_log_settings({"log_info": False}, as_json=True))
    assert answer["log_info"] is False and answer["log_warning"] is True
    assert logging.getLogger("serving").getEffectiveLevel() == logging.WARNING
    client.unload_model("plain")
    client.load_model("plain")
    assert "plain:1 unloaded" not in server.log()
    client.update_log_settings({"log_info": True})
    client.unload_model("plain")
    client.load_model("plain")
    assert "plain:1 unloaded" in server.log()


def test_verbose_level_turns_on_debug(client: triton.InferenceServerClient) -> None:
    client.update_log_settings({"log_verbose_level": 1})
    assert logging.getLogger("serving").getEffectiveLevel() == logging.DEBUG
    client.update_log_settings({"log_verbose_level": 0, "log_info": False, "log_warning": False})
    assert logging.getLogger("serving").getEffectiveLevel() == logging.ERROR


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"log_file": "/tmp/server.log"}, "stderr"),
        ({"log_format": "xml"}, "log_format"),
        ({"log_colour": True}, "unknown log setting"),
    ],
)
def test_bad_settings_are_refused(
    client: triton.InferenceServerClient, settings: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.update_log_settings({"log_info": False, **settings})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert fragment in info.value.message()
    # Nothing changed, not even the setting that was fine.
    assert settings_of(client.get_log_settings(as_json=True))["log_info"] is True


def test_over_http(server: InProcessServer) -> None:
    http = triton_http.InferenceServerClient(server.http_url)
    try:
        assert http.get_log_settings() == DEFAULTS
        got = http.update_log_settings({"log_warning": False, "log_info": False})
        assert got["log_warning"] is False and got["log_error"] is True
        with pytest.raises(InferenceServerException) as info:
            http.update_log_settings({"log_info": "yes"})
        assert "true or false" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            http.update_log_settings({"log_verbose_level": -1})
        assert ">= 0" in info.value.message()
        http.update_log_settings(DEFAULTS)
        assert http.get_log_settings() == DEFAULTS
    finally:
        http.close()


def test_log_format_json_at_run_time(repo: Path) -> None:
    """The server's own stderr switches to JSON lines (a process of its own:
    the handlers are the ones ``dlserve serve`` installs)."""
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "*") as proc:
        c = triton.InferenceServerClient(proc.url)
        try:
            c.update_log_settings({"log_format": "json"})
            c.unload_model("plain")
            c.load_model("plain")
        finally:
            c.close()
        proc.stop()
        lines = [line for line in proc.log().splitlines() if "plain:1 unloaded" in line]
    assert lines, proc.log()
    entry = json.loads(lines[-1])
    assert entry["level"] == "INFO" and entry["logger"] == "serving.manager"

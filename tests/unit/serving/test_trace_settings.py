"""``--trace-config`` parsing and the trace settings' run-time rules
(Triton's trace extension): table-style, through the public API."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import InvalidInput, ModelNotFound
from serving.trace_settings import DEFAULT_URL, Export, Scope, TraceSettings, parse

KNOWN = {"a", "b"}


def settings(*entries: str) -> TraceSettings:
    return TraceSettings(parse(entries), lambda name: name if name in KNOWN else None)


def traced(s: TraceSettings, model: str, n: int) -> int:
    return sum(s.sampler(model).sample() for _ in range(n))


def test_defaults_are_tritons() -> None:
    config = parse([])
    assert config.scope == Scope("OFF", 1000, -1)
    assert config.export == Export()
    assert config.export.url == DEFAULT_URL == "http://localhost:4318/v1/traces"
    assert not config.configured


def test_every_setting_in_tritons_spelling() -> None:
    config = parse([
        "mode=opentelemetry", "level=TIMESTAMPS", "rate=7", "count=3",
        "opentelemetry,url=https://tempo:4318/v1/traces",
        "opentelemetry,resource=service.namespace=ml", "opentelemetry,resource=a=b=c",
        "opentelemetry,bsp_max_queue_size=100", "opentelemetry,bsp_schedule_delay=250",
        "opentelemetry,bsp_max_export_batch_size=10", "opentelemetry,timeout=2.5",
    ])  # fmt: skip
    assert config.configured
    assert config.scope == Scope("TIMESTAMPS", 7, 3)
    resource = (("service.namespace", "ml"), ("a", "b=c"))
    assert config.export == Export("https://tempo:4318/v1/traces", resource, 100, 250, 10, 2.5)


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("rate", "SETTING=VALUE"),
        ("rate=0", ">= 1"),
        ("rate=x", "whole number"),
        ("count=-2", "-1"),
        ("level=TENSORS", "TENSORS"),
        ("level=LOUD", "OFF or TIMESTAMPS"),
        ("mode=triton", "opentelemetry"),
        ("triton,file=/tmp/t.json", "trace-file mode"),
        ("jaeger,url=x", "unknown mode"),
        ("opentelemetry,url=collector:4318", "http(s)://"),
        ("opentelemetry,resource=novalue", "KEY=VALUE"),
        ("opentelemetry,bsp_max_queue_size=0", "> 0"),
        ("opentelemetry,colour=blue", "unknown"),
        ("frequency=3", "unknown setting"),
    ],
)
def test_bad_entries_say_why(entry: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse([entry])
    assert str(info.value).startswith("--trace-config")
    assert fragment in str(info.value)


def test_rate_traces_the_first_of_every_n() -> None:
    s = settings("level=TIMESTAMPS", "rate=4")
    assert s.on
    assert [s.sampler("a").sample() for _ in range(9)] == [
        True, False, False, False, True, False, False, False, True]  # fmt: skip
    assert traced(s, "b", 8) == 2  # a counter per model


def test_level_off_traces_nothing() -> None:
    s = settings("rate=1")
    assert not s.on and traced(s, "a", 10) == 0


def test_count_is_shared_by_the_scope_that_set_it() -> None:
    s = settings("level=TIMESTAMPS", "rate=1", "count=3")
    assert traced(s, "a", 2) + traced(s, "b", 5) == 3
    assert s.get()["trace_count"] == ["0"]
    s.spent()
    assert not s.on
    s.update("", {"trace_count": ["-1"]})
    assert s.on and traced(s, "a", 4) == 4


def test_a_model_setting_overrides_and_clearing_falls_back() -> None:
    s = settings("level=TIMESTAMPS", "rate=1")
    got = s.update("a", {"trace_rate": ["3"], "trace_count": ["1"]})
    assert got["trace_rate"] == ["3"] and got["trace_count"] == ["1"]
    assert s.get("b")["trace_rate"] == ["1"] and s.get()["trace_rate"] == ["1"]
    assert traced(s, "a", 9) == 1  # its own count of one
    assert traced(s, "b", 3) == 3
    s.update("a", {"trace_rate": None, "trace_count": None})
    assert s.get("a")["trace_rate"] == ["1"] and s.get("a")["trace_count"] == ["-1"]
    assert traced(s, "a", 3) == 3


def test_a_model_can_trace_while_the_global_level_is_off() -> None:
    s = settings("rate=1")
    s.update("a", {"trace_level": ["TIMESTAMPS"]})
    assert s.on and traced(s, "a", 2) == 2 and traced(s, "b", 2) == 0
    s.update("a", {"trace_level": []})  # cleared: the global OFF again
    assert not s.on


def test_clearing_a_global_setting_restores_its_start_value() -> None:
    s = settings("level=TIMESTAMPS", "rate=5")
    s.update("", {"trace_rate": ["2"], "trace_level": ["OFF"]})
    assert not s.on
    got = s.update("", {"trace_rate": None, "trace_level": None})
    assert got["trace_rate"] == ["5"] and got["trace_level"] == ["TIMESTAMPS"] and s.on


def test_a_refused_update_changes_nothing() -> None:
    s = settings("level=TIMESTAMPS", "rate=5")
    with pytest.raises(InvalidInput, match="one value"):
        s.update("", {"trace_rate": ["2"], "trace_count": ["1", "2"]})
    assert s.get()["trace_rate"] == ["5"]


def test_unknown_models_are_not_found() -> None:
    s = settings()
    with pytest.raises(ModelNotFound, match="'zzz' is not in the repository"):
        s.get("zzz")
    with pytest.raises(ModelNotFound):
        s.update("zzz", {"trace_rate": ["1"]})


def test_unknown_names_share_the_global_sampler() -> None:
    s = settings("level=TIMESTAMPS", "rate=2")
    assert s.sampler("made-up-1") is s.sampler("made-up-2") is s.sampler("")
    assert s.sampler("a") is not s.sampler("")
    assert traced(s, "made-up-1", 2) + traced(s, "made-up-2", 2) == 2


def test_trace_config_flags_repeat_or_follow_one_flag(tmp_path: Path) -> None:
    """Triton repeats --trace-config; the contract writes ``--trace-config
    K=V ...``: both spellings give the same settings."""
    from devtools.inprocess import settings_for

    repeated, _ = settings_for(tmp_path, ["--trace-config", "rate=3", "--trace-config", "count=5"])
    together, _ = settings_for(tmp_path, ["--trace-config", "rate=3", "count=5"])
    assert repeated.trace_config == together.trace_config == ["rate=3", "count=5"]

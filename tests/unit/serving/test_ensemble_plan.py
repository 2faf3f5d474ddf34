"""An ensemble config checked at load (serving.ensemble_plan), table-style."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from devtools.ensembles import ensemble_config, step_text
from serving._generated import model_config_pb2 as mc
from serving.ensemble_plan import plan
from serving.errors import ModelLoadError

A = step_text("a", {"in": "input"}, {"out": "x"})
B = step_text("b", {"in": "x"}, {"out": "y"})
C = step_text("c", {"in": "input"}, {"out": "z"})
D = step_text("d", {"left": "y", "right": "z"}, {"out": "output"})


def config(
    steps: list[str], extra: str = "", outputs: tuple[str, ...] = ("output",)
) -> mc.ModelConfig:
    text = ensemble_config("ens", [("input", 2)], [(o, 2) for o in outputs], steps) + extra
    return text_format.Parse(text, mc.ModelConfig())


def test_steps_come_in_levels_whatever_their_order() -> None:
    levels = plan(config([D, B, C, A])).levels
    assert [[s.model for s in level] for level in levels] == [
        ["c", "a"],
        ["b"],
        ["d"],
    ]  # config order within a level


@pytest.mark.parametrize(
    ("steps", "extra", "outputs", "reason"),
    [
        ([], "", ("output",), "has no step"),
        ([A, B, C], "", ("output",), "['output'] are produced by no step"),
        ([step_text("ens", {"in": "input"}, {"out": "output"})], "", ("output",),
         "cannot run the ensemble itself"),
        ([A, step_text("b", {"in": "input"}, {"out": "x"})], "", ("x",), "which step 1 writes too"),
        ([step_text("a", {"in": "input"}, {"out": "input"})], "", ("output",),
         "which is an ensemble input"),
        ([step_text("a", {"in": "nothing"}, {"out": "output"})], "", ("output",),
         "reads 'nothing', which is neither"),
        ([step_text("a", {"in": "x"}, {"out": "output"}), step_text("b", {"in": "output"},
          {"out": "x"}), C], "", ("z",), "the steps form a cycle"),
        ([step_text("a", {"in": "x"}, {"out": "output"}), step_text("b", {"in": "output"},
          {"out": "x"})], "", ("output",), "['input'] are mapped to no step input"),
        ([step_text("a", {"in": "input"}, {"out": "output"}, version=0)], "", ("output",),
         "model_version must be -1"),
    ],
)  # fmt: skip
def test_a_broken_config_fails_the_load_with_its_reason(
    steps: list[str], extra: str, outputs: tuple[str, ...], reason: str
) -> None:
    with pytest.raises(ModelLoadError) as info:
        plan(config(steps, extra, outputs))
    assert reason in info.value.message

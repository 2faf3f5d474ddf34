"""The candidate configs of ``dlserve tune``: the model's own config with the
point's fields replaced (and nothing else), written as text the server's own
parser reads back; and the space built from tune's flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf import text_format

from devtools.onnx_models import config_text as model_config_text
from dlserve import tune
from dlserve.tune_server import candidate_config, config_text, serve_flags
from serving._generated import model_config_pb2 as mc
from serving.repository import read_config

POINT = {"max_batch_size": 16, "max_queue_delay_us": 500, "preferred": 1, "instances": 2,
         "intra_op_threads": 3}  # fmt: skip


def base() -> mc.ModelConfig:
    text = model_config_text("m", features=4, classes=3, max_batch_size=64)
    text += "instance_group [ { count: 4 kind: KIND_CPU } ]\n"
    config = text_format.Parse(text, mc.ModelConfig())
    config.dynamic_batching.priority_levels = 2
    config.dynamic_batching.default_priority_level = 1
    return config


def test_a_candidate_replaces_the_points_fields_and_keeps_the_rest(tmp_path: Path) -> None:
    config = candidate_config(base(), POINT)
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_CPU)
    ]
    # what the point does not name is the model's own
    assert config.dynamic_batching.priority_levels == 2
    assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == [4]
    assert config.output[1].label_filename == "labels.txt"
    # the server's parser reads the text back to the same message
    path = tmp_path / "config.pbtxt"
    path.write_text(config_text(config))
    assert read_config(path) == config


def test_preferred_off_clears_the_models_preferred_sizes() -> None:
    config = base()
    config.dynamic_batching.preferred_batch_size.extend([8, 64])
    candidate = candidate_config(config, {**POINT, "preferred": 0})
    assert list(candidate.dynamic_batching.preferred_batch_size) == []
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 64]  # base untouched


def test_a_model_without_a_config_gets_only_the_points_fields() -> None:
    config = candidate_config(mc.ModelConfig(name="m"), POINT)
    assert not config.input and not config.output
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO
    assert serve_flags(POINT) == ["--inference-threads", "2", "--intra-op-threads", "3"]


def flags(**values: str) -> argparse.Namespace:
    args = {tune._dest(flag): default for flag, _, default in tune.DIMENSION_FLAGS}
    return argparse.Namespace(**{**args, **values})


def test_the_space_from_the_default_flags_starts_small_and_prunes() -> None:
    space = tune.build_space(flags(), batching=True)
    assert space.as_dict(space.start()) == {"max_batch_size": 1, "max_queue_delay_us": 0,
                                            "preferred": 0, "instances": 1,
                                            "intra_op_threads": 1}  # fmt: skip
    # max_batch_size 1: the queue delay and preferred size cannot matter
    full = 8 * 4 * 2 * 3 * 3
    assert len(space.grid()) == full - (4 * 2 - 1) * 3 * 3
    moved = {tuple(space.as_dict(n).items()) for n in space.neighbours(space.start())}
    assert all(dict(m)["max_queue_delay_us"] == 0 for m in moved)


def test_without_batching_only_instances_and_threads_vary() -> None:
    space = tune.build_space(flags(), batching=False)
    assert {space.as_dict(p)["max_batch_size"] for p in space.grid()} == {0}
    assert len(space.grid()) == 3 * 3

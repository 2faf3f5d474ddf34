"""serving.repository without a server: scanning Triton's layout, version
policies, and completing/checking a config against the ONNX graph's
signature (given as TensorInfo, as the runtime reports it). Odd entries
(names that are not UTF-8, FIFOs, devices, huge files) never break a scan
or block a read."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

import pytest
from google.protobuf import text_format

from serving._generated import model_config_pb2 as mc
from serving.errors import ModelLoadError
from serving.files import MAX_TEXT_FILE_BYTES, is_plain_name, name_problem
from serving.repository import (
    ModelSource,
    complete_config,
    read_config,
    read_labels,
    safe_file_name,
    scan,
    scan_model,
    select_versions,
)
from serving.runtime import TensorInfo

# The contract's classifier signature: input [-1, 2], logits/probabilities [-1, 3].
GRAPH_IN = [TensorInfo("input", "FP32", (-1, 2))]
GRAPH_OUT = [TensorInfo("logits", "FP32", (-1, 3)), TensorInfo("probabilities", "FP32", (-1, 3))]
FIXED_IN = [TensorInfo("input", "FP32", (3, 2))]
FIXED_OUT = [TensorInfo("logits", "FP32", (3, 3))]


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def source(config: str | None, name: str = "clf", path: Path = Path("/repo/clf")) -> ModelSource:
    parsed = text_format.Parse(config, mc.ModelConfig()) if config is not None else None
    return ModelSource(name=name, path=path, config=parsed)


# --- scan -----------------------------------------------------------------------------


def test_scan_reads_triton_layout(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "config.pbtxt", 'name: "a"\nmax_batch_size: 2\n')
    for v in ("1", "2", "10"):
        touch(tmp_path / "a" / v / "model.onnx")
    touch(tmp_path / "a" / "0" / "model.onnx")  # versions are positive
    touch(tmp_path / "a" / "3" / "other.onnx")  # no model file of the right name
    touch(tmp_path / "a" / ".dlserve-tmp-4" / "model.onnx")  # export in progress
    touch(tmp_path / "a" / "v5" / "model.onnx")  # not all digits
    touch(tmp_path / "a" / "6")  # a file, not a folder
    touch(tmp_path / "b" / "1" / "model.onnx")  # no config
    touch(tmp_path / ".hidden" / "1" / "model.onnx")
    touch(tmp_path / "README.md")

    sources = scan(tmp_path)
    assert sorted(sources) == ["a", "b"]
    a = sources["a"]
    assert (a.name, a.path, a.config_error) == ("a", tmp_path / "a", None)
    assert a.config is not None and a.config.max_batch_size == 2
    assert sorted(a.versions) == [1, 2, 10]
    assert a.versions[10] == tmp_path / "a" / "10" / "model.onnx"
    assert sources["b"].config is None and sorted(sources["b"].versions) == [1]


def test_scan_uses_default_model_filename(tmp_path: Path) -> None:
    touch(tmp_path / "m" / "config.pbtxt", 'default_model_filename: "net.onnx"\n')
    touch(tmp_path / "m" / "1" / "net.onnx")
    touch(tmp_path / "m" / "2" / "model.onnx")
    found = scan(tmp_path)["m"]
    assert found.model_file_name == "net.onnx"
    assert found.versions == {1: tmp_path / "m" / "1" / "net.onnx"}


def test_scan_keeps_a_bad_config_as_its_reason(tmp_path: Path) -> None:
    touch(tmp_path / "m" / "config.pbtxt", "max_batch_size: lots\n")
    touch(tmp_path / "m" / "1" / "model.onnx")
    found = scan(tmp_path)["m"]
    assert found.config is None
    assert found.config_error is not None
    assert "config.pbtxt is not a valid ModelConfig" in found.config_error
    assert "max_batch_size" in found.config_error  # the parser's own pointer


def test_read_config_rejects_unknown_fields_and_bad_bytes(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no_such_field"):
        read_config(touch(tmp_path / "config.pbtxt", "no_such_field: 1\n"))
    bad = tmp_path / "bad.pbtxt"
    bad.write_bytes(b"\xff\xfe name")
    with pytest.raises(ModelLoadError, match="cannot read bad.pbtxt"):
        read_config(bad)


# --- version policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "available", "served"),
    [
        (None, [3, 1, 2], [3]),  # no config: Triton's default, latest 1
        ("", [3, 1, 2], [3]),  # config without a policy: the same
        ("version_policy { latest { num_versions: 2 } }", [1, 2, 3], [2, 3]),
        ("version_policy { latest { num_versions: 5 } }", [1, 2], [1, 2]),
        ("version_policy { latest { } }", [1, 2], [2]),
        ("version_policy { all { } }", [10, 2, 1], [1, 2, 10]),
        ("version_policy { specific { versions: [1, 3] } }", [1, 2, 3], [1, 3]),
        ("version_policy { specific { versions: [4] } }", [1, 2, 3], []),
        ("version_policy { all { } }", [], []),
    ],
)
def test_select_versions(policy: str | None, available: list[int], served: list[int]) -> None:
    config = text_format.Parse(policy, mc.ModelConfig()) if policy is not None else None
    assert select_versions(config, available) == served


# --- config completion ----------------------------------------------------------------------


def test_no_config_is_completed_from_the_graph() -> None:
    config = complete_config(source(None), GRAPH_IN, GRAPH_OUT)
    assert (config.name, config.platform, config.backend) == (
        "clf",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == 4  # Triton's auto-complete default
    assert config.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", mc.TYPE_FP32, [2])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("logits", [3]),
        ("probabilities", [3]),
    ]
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1
    assert config.version_policy.latest.num_versions == 1
    assert config.default_model_filename == "model.onnx"


def test_fixed_first_dimension_is_completed_without_batching() -> None:
    config = complete_config(source(None), FIXED_IN, FIXED_OUT)
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert [list(i.dims) for i in config.input] == [[3, 2]]


def test_config_with_only_batching_fields_gets_tensors_from_graph() -> None:
    config = complete_config(source("max_batch_size: 32\n"), GRAPH_IN, GRAPH_OUT)
    assert config.max_batch_size == 32
    assert not config.HasField("dynamic_batching")  # not asked for, not added
    assert [list(o.dims) for o in config.output] == [[3], [3]]


def test_written_config_is_kept_and_checked() -> None:
    text = """
        name: "clf"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "input", data_type: TYPE_FP32, dims: [ -1 ] } ]
        output [ { name: "probabilities", data_type: TYPE_FP32, dims: [ 3 ],
                   label_filename: "labels.txt" } ]
        instance_group [ { count: 3, kind: KIND_CPU } ]
        version_policy { all { } }
        dynamic_batching { preferred_batch_size: [ 2, 8 ], max_queue_delay_microseconds: 50 }
    """
    config = complete_config(source(text), GRAPH_IN, GRAPH_OUT)
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [-1]  # -1 in the config accepts the graph's 2
    assert [o.name for o in config.output] == ["probabilities"]  # a subset is fine
    assert config.instance_group[0].count == 3
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert config.dynamic_batching.max_queue_delay_microseconds == 50


def test_tensor_without_dims_takes_the_graphs() -> None:
    text = 'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_FP32 } ]\n'
    config = complete_config(source(text), GRAPH_IN, GRAPH_OUT)
    assert list(config.input[0].dims) == [2]


REJECTED = {
    "name mismatch": ('name: "other"\n', "names the model 'other', its folder is 'clf'"),
    "unsupported platform": (
        'platform: "tensorrt_plan"\n', "platform 'tensorrt_plan' is not served",
    ),
    "unsupported backend": ('backend: "pytorch"\n', "backend 'pytorch' is not served"),
    "negative max_batch_size": ("max_batch_size: -1\n", "max_batch_size must be >= 0, got -1"),
    "dims mismatch": (
        'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_FP32, dims: [ 5 ] } ]\n',
        "input 'input' has dims [5], the ONNX graph has [2]",
    ),
    "rank mismatch": (
        'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_FP32, dims: [ 1, 2 ] } ]\n',
        "has dims [1, 2], the ONNX graph has [2]",
    ),
    "batch dim written out": (
        'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_FP32, dims: [ -1, 2 ] } ]\n',
        "has dims [-1, 2], the ONNX graph has [2]",
    ),
    "datatype mismatch": (
        'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_INT64, dims: [ 2 ] } ]\n',
        "input 'input' is INT64, the ONNX graph says FP32",
    ),
    "tensor not in graph": (
        'max_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n',
        "input 'x' is not in the ONNX graph (graph inputs: ['input'])",
    ),
    "output not in graph": (
        'max_batch_size: 4\noutput [ { name: "scores", data_type: TYPE_FP32, dims: [ 3 ] } ]\n',
        "output 'scores' is not in the ONNX graph",
    ),
    "tensor twice": (
        'max_batch_size: 4\noutput [ { name: "logits", data_type: TYPE_FP32, dims: [ 3 ] },'
        ' { name: "logits", data_type: TYPE_FP32, dims: [ 3 ] } ]\n',
        "lists output 'logits' twice",
    ),
    "zero dim": (
        'max_batch_size: 0\ninput [ { name: "input", data_type: TYPE_FP32, dims: [ 0, 2 ] } ]\n',
        "input 'input' has",
    ),
    "label file outside the folder": (
        'max_batch_size: 4\noutput [ { name: "logits", data_type: TYPE_FP32, dims: [ 3 ],'
        ' label_filename: "../../etc/passwd" } ]\n',
        "label_filename '../../etc/passwd' must be a plain file name",
    ),
    "label file in a subfolder": (
        'max_batch_size: 4\noutput [ { name: "logits", data_type: TYPE_FP32, dims: [ 3 ],'
        ' label_filename: "sub/labels.txt" } ]\n',
        "must be a plain file name",
    ),
    "reshape": (
        'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_FP32, dims: [ 2 ],'
        " reshape: { shape: [ 1, 2 ] } } ]\n",
        "'input': reshape is not supported",
    ),
    "preferred batch over max": (
        "max_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 8 ] }\n",
        "preferred_batch_size 8 must be in 1..max_batch_size (4)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_config_rejected(case: str) -> None:
    text, fragment = REJECTED[case]
    with pytest.raises(ModelLoadError) as info:
        complete_config(source(text), GRAPH_IN, GRAPH_OUT)
    assert fragment in info.value.message, info.value.message


def test_batching_needs_a_dynamic_first_dimension() -> None:
    with pytest.raises(ModelLoadError) as info:
        complete_config(source("max_batch_size: 4\n"), FIXED_IN, FIXED_OUT)
    assert "input 'input' has no dynamic first dimension (shape [3, 2])" in info.value.message
    assert "max_batch_size: 0" in info.value.message


def test_graph_input_missing_from_config() -> None:
    graph_in = [*GRAPH_IN, TensorInfo("mask", "BOOL", (-1, 2))]
    text = 'max_batch_size: 4\ninput [ { name: "input", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
    with pytest.raises(ModelLoadError, match=r"lacks graph input\(s\) \['mask'\]"):
        complete_config(source(text), graph_in, GRAPH_OUT)


def test_completion_does_not_modify_the_scanned_config() -> None:
    src = source("max_batch_size: 4\n")
    complete_config(src, GRAPH_IN, GRAPH_OUT)
    assert src.config is not None and not src.config.input and not src.config.name


# --- labels and names -----------------------------------------------------------------------


def test_read_labels(tmp_path: Path) -> None:
    touch(tmp_path / "labels.txt", "cat\ndog\n")
    src = ModelSource("m", tmp_path)
    assert read_labels(src, "labels.txt") == ["cat", "dog"]
    with pytest.raises(ModelLoadError, match="cannot read labels 'missing.txt'"):
        read_labels(src, "missing.txt")


@pytest.mark.parametrize("name", ["../labels.txt", "/etc/passwd", "a/b.txt", "..", ".", "", "a\\b"])
def test_label_paths_cannot_leave_the_model_folder(tmp_path: Path, name: str) -> None:
    touch(tmp_path / "labels.txt", "secret\n")
    with pytest.raises(ModelLoadError, match="must be a plain file name"):
        read_labels(ModelSource("m", tmp_path / "m"), name)
    with pytest.raises(ModelLoadError):
        safe_file_name(name, "label_filename")


@pytest.mark.parametrize(
    ("name", "plain"),
    [("clf", True), ("mlp-xor_2", True), ("", False), ("..", False), (".hidden", False),
     ("a/b", False), ("a\\b", False), ("a\0b", False)],
)  # fmt: skip
def test_is_plain_name(name: str, plain: bool) -> None:
    assert is_plain_name(name) is plain


# --- odd entries: names, FIFOs, devices, sizes ---------------------------------------------

T = TypeVar("T")


def promptly(fn: Callable[[], T], fifo: Path, timeout: float = 10.0) -> T | Exception:
    """``fn()``'s result or exception, from a thread; if it is still blocked
    after ``timeout``, unblock it (open the FIFO's other end) and fail."""
    result: list[T | Exception] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:  # handed to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets EOF
        thread.join(timeout)
        pytest.fail(f"blocked on the FIFO {fifo.name} for {timeout}s")
    return result[0]


def bytes_path(path: Path, name: bytes) -> bytes:
    return os.fsencode(path) + b"/" + name


def test_scan_skips_folders_whose_name_is_not_utf8_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "good" / "1" / "model.onnx")
    os.makedirs(bytes_path(tmp_path, b"bad\xff/1"))
    with open(bytes_path(tmp_path, b"bad\xff/1/model.onnx"), "wb") as f:
        f.write(b"x")
    os.mkdir(bytes_path(tmp_path, b"ctl\nname"))
    with caplog.at_level(logging.WARNING, logger="serving.repository"):
        assert sorted(scan(tmp_path)) == ["good"]
        assert sorted(scan(tmp_path)) == ["good"]  # the next poll
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # one per odd folder, not one per scan
    assert any("not valid UTF-8" in w and "bad\\udcff" in w for w in warnings), warnings
    assert any("control characters" in w for w in warnings), warnings


def test_scan_model_ignores_odd_names_inside_the_folder(tmp_path: Path) -> None:
    touch(tmp_path / "m" / "1" / "model.onnx")
    touch(tmp_path / "m" / "config.pbtxt", "max_batch_size: 2\n")
    with open(bytes_path(tmp_path, b"m/notes\xff.txt"), "wb") as f:
        f.write(b"notes")
    os.makedirs(bytes_path(tmp_path, b"m/2\xff"))
    found = scan(tmp_path)["m"]
    assert sorted(found.versions) == [1] and found.config_error is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [("clf", None), ("a b-c_d.e", None), ("bad\udcff", "not valid UTF-8"),
     ("a\nb", "control characters"), ("a\x7fb", "control characters"),
     ("a\\b", "not a plain name")],
)  # fmt: skip
def test_name_problem(name: str, problem: str | None) -> None:
    got = name_problem(name)
    assert got == problem if problem is None else (got is not None and problem in got)


def test_scan_model_records_the_digest_of_the_config_it_parsed(tmp_path: Path) -> None:
    config = touch(tmp_path / "m" / "config.pbtxt", "max_batch_size: 2\n")
    first = scan_model(tmp_path / "m").config_bytes_digest
    assert first is not None and first == scan_model(tmp_path / "m").config_bytes_digest
    config.write_text("max_batch_size: 3\n")
    assert scan_model(tmp_path / "m").config_bytes_digest not in (None, first)
    config.unlink()
    assert scan_model(tmp_path / "m").config_bytes_digest is None


def test_label_file_that_is_a_fifo_fails_promptly(tmp_path: Path) -> None:
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    got = promptly(lambda: read_labels(ModelSource("m", tmp_path), "labels.txt"), fifo)
    assert isinstance(got, ModelLoadError), got
    assert got.message == "cannot read labels 'labels.txt': it is a FIFO, not a regular file"


def test_config_that_is_a_fifo_is_a_config_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "m" / "config.pbtxt"
    touch(tmp_path / "m" / "1" / "model.onnx")
    os.mkfifo(fifo)
    found = promptly(lambda: scan(tmp_path)["m"], fifo)
    assert isinstance(found, ModelSource), found
    assert found.config_error == "cannot read config.pbtxt: it is a FIFO, not a regular file"


def test_label_file_that_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "folder.txt").mkdir()
    os.symlink("/dev/null", tmp_path / "null.txt")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.txt")
    src = ModelSource("m", tmp_path)
    with pytest.raises(ModelLoadError, match="'folder.txt': it is a folder, not a regular file"):
        read_labels(src, "folder.txt")
    with pytest.raises(ModelLoadError, match="it is a character device, not a regular file"):
        read_labels(src, "null.txt")
    with pytest.raises(ModelLoadError, match="'dangling.txt': No such file or directory"):
        read_labels(src, "dangling.txt")


def test_label_file_size_is_capped(tmp_path: Path) -> None:
    big = tmp_path / "labels.txt"
    with open(big, "wb") as f:
        f.truncate(MAX_TEXT_FILE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(ModelLoadError, match="over the limit of 16777216 bytes"):
        read_labels(ModelSource("m", tmp_path), "labels.txt")


def test_label_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ModelLoadError, match="cannot read labels 'labels.txt': not UTF-8 text"):
        read_labels(ModelSource("m", tmp_path), "labels.txt")


def test_symlinked_label_file_is_followed(tmp_path: Path) -> None:
    touch(tmp_path / "shared" / "labels.txt", "cat\ndog\n")
    os.symlink(tmp_path / "shared" / "labels.txt", tmp_path / "labels.txt")
    assert read_labels(ModelSource("m", tmp_path), "labels.txt") == ["cat", "dog"]

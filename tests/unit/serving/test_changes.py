"""serving.changes with real files in tmp_path: which files a model's state
covers (config.pbtxt, the label files the config names, the model files),
that unchanged files are not read again (``files_hashed``), that copies
which keep size and mtime are still seen, and that a FIFO never blocks."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from serving.changes import ChangeTracker, ModelState
from serving.repository import ModelSource, scan_model

T = TypeVar("T")

#: A clock far after every file time here, so no file counts as racy.
LATER = 2**62
CONFIG = """
max_batch_size: 4
output [ { name: "probabilities", data_type: TYPE_FP32, dims: [ 2 ],
           label_filename: "classes.names" } ]
"""


def model_folder(root: Path, config: str = CONFIG) -> Path:
    folder = root / "m"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    (folder / "classes.names").write_text("cat\ndog\n")
    (folder / "notes.txt").write_text("what I tried\n")
    (folder / "1" / "model.onnx").write_bytes(b"weights-1")
    return folder


def tracker() -> ChangeTracker:
    return ChangeTracker(now=lambda: LATER)


def state(t: ChangeTracker, folder: Path) -> ModelState:
    return t.model_state(scan_model(folder))


def promptly(fn: Callable[[], T], fifo: Path, timeout: float = 10.0) -> T:
    """Run ``fn`` in a thread; if it is still blocked after ``timeout``,
    unblock it (open the FIFO's other end) and fail."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the blocked reader gets EOF
        os.close(fd)
        thread.join(timeout)
        pytest.fail(f"blocked on the FIFO {fifo.name} for {timeout}s")
    assert result, "the call raised (see the thread's traceback above)"
    return result[0]


def test_state_is_stable_and_unchanged_files_are_not_read(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    first = state(t, folder)
    assert sorted(first.versions) == [1]
    assert t.files_hashed == 2  # classes.names and 1/model.onnx; config.pbtxt comes from the scan
    assert state(t, folder) == first
    assert t.files_hashed == 2


def test_label_file_not_named_txt_changes_the_config_digest(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    before = state(t, folder)
    (folder / "classes.names").write_text("left\nright\n")
    after = state(t, folder)
    assert after.config_digest != before.config_digest
    assert after.versions == before.versions


def test_files_the_config_does_not_name_are_never_read(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / "labels.txt").write_text("not named by the config\n")
    t = tracker()
    before = state(t, folder)
    hashed = t.files_hashed
    (folder / "notes.txt").write_text("a much longer note " * 1000)
    (folder / "labels.txt").write_text("still not named\n")
    (folder / "report.json").write_text("{}")
    assert state(t, folder) == before
    assert t.files_hashed == hashed


def test_config_change_changes_the_config_digest(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    before = state(t, folder)
    (folder / "config.pbtxt").write_text(CONFIG.replace("max_batch_size: 4", "max_batch_size: 2"))
    changed = state(t, folder)
    assert changed.config_digest != before.config_digest
    (folder / "config.pbtxt").write_text("max_batch_size: [not protobuf text")
    broken = scan_model(folder)
    assert broken.config_error is not None
    assert t.model_state(broken).config_digest not in (before.config_digest, changed.config_digest)


def test_a_renamed_label_file_is_followed(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    before = state(t, folder)
    (folder / "other.names").write_text("cat\ndog\n")  # same content, another name
    (folder / "config.pbtxt").write_text(CONFIG.replace("classes.names", "other.names"))
    after = state(t, folder)
    assert after.config_digest != before.config_digest
    (folder / "other.names").write_text("cat\nbird\n")
    assert state(t, folder).config_digest != after.config_digest


def replace_keeping_size_and_mtime(path: Path, data: bytes, in_place: bool) -> None:
    """``cp -p`` (in place, same inode) or ``rsync -t`` (a new file renamed
    over the old one), both keeping the old mtime."""
    old = path.stat()
    assert len(data) == old.st_size
    if in_place:
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    else:
        aside = path.with_name(".tmp-" + path.name)
        aside.write_bytes(data)
        os.utime(aside, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.rename(aside, path)
    new = path.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)


@pytest.mark.parametrize("in_place", [True, False], ids=["cp-p-in-place", "rsync-t-rename"])
def test_same_size_same_mtime_replacement_changes_the_version_digest(
    tmp_path: Path, in_place: bool
) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    before = state(t, folder)
    replace_keeping_size_and_mtime(folder / "1" / "model.onnx", b"weights-2", in_place)
    after = state(t, folder)
    assert after.versions[1] != before.versions[1]
    assert after.config_digest == before.config_digest


def test_touch_rereads_but_keeps_the_digest(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    before = state(t, folder)
    hashed = t.files_hashed
    model = folder / "1" / "model.onnx"
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    assert state(t, folder) == before  # same bytes: no reload
    assert t.files_hashed == hashed + 1


def test_recently_written_files_are_read_again(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = ChangeTracker()  # the real clock: everything here was written just now
    first = state(t, folder)
    hashed = t.files_hashed
    assert state(t, folder) == first
    assert t.files_hashed == hashed + 2  # racy: a rewrite in the same tick keeps the stat key


def test_versions_follow_the_scan_and_forget_drops_what_is_known(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / "2").mkdir()
    (folder / "2" / "model.onnx").write_bytes(b"weights-2")
    t = tracker()
    both = state(t, folder)
    assert sorted(both.versions) == [1, 2]
    os.remove(folder / "2" / "model.onnx")
    assert state(t, folder).versions == {1: both.versions[1]}
    hashed = t.files_hashed
    t.forget("m")
    assert state(t, folder).versions == {1: both.versions[1]}
    assert t.files_hashed == hashed + 2  # read again after forget


def test_missing_label_file_has_a_state_and_its_arrival_changes_it(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    os.remove(folder / "classes.names")
    t = tracker()
    missing = state(t, folder)
    (folder / "classes.names").write_text("cat\ndog\n")
    assert state(t, folder).config_digest != missing.config_digest


def test_a_model_file_that_vanished_after_the_scan(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    source = scan_model(folder)
    os.remove(folder / "1" / "model.onnx")
    gone = tracker().model_state(source).versions[1]
    assert gone.startswith("!") and "No such file" in gone


def test_fifo_as_label_file_does_not_block(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    regular = state(t, folder)
    fifo = folder / "classes.names"
    os.remove(fifo)
    os.mkfifo(fifo)
    as_fifo = promptly(lambda: state(t, folder), fifo)
    assert as_fifo.config_digest != regular.config_digest
    os.remove(fifo)
    (folder / "classes.names").write_text("cat\ndog\n")
    assert state(t, folder).config_digest == regular.config_digest


def test_odd_file_names_in_the_folder_do_not_break_anything(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    t = tracker()
    before = state(t, folder)
    os.close(os.open(os.fsencode(folder) + b"/notes\xff.txt", os.O_CREAT | os.O_WRONLY))
    os.mkdir(os.fsencode(folder) + b"/3\xff")
    assert state(t, folder) == before


def test_unsafe_label_file_name_is_never_read(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, CONFIG.replace("classes.names", "../secret.names"))
    (tmp_path / "secret.names").write_text("secret\n")
    t = tracker()
    state(t, folder)
    assert t.files_hashed == 1  # the model file only


def test_model_without_config(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    os.remove(folder / "config.pbtxt")
    source = scan_model(folder)
    assert source.config is None and source.config_bytes_digest is None
    t = tracker()
    without = t.model_state(source)
    assert sorted(without.versions) == [1] and t.files_hashed == 1
    (folder / "config.pbtxt").write_text(CONFIG)
    assert state(t, folder).config_digest != without.config_digest


def test_state_of_a_source_built_by_hand(tmp_path: Path) -> None:
    """The manager may build a ModelSource without a scan (no digest): fine."""
    path = tmp_path / "1.onnx"
    path.write_bytes(b"w")
    got = tracker().model_state(ModelSource("x", tmp_path, versions={1: path}))
    assert list(got.versions) == [1] and not got.versions[1].startswith("!")

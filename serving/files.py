"""Reading files a model folder names without trusting them: regular files
only (a FIFO, device or folder is refused, never opened for a blocking
read), opened non-blocking, size-capped; and names that cannot be a model,
version or label file (not UTF-8, control characters)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from serving.errors import ModelLoadError

#: The most a config.pbtxt or label file may hold.
MAX_TEXT_FILE_BYTES = 16 * 1024 * 1024


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    ):  # fmt: skip
        if test(mode):
            return kind
    return "of an unknown type"


def os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def open_regular(path: Path, what: str) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` for reading only if it is a regular file (after
    symlinks), with its fstat. Anything else raises ModelLoadError
    ``cannot read <what>: ...`` without ever waiting: the type is checked
    before the open, and the open is non-blocking in case a FIFO was swapped
    in between (then the fstat refuses it)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what}: {os_reason(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"cannot read {what}: it is {_kind(st.st_mode)}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what}: {os_reason(exc)}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(
                f"cannot read {what}: it is {_kind(st.st_mode)}, not a regular file"
            )
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: Path, what: str, limit: int = MAX_TEXT_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see open_regular)."""
    file, st = open_regular(path, what)
    with file:
        if st.st_size > limit:
            raise ModelLoadError(
                f"cannot read {what}: {st.st_size} bytes is over the limit of {limit} bytes"
            )
        try:
            data = file.read(limit + 1)
        except OSError as exc:
            raise ModelLoadError(f"cannot read {what}: {os_reason(exc)}") from exc
    if len(data) > limit:  # it grew while being read
        raise ModelLoadError(f"cannot read {what}: over the limit of {limit} bytes")
    return data


def digest_bytes(data: bytes) -> str:
    """The content digest used for change checks (blake2b, hex)."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def name_problem(name: str) -> str | None:
    """Why a folder or file name from a listing cannot be a model name, or
    None. A model name travels to protobuf strings, metric labels, logs and
    URLs, so it must be valid UTF-8 (``os.fsdecode`` turns other bytes into
    surrogates), a plain name, and free of control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "its name has control characters"
    if not is_plain_name(name):
        return "its name is not a plain name"
    return None


def is_plain_name(name: str) -> bool:
    """A model name from a request that is safe to join to the repository
    path: one path component, no traversal, no NUL, not hidden."""
    return (
        bool(name)
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not name.startswith(".")
    )


def is_model_folder(root: Path, name: str, max_length: int) -> bool:
    """Whether a name from a request is a plain name of a folder in ``root``."""
    if not name or len(name) > max_length or not is_plain_name(name):
        return False
    try:
        return (root / name).is_dir()
    except (OSError, ValueError):  # name too long for the file system, and the like
        return False

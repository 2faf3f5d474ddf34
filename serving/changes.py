"""What a model folder holds, as far as loading it is concerned, cheaply.

A repository poll must notice every change that matters to a model and read
nothing else:

- What matters: ``config.pbtxt``, the label files its outputs name
  (``label_filename``, whatever the name: ``classes.names`` as well as
  ``labels.txt``), and each version's model file. Other files in the folder
  (``notes.txt``, reports) are never opened.
- Cheap: a file is stat'ed, and read and hashed (blake2b) only when its key
  ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` changed since the
  last call. The inode catches a copy renamed into place with its mtime
  kept (``rsync -t``); the ctime catches ``cp -p`` over the same inode,
  since setting an mtime back sets the ctime. The content digest then tells
  a real change from a ``touch``.
- Racy files: a file whose ctime or mtime is within ``RACY_NS`` of now is
  hashed but not trusted on the next call (git's "racy clean" rule): a
  same-size rewrite within the same timestamp tick would keep its key.
- Safe: files are opened only when regular (``files.open_regular``).
  A FIFO, device or folder named as a label file, or a file that vanished,
  gets a digest that starts with ``!`` and says why; nothing blocks.
- config.pbtxt is not re-read here: ``ModelSource.config_bytes_digest`` is
  the digest of the bytes the scan parsed, so the state never describes
  newer bytes than the config the manager loads with.

Everything here blocks on the file system: call ``ChangeTracker.model_state``
in a worker thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from serving.errors import ModelLoadError
from serving.files import open_regular
from serving.repository import CONFIG_FILE, ModelSource, safe_file_name

#: A file changed this recently (ns) is rehashed on the next call too.
RACY_NS = 2_000_000_000
_CHUNK = 1 << 20

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)
_Key = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class ModelState:
    """A model folder's content as loading sees it. Compare states with
    ``==``; a digest starting with ``!`` is a file that could not be read
    (the text says why), which still compares as a state."""

    #: Over config.pbtxt and every label file the config names: a change
    #: reloads every version.
    config_digest: str
    #: Version -> digest of its model file's bytes: a change reloads that version.
    versions: dict[int, str]


class ChangeTracker:
    """Remembers, per model and file, the stat key and the digest of the
    bytes read under it; rehashes a file only when its key changed (see the
    module docstring). Thread-safe; each call blocks on the file system."""

    def __init__(self, now: Callable[[], int] = time.time_ns, racy_ns: int = RACY_NS) -> None:
        self._now = now
        self._racy_ns = racy_ns
        self._lock = threading.Lock()
        self._files: dict[str, dict[Path, tuple[_Key, str]]] = {}
        self._hashed = 0

    @property
    def files_hashed(self) -> int:
        """How many files have been opened and read so far."""
        return self._hashed

    def model_state(self, source: ModelSource) -> ModelState:
        """The state of ``source``'s folder now. Blocking: call in a thread."""
        with self._lock:
            known = dict(self._files.get(source.name, {}))
        trusted: dict[Path, tuple[_Key, str]] = {}

        def digest(path: Path, what: str) -> str:
            key, value = self._file_digest(path, what, known.get(path))
            if key is not None:
                trusted[path] = (key, value)
            return value

        h = hashlib.blake2b(digest_size=32)

        def part(name: str, value: str) -> None:
            h.update(name.encode("utf-8", "backslashreplace") + b"\0")
            h.update(value.encode("utf-8", "backslashreplace") + b"\0")

        part(CONFIG_FILE, source.config_bytes_digest or f"!{source.config_error or 'absent'}")
        names = {o.label_filename for o in source.config.output} if source.config else set()
        for name in sorted(names - {""}):
            try:
                path = source.path / safe_file_name(name, "label_filename")
            except ModelLoadError as exc:
                part(name, f"!{exc.message}")
                continue
            part(name, digest(path, f"labels {name!r}"))
        versions = {
            version: digest(path, f"version {version} {path.name}")
            for version, path in sorted(source.versions.items())
        }
        with self._lock:
            self._files[source.name] = trusted  # files no longer named drop out
        return ModelState(h.hexdigest(), versions)

    def forget(self, model: str) -> None:
        """Drop what is remembered about ``model`` (it left the repository)."""
        with self._lock:
            self._files.pop(model, None)

    def _file_digest(
        self, path: Path, what: str, known: tuple[_Key, str] | None
    ) -> tuple[_Key | None, str]:
        """(key to remember it under, or None to rehash next time; digest)."""
        try:
            key = _key(os.stat(path))
        except OSError as exc:
            return None, f"!cannot read {what}: {exc.strerror or type(exc).__name__}"
        if known is not None and known[0] == key:
            return known
        try:
            file, opened = open_regular(path, what)
        except ModelLoadError as exc:
            return None, f"!{exc.message}"
        with self._lock:
            self._hashed += 1
        h = hashlib.blake2b(digest_size=32)
        try:
            with file:
                while chunk := file.read(_CHUNK):
                    h.update(chunk)
                after = _key(os.fstat(file.fileno()))
        except OSError as exc:
            return None, f"!cannot read {what}: {exc.strerror or type(exc).__name__}"
        # Trust the digest only for the very file stat'ed, unchanged while it
        # was read, and old enough that a rewrite would move its timestamps.
        steady = key == _key(opened) == after
        racy = self._now() - max(key[3], key[4]) < self._racy_ns
        return (key if steady and not racy else None), h.hexdigest()


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


__all__ = ["ChangeTracker", "ModelState", "RACY_NS"]

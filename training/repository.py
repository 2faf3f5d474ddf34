"""The model repository on disk (Triton's layout), without torch.

    <repository>/<name>/config.pbtxt   ModelConfig, protobuf text format
    <repository>/<name>/labels.txt     one class label per line
    <repository>/<name>/<N>/model.onnx versions are all-digit folder names

Every write is atomic: files are written beside their target and
``os.replace``d; a version is built in ``<name>/.dlserve-tmp-*`` and renamed
to ``<name>/<N+1>``. The server only loads all-digit version folders and skips
dot-folders, so it never sees a half-written version.

Errors (under `training.errors.TrainingError`)::

    ExportError            base (export.py adds ParityError)
    └── RepositoryError    cannot write, or an existing config.pbtxt is unreadable
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

from training.errors import TrainingError

__all__ = [
    "TMP_PREFIX",
    "ExportError",
    "RepositoryError",
    "build_config",
    "check_repository_writable",
    "latest_version",
    "preflight",
    "roll_back",
    "snapshot",
    "write_text_atomic",
    "write_version",
]

#: Prefix of in-progress folders/files; the server only loads all-digit version folders.
TMP_PREFIX = ".dlserve-tmp-"
INPUT_NAME = "input"


class ExportError(TrainingError):
    """Base of export failures; ``str(exc)`` is a one-line message for the user."""


class RepositoryError(ExportError):
    """The model repository cannot be written (or holds a config we cannot read)."""


def build_config(
    name: str,
    input_shape: Sequence[int],
    classes: int,
    max_batch_size: int,
    existing: str | None = None,
) -> str:
    """``config.pbtxt`` text (Triton's ModelConfig) for an exported classifier.

    With ``existing`` (the current file's text), settings a user may have tuned
    (dynamic_batching, instance_group, version_policy, ...) are kept and only the
    name, platform, batch size and tensor signature are rewritten.
    """
    from google.protobuf import text_format

    from serving._generated import model_config_pb2 as mc

    config = mc.ModelConfig()
    if existing is not None:
        try:
            text_format.Parse(existing, config)
        except text_format.ParseError as exc:
            raise RepositoryError(
                f"the existing config.pbtxt does not parse ({exc}); fix or delete it"
            ) from exc
    config.name = name
    config.platform = "onnxruntime_onnx"
    config.ClearField("backend")
    config.max_batch_size = int(max_batch_size)
    del config.input[:]
    del config.output[:]
    config.input.add(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=[int(d) for d in input_shape])
    config.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[int(classes)])
    config.output.add(
        name="probabilities",
        data_type=mc.TYPE_FP32,
        dims=[int(classes)],
        label_filename="labels.txt",
    )
    if config.WhichOneof("scheduling_choice") is None:
        config.dynamic_batching.SetInParent()  # no queue delay: batch what is waiting
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    return text_format.MessageToString(config)


def latest_version(model_dir: Path) -> int:
    """Highest all-digit version folder in ``model_dir`` (0 when none)."""
    if not model_dir.is_dir():
        return 0
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:  # "x": default permissions (umask), fails if it exists
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file beside it + ``os.replace``)."""
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        _write_file(tmp, text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_version(model_dir: Path, onnx_bytes: bytes) -> int:
    """Add ``<model_dir>/<N+1>/model.onnx`` atomically; returns N+1.

    The folder is built as ``<model_dir>/.dlserve-tmp-*`` and renamed into
    place; if another writer takes N+1 first, the next number is tried.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_file(tmp / "model.onnx", onnx_bytes)
        _fsync_dir(tmp)
        for _ in range(1000):
            version = latest_version(model_dir) + 1
            target = model_dir / str(version)
            try:
                if target.exists():  # a plain file named like a version
                    raise FileExistsError(errno.EEXIST, "exists", str(target))
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    continue  # lost a race (or a stray file): try the next number
                raise
            _fsync_dir(model_dir)
            return version
        raise RepositoryError(f"could not find a free version number in {model_dir}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_repository_writable(repository: Path, name: str | None = None) -> None:
    """Fail early (before training) when ``repository[/name]`` cannot be created or written.

    Checks the nearest existing ancestor without creating anything.
    """
    target = repository / name if name else repository
    probe = target
    while not probe.exists():
        if probe.is_symlink():
            raise RepositoryError(f"cannot write to {target}: {probe} is a dangling symlink")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RepositoryError(f"cannot write to {target}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RepositoryError(f"cannot write to {target}: {probe} is not writable")
    config = target / "config.pbtxt"
    if config.exists() and not config.is_file():
        raise RepositoryError(f"cannot write to {target}: {config} is not a file")


def preflight(repository: Path, name: str) -> None:
    """Everything that would stop an export, checked before training: the model
    folder can be written and an existing ``config.pbtxt`` parses."""
    check_repository_writable(repository, name)
    config = repository / name / "config.pbtxt"
    if config.is_file():
        try:
            text = config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RepositoryError(f"cannot read {config}: {exc}") from exc
        from google.protobuf import text_format

        from serving._generated import model_config_pb2 as mc

        try:
            text_format.Parse(text, mc.ModelConfig())
        except text_format.ParseError as exc:
            raise RepositoryError(f"{config} does not parse ({exc}); fix or delete it") from exc


def snapshot(model_dir: Path) -> tuple[bool, dict[Path, bytes | None]]:
    """What `roll_back` needs to restore ``model_dir``'s config and labels."""
    return not model_dir.exists(), {
        p: (p.read_bytes() if p.is_file() else None)
        for p in (model_dir / "labels.txt", model_dir / "config.pbtxt")
    }


def roll_back(model_dir: Path, created: bool, previous: dict[Path, bytes | None]) -> None:
    """Undo a half-done export: the repository is left as it was found."""
    if created:
        shutil.rmtree(model_dir, ignore_errors=True)
        return
    for path, content in previous.items():
        try:
            if content is None:
                path.unlink(missing_ok=True)
            else:
                write_text_atomic(path, content.decode("utf-8"))
        except OSError:  # pragma: no cover - best effort on an already failing disk
            pass

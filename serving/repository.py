"""The model repository in Triton's layout, read from disk.

    <root>/<model>/config.pbtxt        ModelConfig, protobuf text format (optional)
    <root>/<model>/labels.txt          class labels, named by an output's label_filename
    <root>/<model>/<version>/model.onnx    versions are positive integers
    <root>/<ensemble>/<version>/           an ensemble's versions are (empty) folders

``scan`` lists what is on disk without loading anything; ``complete_config``
checks a config against the ONNX graph, or builds it from the graph when the
folder has none (Triton's auto-complete). Folder entries that are not
all-digit (``.dlserve-tmp-*`` from an export in progress, reports, notes)
are never versions.

Reading the repository never blocks and never lets one odd entry break a
scan: names that are not valid UTF-8 (or not plain names) are skipped with
one warning each, and files are read only when they are regular files
(``open_regular``: a FIFO, device or folder named as a config or label file
is an error with a reason, never an open that waits for a writer), up to
``MAX_TEXT_FILE_BYTES`` for text files.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from google.protobuf import text_format

from serving._generated import model_config_pb2 as mc
from serving.datatypes import CONFIG_BY_DATATYPE, DATATYPE_BY_CONFIG
from serving.errors import ModelLoadError
from serving.files import (
    digest_bytes,
    name_problem,
    os_reason,
    read_regular_file,
)
from serving.runtime import TensorInfo

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
#: Triton's platform of a pipeline of other models (serving.ensemble).
ENSEMBLE_PLATFORM = "ensemble"
BACKEND = "onnxruntime"
#: Triton's auto-complete default when the graph's first dimension is dynamic.
AUTOCOMPLETE_MAX_BATCH_SIZE = 4

_VERSION_RE = re.compile(r"^[0-9]{1,18}$")

#: Names already warned about, so a poll does not repeat the warning (bounded).
_warned: set[str] = set()
_MAX_WARNED = 1024


def datatype_of(enum_value: int) -> str:
    """KServe datatype name of a config ``DataType`` enum value."""
    return DATATYPE_BY_CONFIG.get(mc.DataType.Name(mc.DataType.ValueType(enum_value)), "INVALID")


def config_datatype(datatype: str) -> int:
    return int(mc.DataType.Value(CONFIG_BY_DATATYPE.get(datatype, "TYPE_INVALID")))


@dataclass
class ModelSource:
    """One model folder as found on disk."""

    name: str
    path: Path
    config: mc.ModelConfig | None = None
    #: Why config.pbtxt could not be read; the model cannot load while set.
    config_error: str | None = None
    #: Version number -> model file, for every version folder holding one.
    versions: dict[int, Path] = field(default_factory=dict)
    #: blake2b of the config.pbtxt bytes ``config`` was parsed from (None
    #: when there is no file or it could not be read), so a change check
    #: describes the very bytes the scan saw.
    config_bytes_digest: str | None = None

    @property
    def model_file_name(self) -> str:
        if self.config is not None and self.config.default_model_filename:
            return self.config.default_model_filename
        return DEFAULT_MODEL_FILE


def safe_file_name(name: str, what: str) -> str:
    """A plain file name from a config, never a path out of the model folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ModelLoadError(f"{what} {name!r} must be a plain file name in the model folder")
    return name


def _parse_config(data: bytes, file_name: str) -> mc.ModelConfig:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"cannot read {file_name}: not UTF-8 text ({exc})") from exc
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{file_name} is not a valid ModelConfig: {exc}") from exc


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt; raise ModelLoadError with the parser's message."""
    return _parse_config(read_regular_file(path, path.name), path.name)


def _warn_skipped(path: Path, what: str, problem: str) -> None:
    """Warn once per path (bounded), not on every poll."""
    key = f"{what}\0{path}"
    if key in _warned:
        return
    if len(_warned) < _MAX_WARNED:
        _warned.add(key)
    logger.warning("skipping %s %a: %s", what, str(path), problem)


def scan_model(path: Path) -> ModelSource:
    source = ModelSource(name=path.name, path=path)
    config_path = path / CONFIG_FILE
    # A config.pbtxt that is a dangling link, a FIFO or a folder is an error
    # with a reason, not "no config".
    if os.path.lexists(config_path):
        try:
            data = read_regular_file(config_path, CONFIG_FILE)
            source.config_bytes_digest = digest_bytes(data)
            source.config = _parse_config(data, CONFIG_FILE)
        except ModelLoadError as exc:
            source.config_error = exc.message
    file_name = source.model_file_name
    ensemble = source.config is not None and source.config.platform == ENSEMBLE_PLATFORM
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        source.config_error = source.config_error or f"cannot list {path.name}: {os_reason(exc)}"
        return source
    for entry in entries:
        if entry.name.startswith("."):
            continue  # an export or a copy in progress
        problem = name_problem(entry.name)
        if problem is not None:
            _warn_skipped(entry, "entry", problem)
            continue
        if not _VERSION_RE.match(entry.name) or not _is_dir(entry):
            continue
        version = int(entry.name)
        model_file = entry / file_name
        if version > 0 and _is_regular(model_file):
            source.versions[version] = model_file
        elif version > 0 and ensemble:  # Triton's ensemble versions are empty folders
            source.versions[version] = entry
    return source


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def scan(root: Path) -> dict[str, ModelSource]:
    """Every model folder under ``root``: hidden folders are skipped, and so
    are folders with a ``name_problem`` (one warning each)."""
    sources: dict[str, ModelSource] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not _is_dir(entry):
            continue
        problem = name_problem(entry.name)
        if problem is not None:
            _warn_skipped(entry, "model folder", problem)
            continue
        sources[entry.name] = scan_model(entry)
    return sources


def select_versions(config: mc.ModelConfig | None, available: Sequence[int]) -> list[int]:
    """The versions the config's version_policy serves (Triton's default: latest 1)."""
    ordered = sorted(available)
    policy = config.version_policy if config is not None else None
    kind = policy.WhichOneof("policy_choice") if policy is not None else None
    if policy is not None and kind == "all":
        return ordered
    if policy is not None and kind == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in ordered if v in wanted]
    n = policy.latest.num_versions if policy is not None and kind == "latest" else 1
    return ordered[-max(n, 1) :] if ordered else []


def _compatible(config_dims: Sequence[int], graph_dims: Sequence[int]) -> bool:
    return len(config_dims) == len(graph_dims) and all(
        c == g or c == -1 or g == -1 for c, g in zip(config_dims, graph_dims, strict=False)
    )


def complete_config(
    source: ModelSource,
    graph_inputs: Sequence[TensorInfo],
    graph_outputs: Sequence[TensorInfo],
    graph_defaults: Sequence[TensorInfo] = (),
) -> mc.ModelConfig:
    """The config to serve with: the folder's own, checked against the graph,
    with what it leaves out filled in from the graph. ``graph_defaults`` are
    the graph's overridable initializers: inputs with a default value, which
    a config may list (as ``optional: true``) but completion never adds."""
    config = mc.ModelConfig()
    if source.config is not None:
        config.CopyFrom(source.config)
    name = source.name
    if config.name and config.name != name:
        raise ModelLoadError(
            f"config.pbtxt names the model {config.name!r}, its folder is {name!r}"
        )
    config.name = name
    if config.platform and config.platform != PLATFORM:
        raise ModelLoadError(f"platform {config.platform!r} is not served; only {PLATFORM!r}")
    if config.backend and config.backend != BACKEND:
        raise ModelLoadError(f"backend {config.backend!r} is not served; only {BACKEND!r}")
    config.platform = PLATFORM
    config.backend = BACKEND
    if config.max_batch_size < 0:
        raise ModelLoadError(f"max_batch_size must be >= 0, got {config.max_batch_size}")

    first_dims = [t.shape[0] if t.shape else 0 for t in (*graph_inputs, *graph_outputs)]
    if source.config is None or (
        not source.config.input and not source.config.output and config.max_batch_size == 0
    ):
        batchable = all(d == -1 for d in first_dims)
        if batchable and config.max_batch_size == 0:
            config.max_batch_size = AUTOCOMPLETE_MAX_BATCH_SIZE
            if not config.HasField("dynamic_batching"):
                config.dynamic_batching.SetInParent()
    batching = config.max_batch_size > 0

    def strip(shape: Sequence[int], what: str) -> list[int]:
        if not batching:
            return list(shape)
        if not shape or shape[0] != -1:
            raise ModelLoadError(
                f"{what} has no dynamic first dimension (shape {list(shape)}), so it cannot "
                f"batch: set max_batch_size: 0 in config.pbtxt"
            )
        return list(shape[1:])

    graph_in = {t.name: t for t in graph_inputs}
    graph_out = {t.name: t for t in graph_outputs}
    defaults = {t.name: t for t in graph_defaults}
    _complete_tensors(config.input, graph_in, "input", strip, defaults)
    _complete_tensors(config.output, graph_out, "output", strip)
    missing = set(graph_in) - {i.name for i in config.input}
    if missing:
        raise ModelLoadError(f"config.pbtxt lacks graph input(s) {sorted(missing)}")
    reshaped = [t.name for t in config.input if t.HasField("reshape")]
    reshaped += [t.name for t in config.output if t.HasField("reshape")]
    if reshaped:
        raise ModelLoadError(f"{reshaped[0]!r}: reshape is not supported")
    for out in config.output:
        if out.label_filename:
            safe_file_name(out.label_filename, f"output {out.name!r} label_filename")
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.default_model_filename:
        config.default_model_filename = DEFAULT_MODEL_FILE
    if config.HasField("dynamic_batching"):
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                raise ModelLoadError(
                    f"preferred_batch_size {size} must be in 1..max_batch_size "
                    f"({config.max_batch_size})"
                )
    return config


def _complete_tensors(tensors, graph: dict[str, TensorInfo], kind: str, strip,  # type: ignore[no-untyped-def]
                      defaults: dict[str, TensorInfo] | None = None) -> None:  # fmt: skip
    if not tensors:
        for info in graph.values():
            tensors.add(
                name=info.name,
                data_type=config_datatype(info.datatype),
                dims=strip(info.shape, f"{kind} {info.name!r}"),
            )
        return
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise ModelLoadError(f"config.pbtxt lists {kind} {tensor.name!r} twice")
        seen.add(tensor.name)
        found = graph.get(tensor.name) or (defaults or {}).get(tensor.name)
        if found is None:
            raise ModelLoadError(
                f"config.pbtxt {kind} {tensor.name!r} is not in the ONNX graph "
                f"(graph {kind}s: {sorted(graph)})"
            )
        want = datatype_of(tensor.data_type)
        if want != found.datatype:
            raise ModelLoadError(
                f"config.pbtxt {kind} {tensor.name!r} is {want}, "
                f"the ONNX graph says {found.datatype}"
            )
        graph_dims = strip(found.shape, f"{kind} {found.name!r}")
        if not tensor.dims:
            tensor.dims.extend(graph_dims)
        elif not _compatible(list(tensor.dims), graph_dims):
            raise ModelLoadError(
                f"config.pbtxt {kind} {tensor.name!r} has dims {list(tensor.dims)}, the ONNX "
                f"graph has {graph_dims} (batch dimension excluded when max_batch_size > 0)"
            )
        if any(d == 0 or d < -1 for d in tensor.dims):
            raise ModelLoadError(f"config.pbtxt {kind} {tensor.name!r} has invalid dims")


def read_labels(source: ModelSource, file_name: str) -> list[str]:
    """The lines of a label file in the model folder: a regular file of
    UTF-8 text, at most MAX_TEXT_FILE_BYTES (never blocks, see open_regular)."""
    what = f"labels {file_name!r}"
    data = read_regular_file(source.path / safe_file_name(file_name, "label_filename"), what)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"cannot read {what}: not UTF-8 text ({exc})") from exc

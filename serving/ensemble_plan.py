"""An ensemble's config, checked at load: Triton's ``platform: "ensemble"``
with ``ensemble_scheduling { step [ { model_name, model_version, input_map,
output_map } ] }``, completed (``complete``) and turned into a ``Plan``: the
steps in levels, each reading only tensors of earlier levels.

What the config alone can tell is checked here (steps name a model other than
the ensemble, every tensor a step reads is an ensemble input or some step's
output, no tensor is produced twice, every ensemble input is read, every
ensemble output is produced, no cycle: stdlib ``graphlib``); a failure fails
the load with its reason. What depends on the step models serving is checked
by ``serving.ensemble.blocker`` whenever the served set changes.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass

from serving import repository
from serving._generated import model_config_pb2 as mc
from serving.errors import ModelLoadError

PLATFORM = repository.ENSEMBLE_PLATFORM


def is_ensemble(config: mc.ModelConfig | None) -> bool:
    return config is not None and config.platform == PLATFORM


@dataclass(frozen=True, slots=True)
class Step:
    model: str
    #: "" for the newest ready version (model_version -1), else the number.
    version: str
    #: (step model input, ensemble tensor)
    inputs: tuple[tuple[str, str], ...]
    #: (step model output, ensemble tensor)
    outputs: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return f"'{self.model}'" + (f" version {self.version}" if self.version else "")


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    #: The steps, grouped in levels: a step reads only tensors of earlier levels.
    levels: tuple[tuple[Step, ...], ...]
    #: Ensemble input / output name -> datatype.
    inputs: dict[str, str]
    outputs: dict[str, str]

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(step for level in self.levels for step in level)


def complete(source: repository.ModelSource) -> tuple[mc.ModelConfig, Plan]:
    """An ensemble folder's config, completed as Triton does, and its plan."""
    assert source.config is not None
    config = mc.ModelConfig()
    config.CopyFrom(source.config)
    if config.name and config.name != source.name:
        raise ModelLoadError(
            f"config.pbtxt names the model {config.name!r}, its folder is {source.name!r}"
        )
    config.name = source.name
    if config.backend:
        raise ModelLoadError(f"ensemble '{source.name}': an ensemble has no backend "
                             f"(config.pbtxt sets {config.backend!r})")  # fmt: skip
    if config.max_batch_size < 0:
        raise ModelLoadError(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            if repository.datatype_of(t.data_type) == "INVALID" or not t.dims:
                raise ModelLoadError(f"ensemble '{source.name}' {kind} {t.name!r} needs a "
                                     "data_type and dims")  # fmt: skip
            if any(d == 0 or d < -1 for d in t.dims):
                raise ModelLoadError(f"config.pbtxt {kind} {t.name!r} has invalid dims")
    for out in config.output:
        if out.label_filename:
            repository.safe_file_name(out.label_filename, f"output {out.name!r} label_filename")
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    return config, plan(config)


def plan(config: mc.ModelConfig) -> Plan:
    """The checked step DAG of an ensemble config; ModelLoadError says why not."""
    datatype_of = repository.datatype_of
    name = config.name
    what = f"ensemble '{name}'"
    if not config.input or not config.output:
        raise ModelLoadError(f"{what}: config.pbtxt must list the ensemble's input and output")
    inputs = {t.name: datatype_of(t.data_type) for t in config.input}
    outputs = {t.name: datatype_of(t.data_type) for t in config.output}
    if len(inputs) != len(config.input) or len(outputs) != len(config.output):
        raise ModelLoadError(f"{what}: an input or output is listed twice")
    both = set(inputs) & set(outputs)
    if both:
        raise ModelLoadError(f"{what}: {sorted(both)} is both an input and an output")
    scheduling = config.ensemble_scheduling.step
    if not scheduling:
        raise ModelLoadError(f"{what}: ensemble_scheduling has no step")
    steps: list[Step] = []
    producer: dict[str, int] = {}
    for i, raw in enumerate(scheduling):
        where = f"{what} step {i + 1}"
        if not raw.model_name:
            raise ModelLoadError(f"{where}: model_name is empty")
        if raw.model_name == name:
            raise ModelLoadError(f"{where}: a step cannot run the ensemble itself")
        if raw.model_version < -1 or raw.model_version == 0:
            raise ModelLoadError(f"{where}: model_version must be -1 (newest) or a version "
                                 f"number, got {raw.model_version}")  # fmt: skip
        if not raw.input_map or not raw.output_map:
            raise ModelLoadError(f"{where} ('{raw.model_name}'): input_map and output_map "
                                 "must each map at least one tensor")  # fmt: skip
        step = Step(
            raw.model_name, "" if raw.model_version == -1 else str(raw.model_version),
            tuple(sorted(raw.input_map.items())), tuple(sorted(raw.output_map.items())),
        )  # fmt: skip
        for _, tensor in step.outputs:
            if tensor in inputs:
                raise ModelLoadError(f"{where} ('{step.model}') writes '{tensor}', which is "
                                     "an ensemble input")  # fmt: skip
            if tensor in producer:
                raise ModelLoadError(f"{where} ('{step.model}') writes '{tensor}', which step "
                                     f"{producer[tensor] + 1} writes too")  # fmt: skip
            producer[tensor] = i
        steps.append(step)
    read: set[str] = set()
    graph: dict[int, set[int]] = {}
    for i, step in enumerate(steps):
        graph[i] = set()
        for _, tensor in step.inputs:
            read.add(tensor)
            if tensor in producer:
                graph[i].add(producer[tensor])
            elif tensor not in inputs:
                raise ModelLoadError(
                    f"{what} step {i + 1} ('{step.model}') reads '{tensor}', which is neither "
                    f"an ensemble input ({sorted(inputs)}) nor any step's output"
                )
    unread = sorted(set(inputs) - read)
    if unread:
        raise ModelLoadError(f"{what}: ensemble input(s) {unread} are mapped to no step input")
    missing = sorted(set(outputs) - set(producer))
    if missing:
        raise ModelLoadError(f"{what}: ensemble output(s) {missing} are produced by no step")
    sorter = graphlib.TopologicalSorter(graph)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(f"step {s + 1} ('{steps[s].model}')" for s in exc.args[1])
        raise ModelLoadError(f"{what}: the steps form a cycle: {cycle}") from exc
    levels = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        levels.append(tuple(steps[s] for s in ready))
        sorter.done(*ready)
    return Plan(name, tuple(levels), inputs, outputs)

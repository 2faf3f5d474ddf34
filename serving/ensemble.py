"""Ensembles: Triton's ``platform: "ensemble"`` models, a DAG of steps
that each run another served model, with tensors mapped between them by
``ensemble_scheduling { step [ { model_name, model_version, input_map,
output_map } ] }``.

An ensemble version is a ``LoadedVersion`` like any other, so the service,
the transports, statistics and metrics treat it as a model; what differs is
its scheduler (``EnsembleScheduler``, in the place of a ``DynamicBatcher``):

- at load, the config alone is checked (``serving.ensemble_plan``); a
  failure fails the load with its reason.
- whenever the served set changes (``ReadyTable.rebuild``), ``blocker``
  checks the step models against what serves: each is ready, its input and
  output names exist and their datatypes agree with the tensors mapped to
  them, and no ensemble reaches itself through nested ensembles. While
  something is wrong the ensemble is not ready, with that reason; it comes
  back when the step model does.
- a request runs the steps level by level (steps of one level concurrently),
  each through its step model's own validation and batcher, and is counted
  in that model's statistics and metrics too, as Triton counts them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Callable, Sequence

import numpy as np

from serving._generated import model_config_pb2 as mc
from serving.batch_jobs import BatchResult
from serving.ensemble_plan import PLATFORM, Plan, Step, complete, is_ensemble
from serving.errors import InferenceFailed, ServingError, ShuttingDown, code_name
from serving.recorder import VersionRecorder
from serving.runtime import Runtime, TensorInfo
from serving.tensors import Tensor
from serving.validation import ModelSignature
from serving.versions import LoadedVersion, Lookup, ReadyTable

__all__ = ["PLATFORM", "Plan", "complete", "is_ensemble", "activate", "blocker", "close_first"]

_now = time.perf_counter


def activate(name: str, version: int, plan: Plan, runtime: Runtime,
             config: mc.ModelConfig, signature: ModelSignature, recorder: VersionRecorder,
             output_index: dict[str, int], fingerprint: object,
             table: ReadyTable) -> LoadedVersion:  # fmt: skip
    """The serving version of an ensemble, its steps found through ``table``."""
    scheduler = EnsembleScheduler(plan, signature, table.get)
    return LoadedVersion(name, version, str(version), config, runtime, signature, scheduler,
                         recorder, output_index, fingerprint,
                         functools.partial(blocker, plan))  # fmt: skip


def blocker(plan: Plan, lookup: Lookup) -> str:
    """Why the ensemble cannot serve with the step models serving now ("" if it can)."""
    datatypes = dict(plan.inputs)
    for step in plan.steps:  # in level order: producers before readers
        loaded = lookup(step.model, step.version)
        if loaded is None:
            return f"step model {step.label} is not ready"
        sig = loaded.signature
        for step_input, tensor in step.inputs:
            spec = sig.inputs.get(step_input)
            if spec is None:
                return (f"step model '{step.model}' has no input '{step_input}' "
                        f"(its inputs: {sorted(sig.inputs)})")  # fmt: skip
            if datatypes[tensor] != spec.datatype:
                return (f"step model '{step.model}' input '{step_input}' is {spec.datatype}, "
                        f"but '{tensor}' is {datatypes[tensor]}")  # fmt: skip
        unmapped = sorted(sig.required - {s for s, _ in step.inputs})
        if unmapped:
            return f"step model '{step.model}' input(s) {unmapped} are not in its input_map"
        for step_output, tensor in step.outputs:
            out = sig.outputs.get(step_output)
            if out is None:
                return (f"step model '{step.model}' has no output '{step_output}' "
                        f"(its outputs: {list(sig.output_names)})")  # fmt: skip
            datatypes[tensor] = out.datatype
        nested = loaded.batcher
        if isinstance(nested, EnsembleScheduler) and plan.name in nested.reaches(lookup):
            return f"step model '{step.model}' is an ensemble that runs '{plan.name}' again"
    for name, datatype in plan.outputs.items():
        if datatypes[name] != datatype:
            return f"ensemble output '{name}' is {datatype}, its step produces {datatypes[name]}"
    return ""


class EnsembleRuntime:
    """Stands in for a runtime: an ensemble has no session of its own."""

    provider = PLATFORM
    inputs: Sequence[TensorInfo] = ()
    outputs: Sequence[TensorInfo] = ()
    defaults: Sequence[TensorInfo] = ()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise InferenceFailed("an ensemble runs through its steps, not a session")


class EnsembleScheduler:
    """An ensemble version's stand-in for a batcher: ``submit`` starts one
    task that runs the steps through their models' batchers."""

    def __init__(self, plan: Plan, signature: ModelSignature,
                 getter: Callable[[str, str], LoadedVersion]) -> None:  # fmt: skip
        """``getter`` finds a step's serving version or raises the request path's error."""
        self.plan = plan
        self._signature = signature
        self._get = getter
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        return self.plan.name

    def reaches(self, lookup: Lookup, seen: frozenset[str] = frozenset()) -> set[str]:
        """Every model this ensemble runs, through nested ensembles too."""
        found: set[str] = set()
        for step in self.plan.steps:
            found.add(step.model)
            loaded = lookup(step.model, step.version)
            if loaded is not None and isinstance(loaded.batcher, EnsembleScheduler):
                if step.model not in seen:
                    found |= loaded.batcher.reaches(lookup, seen | {self.name})
        return found

    def submit(
        self, feeds: dict[str, np.ndarray], rows: int, deadline: float | None = None, *_: int
    ) -> asyncio.Future[BatchResult]:
        """The request's scheduling arguments after ``deadline`` (priority,
        timeout, held bytes: see ``versions.Submit``) are ignored: each step is
        queued at its own model's default level, and bounded by its own queue."""
        if self._closing:
            raise ShuttingDown(f"ensemble '{self.name}' is shutting down; retry on another replica")
        # Every step's version is taken now, so one request sees one set of
        # versions, and one whose step is not ready is refused before it is accepted.
        versions: dict[Step, LoadedVersion] = {}
        for step in self.plan.steps:
            try:
                versions[step] = self._get(step.model, step.version)
            except ServingError as exc:
                raise type(exc)(self._where(step, exc)) from exc
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        tensors = {
            name: Tensor(name, self.plan.inputs[name], array.shape, array)
            for name, array in feeds.items()
        }
        task = asyncio.ensure_future(self._run(versions, tensors, rows, deadline, future))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)
        return future

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests; with ``drain``, let those running finish."""
        self._closing = True
        if drain:
            await self._idle.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _where(self, step: Step, exc: ServingError) -> str:
        return f"ensemble '{self.name}' step {step.label}: {exc.message}"

    async def _run(self, versions: dict[Step, LoadedVersion], tensors: dict[str, Tensor],
                   rows: int, deadline: float | None,
                   future: asyncio.Future[BatchResult]) -> None:  # fmt: skip
        timings = [0.0, 0.0]
        try:
            for level in self.plan.levels:
                results = await asyncio.gather(
                    *(
                        self._step(step, versions[step], tensors, deadline, timings)
                        for step in level
                    )
                )
                for produced in results:
                    tensors.update(produced)
            arrays = [tensors[name].data for name in self._signature.output_names]
            result = BatchResult(arrays, timings[0], timings[1], rows)
        except asyncio.CancelledError:
            if not future.done():
                future.set_exception(ShuttingDown(f"ensemble '{self.name}' was unloaded"))
            raise
        except BaseException as exc:  # every failure goes to the request
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def _step(self, step: Step, loaded: LoadedVersion, tensors: dict[str, Tensor],
                    deadline: float | None, timings: list[float]) -> dict[str, Tensor]:  # fmt: skip
        try:
            return await self._run_step(step, loaded, tensors, deadline, timings)
        except ServingError as exc:  # the same status, saying which step failed
            raise type(exc)(self._where(step, exc)) from exc

    async def _run_step(
        self,
        step: Step,
        loaded: LoadedVersion,
        tensors: dict[str, Tensor],
        deadline: float | None,
        timings: list[float],
    ) -> dict[str, Tensor]:
        """One step through its model's validation and batcher, counted in its books."""
        started = _now()
        inputs = []
        for step_input, tensor_name in step.inputs:
            t = tensors[tensor_name]
            inputs.append(Tensor(step_input, t.datatype, t.data.shape, t.data))
        recorder = loaded.recorder
        try:
            feeds, step_rows = loaded.signature.validate(inputs)
            # the step model's default level, no timeout of its own, no held bytes
            future = loaded.batcher.submit(feeds, step_rows, deadline, 0, 0, 0)
        except ServingError as exc:
            recorder.failure(code_name(exc))
            raise
        recorder.started()
        prep = _now() - started
        try:
            result = await future
        except BaseException as exc:
            recorder.failure(code_name(exc), _now() - started)
            raise
        timings[0] += result.queue_seconds
        timings[1] += result.compute_seconds
        recorder.success(step_rows, _now() - started, prep, result.queue_seconds,
                         result.compute_seconds, 0.0)  # fmt: skip
        specs = loaded.signature.outputs
        produced = {}
        for step_output, tensor_name in step.outputs:
            array = result.outputs[loaded.output_index[step_output]]
            produced[tensor_name] = Tensor(tensor_name, specs[step_output].datatype,
                                           array.shape, array)  # fmt: skip
        return produced


async def close_first(versions: Sequence[LoadedVersion], timeout: float | None) -> float | None:
    """Drain the ensembles among ``versions`` before the models they run, whose
    batchers refuse new steps once closing. Waits at most ``timeout`` seconds
    and returns what is left of it, for the models' own drain."""
    closes = [
        asyncio.ensure_future(v.batcher.close(drain=True))
        for v in versions
        if isinstance(v.batcher, EnsembleScheduler)
    ]
    if not closes:
        return timeout
    started = _now()
    await asyncio.wait(closes, timeout=timeout)
    return None if timeout is None else max(0.0, timeout - (_now() - started))

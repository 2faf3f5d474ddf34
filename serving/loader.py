"""Builds a serving model version: runtime session, completed config,
signature, warm-up (``serving.warmup``), queue setup, batcher and recorder.

``prepare`` is the slow part (onnxruntime session, warm-up) and runs in a
worker thread; ``activate`` binds the batcher and the recorder on the event
loop. The runtime comes from an injectable factory, so the manager's reload
logic is tested with a fake one (tests/unit/serving/test_manager.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from serving import ensemble, repository, response_cache
from serving._generated import model_config_pb2 as mc
from serving.batcher import DynamicBatcher
from serving.metrics import Metrics
from serving.queues import QueueSetup, setup_of
from serving.recorder import VersionRecorder
from serving.runtime import OnnxRuntime, Runtime
from serving.settings import ServingSettings
from serving.validation import ModelSignature, OutputSpec, TensorSpec
from serving.versions import LoadedVersion, ReadyTable
from serving.warmup import warm_up

logger = logging.getLogger(__name__)

#: (model file, settings, label for logs) -> a loaded runtime.
RuntimeFactory = Callable[[Path, ServingSettings, str], Runtime]


def onnx_runtime(path: Path, settings: ServingSettings, label: str) -> Runtime:
    return OnnxRuntime(
        path, device=settings.device, intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads, label=label,
    )  # fmt: skip


@dataclass(eq=False)
class Prepared:
    """A version whose runtime is loaded and warm, not yet serving."""

    runtime: Runtime
    config: mc.ModelConfig
    signature: ModelSignature
    output_index: dict[str, int]
    queue: QueueSetup
    #: CPU seconds of the last warm-up run.
    compute_estimate: float
    #: An ensemble's checked steps (None: a model with a session of its own).
    plan: ensemble.Plan | None = None


class VersionLoader:
    def __init__(
        self,
        settings: ServingSettings,
        metrics: Metrics,
        executor: concurrent.futures.Executor,
        runtime_factory: RuntimeFactory = onnx_runtime,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.runtime_factory = runtime_factory
        #: What serves now, for ensembles' steps (set by the manager).
        self.steps: ReadyTable | None = None

    def prepare(self, source: repository.ModelSource, path: Path, label: str) -> Prepared:
        """The slow part of a load; blocking, for a worker thread."""
        if ensemble.is_ensemble(source.config):
            config, plan = ensemble.complete(source)
            index = {o.name: i for i, o in enumerate(config.output)}
            queue = setup_of(None, self.settings.max_queue_size)
            return Prepared(ensemble.EnsembleRuntime(), config, _signature(source, config),
                            index, queue, 0.0, plan)  # fmt: skip
        runtime = self.runtime_factory(path, self.settings, label)
        config = repository.complete_config(
            source, runtime.inputs, runtime.outputs, runtime.defaults
        )
        config.parameters["execution_provider"].string_value = runtime.provider
        kind = mc.ModelInstanceGroup.KIND_GPU if "CUDA" in runtime.provider else (
            mc.ModelInstanceGroup.KIND_CPU)  # fmt: skip
        for group in config.instance_group:
            group.kind = kind
        signature = _signature(source, config, frozenset(info.name for info in runtime.inputs))
        graph_index = {info.name: i for i, info in enumerate(runtime.outputs)}
        index = {o.name: graph_index[o.name] for o in config.output}
        db = config.dynamic_batching if config.HasField("dynamic_batching") else None
        queue = setup_of(db, self.settings.max_queue_size)
        inputs = list(signature.inputs.values())
        estimate = warm_up(runtime, config, inputs, source.path, label)
        return Prepared(runtime, config, signature, index, queue, estimate)

    def activate(
        self, name: str, version: int, prepared: Prepared, fingerprint: object
    ) -> LoadedVersion:
        """The serving version: its batcher and recorder, on the event loop."""
        config = prepared.config
        version_str = str(version)
        token = response_cache.token_for(config, self.settings.cache_bytes, f"{name}:{version}",
                                         ensemble=prepared.plan is not None)  # fmt: skip
        recorder = VersionRecorder(self.metrics, name, version_str, cached=token > 0)
        if prepared.plan is not None:
            assert self.steps is not None, "the manager binds the table before any load"
            return ensemble.activate(name, version, prepared.plan, prepared.runtime, config,
                                     prepared.signature, recorder, prepared.output_index,
                                     fingerprint, self.steps)  # fmt: skip
        db = config.dynamic_batching if config.HasField("dynamic_batching") else None
        workers = sum(max(g.count, 1) for g in config.instance_group) or 1
        batcher = DynamicBatcher(
            prepared.runtime.run,
            max_batch_size=config.max_batch_size,
            batching=db is not None,
            max_queue_delay=(db.max_queue_delay_microseconds / 1e6) if db is not None else 0.0,
            preferred_batch_sizes=list(db.preferred_batch_size) if db is not None else (),
            queue=prepared.queue,
            compute_estimate=prepared.compute_estimate,
            max_queue_bytes=self.settings.max_queue_bytes,
            workers=max(workers, self.settings.inference_threads),
            executor=self.executor,
            on_batch=recorder.batch,
            name=f"{name}:{version}",
        )
        self.metrics.watch_queue(name, version_str, batcher.depths)
        return LoadedVersion(name, version, version_str, config, prepared.runtime,
                             prepared.signature, batcher, recorder, prepared.output_index,
                             fingerprint, cache_token=token)  # fmt: skip


def _signature(
    source: repository.ModelSource,
    config: mc.ModelConfig,
    graph_inputs: frozenset[str] | None = None,
) -> ModelSignature:
    """What validation needs of a completed config (labels read from the folder)."""
    inputs = [
        TensorSpec(i.name, repository.datatype_of(i.data_type), tuple(i.dims), i.optional)
        for i in config.input
    ]
    outputs = []
    for o in config.output:
        labels = (
            tuple(repository.read_labels(source, o.label_filename))
            if o.label_filename else None
        )  # fmt: skip
        outputs.append(OutputSpec(o.name, repository.datatype_of(o.data_type),
                                  tuple(o.dims), labels))  # fmt: skip
    return ModelSignature(
        source.name, config.max_batch_size, inputs, outputs, graph_inputs=graph_inputs
    )

"""The Ray Data runner: the sharded stages (discover, select, label) on a Ray cluster.

Each stage becomes a Ray dataset of shard indices mapped by an actor pool (``map_batches`` with a callable
class): one actor per GPU when the build runs on CUDA, one per CPU otherwise. An actor builds its own
:class:`~multilabel_imagenet.builder.pipeline.Build` once (models loaded once per actor) and writes each shard
file exactly as the local runner does, so both runners give the same dataset. Training the labeler and
packaging run on the driver. Connects to ``RAY_ADDRESS`` when set, else starts a local Ray instance.
"""

from __future__ import annotations

import os

from multilabel_imagenet.builder.pipeline import Build
from multilabel_imagenet.builder.settings import BuildConfig, BuildInputs


class ShardWorker:
    """A Ray actor that computes and writes shards of one stage."""

    def __init__(self, inputs: BuildInputs, config: BuildConfig, stage: str, shard: str | None):
        self.build = Build(inputs, config, shard=shard, progress=False)
        self.stage = stage

    def __call__(self, batch: dict) -> dict:
        for index in batch["shard"]:
            self.build.write_shard(self.stage, int(index))
        return {"shard": batch["shard"]}


def _run_stage(build: Build, stage: str, shard: str | None) -> None:
    import ray

    todo = build.todo(build.stage(stage))
    if not todo:
        return
    resources = ray.cluster_resources()
    on_gpu = build.device.type == "cuda"
    slots = int(resources.get("GPU" if on_gpu else "CPU", 1)) or 1
    dataset = ray.data.from_items([{"shard": i} for i in todo])
    done = dataset.map_batches(
        ShardWorker,
        fn_constructor_args=(build.inputs, build.config, stage, shard),
        batch_size=1,
        concurrency=min(slots, len(todo)),
        num_gpus=1 if on_gpu else 0,
        num_cpus=0 if on_gpu else 1,
    )
    written = sorted(int(row["shard"]) for row in done.iter_rows())
    if written != sorted(todo):
        raise RuntimeError(f"Ray wrote shards {written}, expected {sorted(todo)}")


def run(build: Build, stages, shard: str | None = None) -> None:
    """Run ``stages`` of ``build`` with the sharded ones on Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    build.run(stages, sharded=lambda name: _run_stage(build, name, shard))

"""``build --retry-errors``: the images a build recorded as failed are tried again, and whatever depended on
them is recomputed.

A shard of ``discover`` or ``label`` holding a recorded failure is computed again. Where its rows come out the
same (the image is still bad), nothing else changes. Where they differ, the later stages' shards of that index
are recomputed by the stages that follow; on the train split a changed ``select`` shard also changes the labeler's
training samples, so the trained labeler and every ``label`` shard are removed and made again (a clean build with
those images readable would have trained on them). ``select`` failures (a missing ReLabel map) are tried again
too. Images that failed only while the labeler trained (``labeler/errors.jsonl``) are not: that would mean
training it again; delete ``labeler/`` for that.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from multilabel_imagenet.builder import shards
from multilabel_imagenet.builder.pipeline import ROW_COUNTERS, Build
from multilabel_imagenet.builder.settings import CHECKPOINT

logger = logging.getLogger(__name__)


@dataclass
class Retried:
    """What a retry pass did: shards computed again, and those of them whose rows changed, per stage."""

    computed: dict[str, list[int]] = field(default_factory=dict)
    changed: dict[str, list[int]] = field(default_factory=dict)
    labeler_reset: bool = False

    def summary(self) -> str:
        parts = [f"{name}: {len(idx)} shards tried again, {len(self.changed.get(name, []))} changed"
                 for name, idx in self.computed.items()]  # fmt: skip
        if self.labeler_reset:
            parts.append("the labeler's training samples changed: it is trained again and every shard relabelled")
        return "retry errors: " + ("; ".join(parts) or "no recorded failures in this worker's shards")


def _has_error(build: Build, name: str, index: int) -> bool:
    """From the shard's counters, not its rows: a retry pass over 1.28M images reads only the shards it redoes."""
    stage = build.stage(name)
    return stage.is_complete(index) and stage.counts(index, ROW_COUNTERS[name]).get("errors", 0) > 0


def _recompute(build: Build, name: str, index: int, done: Retried) -> bool:
    """Compute shard ``index`` of ``name`` again; write it if its rows differ. Returns whether they did."""
    stage = build.stage(name)
    with stage.lock(index):
        old = stage.read(index)
        new = build.shard_rows(name, index)
        done.computed.setdefault(name, []).append(index)
        if new == old:
            return False
        stage.write(index, new, ROW_COUNTERS[name])
    done.changed.setdefault(name, []).append(index)
    logger.info("%s shard %d: recorded failures tried again, rows changed", name, index)
    return True


def retry_errors(build: Build) -> Retried:
    """Try again the recorded failures of this worker's complete shards (see the module docstring)."""
    done, labeler_stale = Retried(), False
    train = build.inputs.split == "train" and build.inputs.labeler_checkpoint is None
    for i in shards.mine(len(build.shards), build.worker, build.workers):
        discover_changed = _has_error(build, "discover", i) and _recompute(build, "discover", i, done)
        select = build.stage("select")
        if train and select.is_complete(i) and (discover_changed or _has_error(build, "select", i)):
            labeler_stale |= _recompute(build, "select", i, done)
        if discover_changed:  # the label stage that follows computes it again
            build.stage("label").path(i).unlink(missing_ok=True)
    if labeler_stale:
        shutil.rmtree(build.inputs.work_dir / "labeler", ignore_errors=True)
        shutil.rmtree(build.stage("label").folder, ignore_errors=True)
        done.labeler_reset = True
    elif Path(build.inputs.labeler_checkpoint or build.inputs.work_dir / CHECKPOINT).is_file():
        for i in shards.mine(len(build.shards), build.worker, build.workers):
            if _has_error(build, "label", i):
                _recompute(build, "label", i, done)
    return done

"""Training checkpoints as one safetensors file: tensors in the file, everything else as JSON metadata (no pickle).

Tensors: ``model.<key>`` (the state dict), ``optimizer.<param index>.<key>`` (AdamW's moments and step),
``rng.<rank>.torch`` and ``rng.<rank>.cuda.<device>`` (generator states), ``rng.<rank>.numpy`` (MT19937 keys).
Metadata (each a JSON string): ``format``, ``epoch`` (epochs completed), ``config`` (what the run was started
with), ``optimizer`` (param groups and non-tensor state), ``scheduler``, ``scaler`` (fp16 AMP only), ``rng`` (the
rest of Python's and numpy's generator states, per rank), ``history`` (per-epoch log). Files are written to a
temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "multilabel-imagenet-train/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file."""


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states: (tensors, JSON-able rest) for torch (CPU and CUDA), numpy and Python."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    rest = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), gauss_next]}
    return tensors, rest


def set_rng_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = rest["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rest["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    config: Mapping[str, Any],
    rng: Sequence[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    history: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the whole training state after ``epoch`` completed epochs. ``rng``: one :func:`rng_state` per rank
    (default: this process's only)."""
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_parts(optimizer)
    tensors.update(opt_tensors)
    rng = [rng_state()] if rng is None else list(rng)
    for rank, (rng_tensors, _) in enumerate(rng):
        tensors.update({f"rng.{rank}.{k}": v for k, v in rng_tensors.items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "epoch": json.dumps(int(epoch)),
        "config": json.dumps(config, sort_keys=True),
        "optimizer": json.dumps(opt_meta),
        "scheduler": json.dumps(scheduler.state_dict()),
        "rng": json.dumps([rest for _, rest in rng]),
        "history": json.dumps(list(history)),
    }
    if scaler is not None and scaler.is_enabled():
        metadata["scaler"] = json.dumps(scaler.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


@dataclass
class Checkpoint:
    """A checkpoint read by :func:`read_checkpoint`; :meth:`restore` puts it into a run's objects."""

    path: Path
    epoch: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    rng: list[tuple[dict[str, torch.Tensor], dict[str, Any]]]
    history: list[dict[str, Any]] = field(default_factory=list)

    def restore(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler | None = None,
        rank: int | None = 0,
    ) -> None:
        """Load the states into ``model``, ``optimizer``, ``scheduler`` and ``scaler``; with ``rank``, also set
        this process's generators to that rank's saved states (None: leave them)."""
        try:
            model.load_state_dict(self.model)
            optimizer.load_state_dict(self.optimizer)
            scheduler.load_state_dict(self.scheduler)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{self.path}: does not fit this run: {err}") from None
        if scaler is not None and scaler.is_enabled() and self.scaler is not None:
            scaler.load_state_dict(self.scaler)
        if rank is not None:
            set_rng_state(*self.rng[rank])


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a file written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as err:  # safetensors raises its own SafetensorError on a damaged file
        raise CheckpointError(f"{path}: cannot be read as safetensors ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this package (format {meta.get('format')!r})")
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    opt = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    rest = json.loads(meta["rng"])
    rng = []
    for rank, extra in enumerate(rest):
        prefix = f"rng.{rank}."
        rng.append(({k.removeprefix(prefix): v.cpu() for k, v in tensors.items() if k.startswith(prefix)}, extra))
    return Checkpoint(
        path=path,
        epoch=json.loads(meta["epoch"]),
        config=json.loads(meta["config"]),
        model=model,
        optimizer=_optimizer_state(opt, json.loads(meta["optimizer"])),
        scheduler=json.loads(meta["scheduler"]),
        scaler=json.loads(meta["scaler"]) if "scaler" in meta else None,
        rng=rng,
        history=json.loads(meta.get("history", "[]")),
    )


def save_weights(path: str | Path, model: torch.nn.Module, metadata: Mapping[str, str] | None = None) -> Path:
    """The model's state dict alone as safetensors (what ``evaluate --model timm:NAME --checkpoint FILE`` and
    ``timm.create_model(NAME, pretrained_cfg_overlay={"file": FILE})`` read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=dict(metadata or {}))
    os.replace(partial, path)
    return path

"""Loading the published dataset: a local folder or a pinned Hub revision, optionally joined to ImageNet.

:func:`load` resolves (:func:`resolve`) a local dataset folder (checked first by :func:`.writer.check_folder`) or
a Hub repo id at a pinned ``revision``, and with ``imagenet_root`` adds an ``image`` column (``datasets.Image``,
see :func:`add_images`). Targets for training come from :mod:`.training`.

A pinned revision holds without the Hub too. ``datasets`` itself, when it cannot reach the Hub (``HF_HUB_OFFLINE=1``
or no network), falls back to the most recently written cached copy of the repo whatever revision was asked for,
with only a warning. :func:`load` instead resolves the revision to a commit first (on the Hub, else from the
huggingface_hub cache's refs) and, without the Hub, reads exactly that commit's cached copy; a revision the cache
never saw raises :class:`RevisionError`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from multilabel_imagenet.dataset import schema, writer

SPLIT_DIRS = {"train": "train", "validation": "val"}
"""Default folder of each split under an ImageNet root (``path`` is relative to it)."""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class RevisionError(LookupError):
    """A pinned revision cannot be read: the Hub has no such revision, or the Hub cannot be reached and the local
    cache does not hold it (the message says which and what the cache does hold)."""


@dataclass(frozen=True)
class Source:
    """Where :func:`load` reads from: a local folder, or a Hub dataset repo at a revision."""

    location: str
    revision: str | None
    local: bool


def resolve(source: str | Path, revision: str | None = None) -> Source:
    """A local folder if ``source`` is an existing directory, else a Hub repo id that must come with ``revision``
    (a tag such as ``v1.0.0``, a commit, or ``main`` to opt out of pinning)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"{path}: a local folder has no revisions; drop revision={revision!r}")
        return Source(str(path.resolve()), None, True)
    if str(source).count("/") != 1 or str(source).startswith((".", "/")):
        raise ValueError(f"{source!r} is neither an existing dataset folder nor a Hub repo id ORG/NAME")
    if revision is None:
        raise ValueError(
            f"{source}: pass revision= (a release tag such as 'v1.0.0', or 'main' to opt out of pinning) so that "
            "training reads the same labels every time"
        )
    return Source(str(source), revision, False)


def _offline() -> bool:
    import huggingface_hub

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


@functools.cache
def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the Hub could not be reached" under huggingface_hub 0.x (requests) and 1.x+ (httpx)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled is a ConnectionError
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(name).TransportError)
    with contextlib.suppress(ImportError):
        requests = importlib.import_module("requests")
        errors += [requests.ConnectionError, requests.Timeout]
    return tuple(errors)


def cached_refs(repo_id: str) -> dict[str, str]:
    """The revisions (tags, branches) of the Hub dataset ``repo_id`` that the huggingface_hub cache has resolved,
    each with its commit: what :func:`load` can pin to without the Hub."""
    import huggingface_hub
    from huggingface_hub.file_download import repo_folder_name

    root = Path(huggingface_hub.constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="dataset")
    refs = root / "refs"
    if not refs.is_dir():
        return {}
    return {p.relative_to(refs).as_posix(): p.read_text().strip() for p in sorted(refs.rglob("*")) if p.is_file()}


def _cached_configs(repo_id: str, config: str, cache_dir: str | Path | None) -> dict[str, Path]:
    """commit -> the datasets cache folder of ``config`` of the Hub dataset ``repo_id`` prepared at that commit."""
    from datasets.naming import camelcase_to_snakecase

    namespace, name = repo_id.split("/")
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser()
    found = {}
    for path in sorted((root / f"{namespace}___{camelcase_to_snakecase(name)}" / config).glob("*/*")):
        if _COMMIT.match(path.name) and (path / "dataset_info.json").is_file():
            found[path.name] = path
    return found


def _describe_cache(repo_id: str, config: str, cache_dir: str | Path | None) -> str:
    refs = cached_refs(repo_id)
    prepared = _cached_configs(repo_id, config, cache_dir)
    held = [f"{ref} ({commit[:12]})" for ref, commit in refs.items() if commit in prepared]
    return f"the cache holds {', '.join(held)}" if held else f"the cache holds no revision of {repo_id} {config}"


def pin_revision(repo_id: str, revision: str, config: str, cache_dir: str | Path | None = None) -> tuple[str, bool]:
    """``(commit, online)``: the commit ``revision`` names, from the Hub when it answers (``online``), else from the
    huggingface_hub cache's refs. Raises :class:`RevisionError` when the Hub has no such revision, or cannot be
    reached and the cache never resolved it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    why = "HF_HUB_OFFLINE is set"
    if not _offline():
        try:
            return HfApi().dataset_info(repo_id, revision=revision).sha, True
        except RevisionNotFoundError:
            raise RevisionError(f"{repo_id} has no revision {revision!r} on the Hub") from None
        except network_errors() as err:
            why = f"the Hub cannot be reached ({type(err).__name__}: {err})"
    commit = revision if _COMMIT.match(revision) else cached_refs(repo_id).get(revision)
    if commit is None:
        raise RevisionError(
            f"{repo_id}: revision {revision!r} is not in the local cache and {why}, so it cannot be looked up "
            f"({_describe_cache(repo_id, config, cache_dir)}); load it once with the Hub reachable, or pin a "
            "cached revision. A pinned load never falls back to another cached release."
        )
    return commit, False


def _load_cached(
    repo_id: str, config: str, split: str, revision: str, commit: str, streaming: bool, cache_dir: str | Path | None
) -> datasets.Dataset | datasets.IterableDataset:
    """``config``/``split`` of ``repo_id`` at ``commit`` from the datasets cache, without the Hub."""
    from datasets.packaged_modules.cache.cache import Cache

    prepared = _cached_configs(repo_id, config, cache_dir).get(commit)
    if prepared is None:
        raise RevisionError(
            f"{repo_id}: revision {revision!r} (commit {commit[:12]}) of config {config!r} is not in the datasets "
            f"cache and the Hub cannot be reached ({_describe_cache(repo_id, config, cache_dir)}); load it once "
            "with the Hub reachable"
        )
    builder = Cache(
        cache_dir=str(prepared.parents[3]),
        dataset_name=repo_id.split("/")[1],
        repo_id=repo_id,
        config_name=config,
        version=prepared.parent.name,
        hash=commit,
    )
    if split not in (builder.info.splits or {}):
        raise RevisionError(f"{repo_id}: the cached copy of {revision!r} ({prepared}) has no {config} {split} split")
    return builder.as_streaming_dataset(split=split) if streaming else builder.as_dataset(split=split)


def _split_root(imagenet_root: str | Path, split: str, split_dirs: Mapping[str, str] | None) -> Path:
    dirs = {**SPLIT_DIRS, **(split_dirs or {})}
    root = Path(imagenet_root) / dirs[split]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no {split} images here (set split_dirs={{{split!r}: ...}} if elsewhere)")
    return root


def add_images(
    ds: datasets.Dataset | datasets.IterableDataset,
    split: str,
    imagenet_root: str | Path,
    split_dirs: Mapping[str, str] | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """``ds`` with an ``image`` column (``datasets.Image``) pointing at ``<root>/<split dir>/<path>``."""
    if "path" not in ds.column_names:
        raise ValueError("only the labels config has a `path` column to join images on")
    root = _split_root(imagenet_root, split, split_dirs)
    first = next(iter(ds.select_columns(["path"])))["path"] if isinstance(ds, datasets.IterableDataset) else None
    if first is None and len(ds):
        first = ds[0]["path"]
    if first is not None and not (root / first).is_file():
        raise FileNotFoundError(f"{root / first}: first image of the {split} split not found under {root}")
    features = datasets.Features({**ds.features, "image": datasets.Image()})
    ds = ds.map(
        lambda batch: {"image": [{"path": str(root / p), "bytes": None} for p in batch["path"]]},
        batched=True,
        features=features,
    )
    # A streamed map's output is not decoded unless asked (datasets 5).
    return ds.decode() if isinstance(ds, datasets.IterableDataset) else ds


def load(
    source: str | Path,
    config: str = schema.DEFAULT_CONFIG,
    split: str = "train",
    *,
    revision: str | None = None,
    imagenet_root: str | Path | None = None,
    split_dirs: Mapping[str, str] | None = None,
    streaming: bool = False,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """One config and split of the dataset, from a local folder or a Hub repo id at ``revision``.

    With ``imagenet_root`` (folders ``train/`` and ``val/`` by default, see ``split_dirs``), the ``labels`` config
    gains an ``image`` column. Build targets with :class:`.training.TrainingDataset`. Without the Hub, a Hub
    ``revision`` is read from the cache exactly or raises :class:`RevisionError` (see the module docstring).
    """
    schema.features(config)
    if split not in schema.SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are {', '.join(schema.SPLITS)}")
    where = resolve(source, revision)
    commit, online = None, True
    if where.local:
        writer.check_folder(where.location, config, split)
    else:
        commit, online = pin_revision(where.location, where.revision, config, cache_dir)
    if online:
        ds = datasets.load_dataset(
            where.location,
            config,
            split=split,
            revision=where.revision,
            streaming=streaming,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
        files = [] if commit is None or streaming else ds.cache_files
        cached = Path(files[0]["filename"]).parent.name if files else None
        if cached is not None and _COMMIT.match(cached) and cached != commit:  # datasets lost the Hub, fell back
            raise RevisionError(
                f"{where.location}: asked for {where.revision!r} (commit {commit[:12]}), datasets returned the cached "
                f"copy {files[0]['filename']}; rerun with the Hub reachable"
            )
    else:
        ds = _load_cached(where.location, config, split, where.revision, commit, streaming, cache_dir)
    if imagenet_root is not None:
        ds = add_images(ds, split, imagenet_root, split_dirs)
    return ds

"""ImageNet-1k classes: index <-> WordNet id <-> human-readable name.

Index 0..999 is the position of the wnid in the lexicographically sorted list of the 1000 ILSVRC-2012 wnids,
the order used by every ImageNet-1k model and benchmark. The metadata comes from the files timm installs
(``timm/data/_info``, read without importing timm), so nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

NUM_CLASSES = 1000


def timm_info_file(filename: str) -> Path:
    """A file of timm's ``timm/data/_info`` folder, found without importing timm (which takes seconds)."""
    spec = importlib.util.find_spec("timm")
    locations = [] if spec is None else list(spec.submodule_search_locations or [])
    path = next((p for p in (Path(loc, "data", "_info", filename) for loc in locations) if p.is_file()), None)
    if path is None:
        raise RuntimeError(
            f"ImageNet class metadata {filename!r} not found in the installed timm (timm/data/_info); "
            "install or reinstall timm>=1.0.20"
        )
    return path


def _read_info(filename: str) -> list[str]:
    text = timm_info_file(filename).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@functools.cache
def wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted)."""
    ids = tuple(line.strip() for line in _read_info("imagenet_synsets.txt"))
    if len(ids) != NUM_CLASSES or len(set(ids)) != NUM_CLASSES:
        raise RuntimeError(f"timm's imagenet_synsets.txt holds {len(ids)} wnids, expected {NUM_CLASSES} unique")
    if list(ids) != sorted(ids):
        raise RuntimeError("timm's imagenet_synsets.txt is not in sorted-wnid order")
    return ids


@functools.cache
def _lemmas() -> dict[str, tuple[str, ...]]:
    wanted = set(wnids())
    out: dict[str, tuple[str, ...]] = {}
    for line in _read_info("imagenet_synset_to_lemma.txt"):
        wnid, _, lemmas = line.partition("\t")
        if wnid in wanted:
            out[wnid] = tuple(s.strip() for s in lemmas.split(","))
    missing = wanted - out.keys()
    if missing:
        raise RuntimeError(f"timm's lemma file lacks {len(missing)} ImageNet-1k wnids, e.g. {sorted(missing)[:3]}")
    return out


def synonyms(index: int) -> tuple[str, ...]:
    """All WordNet lemmas of class ``index`` (e.g. ``('tench', 'Tinca tinca')``)."""
    return _lemmas()[wnid_of(index)]


@functools.cache
def names() -> tuple[str, ...]:
    """Human-readable name of every class: its first WordNet lemma (as timm and torchvision show them).

    Two pairs of classes share a first lemma ("crane": bird and machine; "maillot"): use
    :func:`unique_names` where names must be distinct.
    """
    lemmas = _lemmas()
    return tuple(lemmas[w][0] for w in wnids())


@functools.cache
def unique_names() -> tuple[str, ...]:
    """Like :func:`names`, with the wnid appended to each name that two classes share (``crane (n02012849)``)."""
    base = names()
    counts: dict[str, int] = {}
    for name in base:
        counts[name] = counts.get(name, 0) + 1
    return tuple(n if counts[n] == 1 else f"{n} ({w})" for n, w in zip(base, wnids(), strict=True))


@functools.cache
def _index_by_wnid() -> dict[str, int]:
    return {w: i for i, w in enumerate(wnids())}


def wnid_of(index: int) -> str:
    """The wnid of class ``index``."""
    return wnids()[check_index(index)]


def name_of(index: int) -> str:
    """The human-readable name of class ``index``."""
    return names()[check_index(index)]


def index_of(wnid: str) -> int:
    """The class index of ``wnid``; raises ``KeyError`` naming the wnid if it is not an ImageNet-1k class."""
    try:
        return _index_by_wnid()[wnid]
    except KeyError:
        raise KeyError(f"{wnid!r} is not an ImageNet-1k wnid (expected e.g. 'n01440764')") from None


def check_index(index: int) -> int:
    """Return ``index`` as an int if it is a valid class index, else raise ``IndexError``."""
    if isinstance(index, bool) or int(index) != index or not 0 <= int(index) < NUM_CLASSES:
        raise IndexError(f"class index {index!r} is outside 0..{NUM_CLASSES - 1}")
    return int(index)


def lookup(query: str) -> list[int]:
    """Class indices matching ``query``: an index, a wnid, or a case-insensitive substring of a lemma."""
    query = query.strip()
    if query.isdigit():
        return [check_index(int(query))]
    if query in _index_by_wnid():
        return [_index_by_wnid()[query]]
    needle = query.lower()
    return [i for i in range(NUM_CLASSES) if any(needle in s.lower() for s in synonyms(i))]

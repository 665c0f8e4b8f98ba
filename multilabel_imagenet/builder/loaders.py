"""Images into the device stages: decoding and resizing in DataLoader workers, then discover and label per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from multilabel_imagenet import images
from multilabel_imagenet.builder import backbones, labeler, maskcut
from multilabel_imagenet.builder.labeler import LabelerConfig


@dataclass
class ResizedBatch:
    """Decoded images resized to every input size of a MaskCut ensemble (one decode serves all of them)."""

    indices: list[int]  # positions in the records of the images that decoded
    sizes: list[tuple[int, int]]  # their original (height, width)
    resized: dict[int, torch.Tensor]  # input size S -> (len(indices), S, S, 3) uint8
    errors: list[tuple[int, str]]  # (position, reason) of those that did not
    unreadable: list[images.ImageReadError]  # reads the file system failed: the batch cannot be finished

    def pin_memory(self) -> ResizedBatch:
        """Page-locked copies, so the host-to-GPU copies run asynchronously (DataLoader's pin_memory)."""
        return replace(self, resized={k: v.pin_memory() for k, v in self.resized.items()})


class _Resized(torch.utils.data.Dataset):
    """Decodes records in DataLoader workers and resizes each image to every input size; a bad image becomes an
    error string, a failed read (:class:`~multilabel_imagenet.images.ImageReadError`) a value raised in the
    main process, never an exception in a worker."""

    def __init__(self, records: Sequence[images.ImageRecord], input_sizes: Sequence[int]):
        self.records, self.input_sizes = records, input_sizes

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            image = images.decode_image(self.records[i].full_path)
        except images.ImageDecodeError as err:
            return i, None, None, err.reason
        except images.ImageReadError as err:
            return i, None, None, err
        return i, (image.height, image.width), {s: backbones.resize([image], s)[0] for s in self.input_sizes}, None


def _collate_resized(items: list) -> ResizedBatch:
    ok = [(i, size, resized) for i, size, resized, err in items if err is None]
    stacked = {s: torch.from_numpy(np.stack([r[s] for _, _, r in ok])) for s in ok[0][2]} if ok else {}
    errors = [(i, err) for i, _, _, err in items if isinstance(err, str)]
    unreadable = [err for *_, err in items if isinstance(err, images.ImageReadError)]
    return ResizedBatch([i for i, _, _ in ok], [tuple(size) for _, size, _ in ok], stacked, errors, unreadable)


def resized_batches(
    records: Sequence[images.ImageRecord],
    input_sizes: Sequence[int],
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[ResizedBatch]:
    """Batches of images decoded and resized (LANCZOS) to each of ``input_sizes`` in ``num_workers`` processes;
    raises :class:`~multilabel_imagenet.images.ImageReadError` where the file system failed to read one."""
    loader = torch.utils.data.DataLoader(
        _Resized(records, input_sizes),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate_resized,
        shuffle=False,
        pin_memory=pin_memory,
    )
    for batch in loader:
        if batch.unreadable:
            raise batch.unreadable[0]
        yield batch


def discover_records(
    records: Sequence[images.ImageRecord],
    ensemble: maskcut.Ensemble,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[tuple[int, tuple[int, int] | None, list | str]]:
    """The discover stage over ``records``: ``(position, (height, width), merged proposals)`` per decoded image
    and ``(position, None, reason)`` per image that failed to decode, in batch order.

    Decoding and resizing run in ``num_workers`` DataLoader processes; one batch is kept in flight, so its CPU
    steps (hole filling, encoding, pydensecrf) overlap the next batch's device steps.
    """
    pending: tuple | None = None
    for batch in resized_batches(records, ensemble.input_sizes, batch_size, num_workers, pin_memory):
        submitted = (batch, ensemble.submit(batch.resized, batch.sizes) if batch.indices else list)
        if pending is not None:
            yield from _finished(*pending)
        pending = submitted
    if pending is not None:
        yield from _finished(*pending)


def _finished(batch: ResizedBatch, result: Callable[[], list]) -> Iterator[tuple]:
    yield from ((j, None, reason) for j, reason in batch.errors)
    yield from zip(batch.indices, batch.sizes, result(), strict=True)


def labeler_features(
    records: Sequence[images.ImageRecord],
    extractor: backbones.Extractor,
    config: LabelerConfig,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> Iterator[tuple[int, torch.Tensor | str]]:
    """The labeler backbone's patch tokens [h, w, d] (float32, on the CPU) per image as ``(position, tokens)``;
    ``(position, reason)`` where an image no longer decodes. Decoding and resizing run in DataLoader workers,
    the backbone on ``device``."""
    size = config.input_size
    for batch in resized_batches(records, [size], batch_size, num_workers, device.type == "cuda"):
        yield from batch.errors
        if batch.indices:
            yield from zip(batch.indices, backbones.tokens(extractor, batch.resized[size], device), strict=True)


def label_records(
    records: Sequence[images.ImageRecord],
    masks_of: Callable[[int], np.ndarray],
    extractor: backbones.Extractor,
    head: labeler.LabelerHead,
    config: LabelerConfig,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> Iterator[tuple[int, labeler.ImageLabels | str]]:
    """The label stage over ``records``: ``(position, labels)`` per image, ``masks_of(position)`` giving its
    proposal masks [M, H, W]; ``(position, reason)`` where an image no longer decodes (:func:`labeler_features`)."""
    for k, tokens in labeler_features(records, extractor, config, device, batch_size, num_workers):
        yield k, tokens if isinstance(tokens, str) else labeler.label_image(head, tokens, masks_of(k), config)

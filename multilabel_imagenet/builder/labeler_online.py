"""Online labeler training (paper Supp. B.1): augmented images and masks every step, the backbone frozen.

The selected samples are one Arrow IPC file of the work directory (:func:`write_samples`: image id, path, size,
class and the RLEs of the sample's masks, streamed in one shard at a time), memory-mapped by every DataLoader
worker, so an epoch is a global shuffle without any image, mask or token held beyond the batch in flight.
Workers decode the image and its masks' union, and apply RandomResizedCrop, horizontal flip and RandAugment to
both together (seeded per epoch and sample, so the number of workers never changes a result); the main process
runs the backbone, projects the masks onto its patch grid, drops patches and hands :func:`~.labeler_train.fit`
the tokens. A sample whose mask the crop leaves empty is skipped for that step (as the authors' script does);
an image that fails to decode is reported to ``on_error`` and skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import torch
from pycocotools import mask as mask_utils

from multilabel_imagenet import atomic, classes, images
from multilabel_imagenet.builder import backbones
from multilabel_imagenet.builder.labeler import LabelerConfig, LabelerHead, PatchExtractor, drop_patches, masks_to_grid
from multilabel_imagenet.builder.labeler_train import Batch, fit

SAMPLES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("label", pa.int16()),
        ("masks", pa.list_(pa.string())),  # COCO RLE counts of the sample's masks; none = the whole image
    ]
)


# ---------------------------------------------------------------- joint augmentation


class JointRandAugment:
    """RandAugment (Cubuk et al. 2020) on an (image, mask) pair, with torchvision's operation space and
    magnitudes (2 operations, magnitude 9 of 31 bins). torchvision's own RandAugment refuses masks; here the
    geometric operations (shear, translate, rotate) move the mask with the image (nearest interpolation) and the
    photometric ones leave it alone."""

    GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
    PHOTOMETRIC = (
        "identity",
        "brightness",
        "color",
        "contrast",
        "sharpness",
        "posterize",
        "solarize",
        "autocontrast",
        "equalize",
    )

    def __init__(self, num_ops: int = 2, magnitude: int = 9, bins: int = 31):
        self.num_ops, self.level, self.bins = num_ops, magnitude / (bins - 1), bins

    def _apply(self, op: str, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        sign = 1.0 if torch.rand(()) < 0.5 else -1.0
        height, width = image.shape[-2:]
        if op in self.GEOMETRIC:
            shear, translate, angle = [0.0, 0.0], [0, 0], 0.0
            if op == "shear_x":
                shear[0] = math.degrees(math.atan(sign * 0.3 * self.level))
            elif op == "shear_y":
                shear[1] = math.degrees(math.atan(sign * 0.3 * self.level))
            elif op == "translate_x":
                translate[0] = int(sign * 150.0 / 331.0 * width * self.level)
            elif op == "translate_y":
                translate[1] = int(sign * 150.0 / 331.0 * height * self.level)
            else:
                angle = sign * 30.0 * self.level
            centre = [0.0, 0.0] if op.startswith("shear") else None
            args = dict(angle=angle, translate=translate, scale=1.0, shear=shear, center=centre)
            return (
                TF.affine(image, interpolation=InterpolationMode.NEAREST, **args),
                TF.affine(mask, interpolation=InterpolationMode.NEAREST, **args),
            )
        factor = 1.0 + sign * 0.9 * self.level
        if op == "brightness":
            image = TF.adjust_brightness(image, factor)
        elif op == "color":
            image = TF.adjust_saturation(image, factor)
        elif op == "contrast":
            image = TF.adjust_contrast(image, factor)
        elif op == "sharpness":
            image = TF.adjust_sharpness(image, factor)
        elif op == "posterize":
            image = TF.posterize(image, 8 - int(round(self.level * 4)))
        elif op == "solarize":
            image = TF.solarize(image, 255.0 * (1.0 - self.level))
        elif op == "autocontrast":
            image = TF.autocontrast(image)
        elif op == "equalize":
            image = TF.equalize(image)
        return image, mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ops = self.GEOMETRIC + self.PHOTOMETRIC
        for _ in range(self.num_ops):
            image, mask = self._apply(ops[int(torch.randint(len(ops), ()))], image, mask)
        return image, mask


def joint_augmentation(size: int, rand_augment: bool = True) -> Callable:
    """RandomResizedCrop + horizontal flip + RandAugment on an (image, mask) pair together (Supp. B.1):
    geometric operations move both, photometric ones touch the image only."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + [JointRandAugment()] if rand_augment else steps)


# ---------------------------------------------------------------- the samples file


def write_samples(path: str | Path, parts: Iterable[list[dict]]) -> int:
    """Stream ``parts`` (lists of rows of :data:`SAMPLES_SCHEMA`, e.g. one per shard) into the Arrow IPC file
    ``path``, written under a temporary name and renamed when complete; returns the number of samples."""
    path = Path(path)
    tmp = atomic.temporary(path)
    count = 0
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SAMPLES_SCHEMA) as writer:
        for rows in parts:
            if rows:
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=SAMPLES_SCHEMA))
                count += len(rows)
    tmp.replace(path)
    return count


class OnlineSamples(torch.utils.data.Dataset):
    """The samples file as a dataset of augmented ``(image [S, S, 3] uint8, mask [S, S] bool, label)``; an item
    that fails is ``(None, None, label, reason)``. The file is memory-mapped on first use in each process."""

    def __init__(self, path: str | Path, size: int, seed: int = 0):
        self.path, self.size, self.seed, self.epoch = str(path), size, seed, 0
        self._table: pa.Table | None = None
        self._augment = joint_augmentation(size)
        with pa.memory_map(self.path) as source:
            self._len = pa.ipc.open_file(source).read_all().num_rows

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_table": None}  # workers map the file themselves

    def row(self, i: int) -> dict:
        if self._table is None:
            self._table = pa.ipc.open_file(pa.memory_map(self.path)).read_all()
        return self._table.slice(i, 1).to_pylist()[0]

    def __getitem__(self, i: int) -> tuple:
        from torchvision import tv_tensors

        row = self.row(i)
        h, w = row["height"], row["width"]
        try:
            image = np.array(images.decode_image(row["path"]))
        except images.ImageDecodeError as err:
            return None, None, row["label"], err.reason
        except images.ImageReadError as err:  # raised by the training loop: a failed read is not a bad image
            return None, None, row["label"], err
        if image.shape[:2] != (h, w):
            return None, None, row["label"], f"image is {image.shape[0]} x {image.shape[1]}, its masks {h} x {w}"
        mask = np.ones((h, w), np.uint8)
        if row["masks"]:
            rles = [{"size": [h, w], "counts": c.encode("ascii")} for c in row["masks"]]
            mask = mask_utils.decode(rles).max(2)
        with torch.random.fork_rng(devices=[]):  # this sample's draws, whichever process runs it
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))
            img, msk = self._augment(
                tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                tv_tensors.Mask(torch.from_numpy(mask)[None]),
            )
        return img.permute(1, 2, 0).contiguous(), msk[0].bool(), row["label"], None


def _collate(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    ok = [k for k, item in enumerate(items) if item[3] is None]
    failed = [(k, items[k][3]) for k in range(len(items)) if items[k][3] is not None]
    if not ok:
        return torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), failed
    stack = [torch.stack([items[k][j] for k in ok]) for j in (0, 1)]
    return stack[0], stack[1], torch.tensor([items[k][2] for k in ok], dtype=torch.long), failed


# ---------------------------------------------------------------- training


def train_online(
    samples: str | Path,
    extractor: PatchExtractor,
    config: LabelerConfig,
    num_classes: int = classes.NUM_CLASSES,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    on_error: Callable[[dict, str], object] | None = None,
    **fit_kwargs,
) -> LabelerHead:
    """Train on the samples file ``samples`` (:func:`write_samples`) with per-step augmentation; the backbone
    ``extractor`` takes normalised [B, 3, S, S] batches on ``device``. ``on_error(row, reason)`` hears of each
    sample whose image failed (every epoch it is drawn). See :func:`~.labeler_train.fit` for checkpoint, resume,
    log and progress."""
    device = torch.device(device)
    dataset = OnlineSamples(samples, config.input_size, config.seed)
    if not len(dataset):
        raise ValueError(f"{samples}: no training samples")
    steps = math.ceil(len(dataset) / config.batch_size)

    @torch.no_grad()
    def tokens_of(batch: torch.Tensor) -> torch.Tensor:
        return extractor(backbones.normalise(batch.to(device, non_blocking=True))).float()

    def epoch_batches(epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        dataset.epoch = epoch
        order = torch.randperm(len(dataset), generator=g).tolist()
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=order,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
        )
        for b, (batch_images, masks, labels, failed) in enumerate(loader):
            for k, reason in failed:
                if isinstance(reason, images.ImageReadError):
                    raise reason
                if on_error is not None:
                    on_error(dataset.row(order[b * config.batch_size + k]), reason)
            if not len(labels):
                continue
            tokens = tokens_of(batch_images)
            grids = masks_to_grid(masks.to(device), tokens.shape[1:3], config.mask_threshold, config.patch_rule)
            kept = grids.flatten(1).any(1)  # the crop may have left the mask out
            grids = drop_patches(grids[kept], config.patch_drop, g, config.drop_rule)
            yield tokens[kept].flatten(1, 2), grids.flatten(1), labels[kept.cpu()]

    torch.manual_seed(config.seed)
    in_dim = tokens_of(torch.zeros(1, config.input_size, config.input_size, 3, dtype=torch.uint8)).shape[-1]
    head = LabelerHead(in_dim, config.hidden, num_classes, config.dropout)
    return fit(head, config, epoch_batches, steps, device=device, **fit_kwargs)

"""Running a timm model over a benchmark's images to get its scores (``evaluate --model``).

Images are found by basename anywhere under the image folder (a flat val folder, ``<wnid>/`` or
``<class_idx>/`` sub-folders alike) and fed in the benchmark's canonical order with timm's eval transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from multilabel_imagenet.evaluation.benchmarks import IMAGE_SUFFIXES, Benchmark, image_key


class ModelError(ValueError):
    """A model specification that cannot be loaded, or images that cannot be found."""


def load_model(spec: str, checkpoint: str | Path | None = None):
    """A timm model in eval mode: ``timm:NAME`` (pretrained weights from the Hugging Face Hub, or ``checkpoint``,
    a local ``.safetensors``/``.pth`` file, instead) or a local folder saved by ``timm.models.save_for_hf``
    (``config.json`` + weights). Checkpoints are read without unpickling arbitrary objects."""
    import timm

    if spec.startswith("timm:"):
        name = spec.removeprefix("timm:")
        overlay = {"file": str(checkpoint)} if checkpoint is not None else None
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ModelError(f"{checkpoint}: checkpoint file not found")
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ModelError(f"unknown timm model {name!r}") from None
            raise
    elif Path(spec).is_dir():
        if checkpoint is not None:
            raise ModelError("--checkpoint goes with timm:NAME; a model folder carries its own weights")
        if not (Path(spec) / "config.json").is_file():
            raise ModelError(f"{spec}: not a timm model folder (no config.json; save one with save_for_hf)")
        model = timm.create_model(f"local-dir:{Path(spec).resolve()}", pretrained=True)
    else:
        raise ModelError(f"model {spec!r}: expected timm:NAME or a folder saved by timm.models.save_for_hf")
    return model.eval()


def find_images(benchmark: Benchmark, images_dir: str | Path) -> list[Path]:
    """The file of each benchmark image under ``images_dir`` (searched recursively), in canonical order."""
    root = Path(images_dir)
    if not root.is_dir():
        raise ModelError(f"{root}: image folder not found")
    found: dict[str, Path] = {}
    for path in root.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            key = image_key(path.name)
            if key in found:
                raise ModelError(f"{root}: image {path.name} found twice: {found[key]} and {path}")
            found[key] = path
    missing = [n for n in benchmark.image_ids if image_key(n) not in found]
    if missing:
        raise ModelError(
            f"{root}: {len(missing)} of the {len(benchmark)} images of {benchmark.name!r} are missing, "
            f"e.g. {', '.join(missing[:3])}"
        )
    return [found[image_key(n)] for n in benchmark.image_ids]


class _ImageFiles:
    """Map-style dataset of decoded, transformed images (module level so worker processes can pickle it)."""

    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        """The transformed image, or (path, reason) if it cannot be decoded (re-raised in the main process)."""
        from multilabel_imagenet.images import ImageDecodeError, decode_image

        try:
            return self.transform(decode_image(self.paths[i]))
        except ImageDecodeError as err:
            return err.path, err.reason


def _collate(items: list):
    """Stack a batch of images; a batch with an undecodable image becomes the list of its failures."""
    import torch

    failures = [x for x in items if isinstance(x, tuple)]
    return failures if failures else torch.stack(items)


def predict(
    model,
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | None = None,
    progress: Callable[[int], object] | None = None,
    activation: str = "softmax",
    transform: Callable | None = None,
) -> np.ndarray:
    """Probabilities [len(paths), num_classes] of ``model`` with timm's eval transform for it (or ``transform``).

    ``activation``: ``softmax`` (a single-label classifier), ``sigmoid`` (one trained with BCE, as the paper's
    multi-label models: per-class probabilities) or ``none`` (logits). ``progress`` is called with the number of
    images done after each batch. An undecodable image raises ``multilabel_imagenet.images.ImageDecodeError``
    naming the file.
    """
    import torch
    from timm.data import create_transform, resolve_data_config

    activations = {"softmax": lambda x: x.softmax(dim=1), "sigmoid": torch.sigmoid, "none": lambda x: x}
    if activation not in activations:
        raise ValueError(f"activation must be one of {sorted(activations)}, got {activation!r}")
    if transform is None:
        transform = create_transform(**resolve_data_config({}, model=model))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)

    from multilabel_imagenet.images import ImageDecodeError

    dataset = _ImageFiles(paths, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    out = []
    with torch.inference_mode():
        for batch in loader:
            if isinstance(batch, list):
                raise ImageDecodeError(*batch[0])
            out.append(activations[activation](model(batch.to(device)).float()).cpu().numpy())
            if progress is not None:
                progress(len(batch))
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), dtype=np.float32)

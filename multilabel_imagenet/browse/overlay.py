"""Masks drawn over images in distinct colours, shared by the gallery and the web app."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from multilabel_imagenet.dataset import importers

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (255, 225, 25),
    (128, 0, 0),
    (0, 0, 128),
    (128, 128, 0),
    (170, 255, 195),
)
"""Sasha Trubetskoy's distinct colours; mask ``i`` gets ``PALETTE[i % 16]``."""
FILL_ALPHA = 0.45


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def hex_colour(index: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour(index))


def decode_masks(
    masks: Sequence[Mapping[str, Any]], height: int, width: int, dataset: str, image_id: str
) -> list[np.ndarray]:
    """The stored proposal masks of one image, errors naming the dataset, the image and the mask (1-based)."""
    where = f"{dataset}: proposals of {image_id}"
    return [importers.decode_mask(m, height, width, f"{where}, mask {i + 1}") for i, m in enumerate(masks)]


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` of its border."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def draw_masks(image: np.ndarray, masks: Sequence[np.ndarray], max_side: int = 480) -> Image.Image:
    """``image`` (H x W x 3 uint8) scaled to at most ``max_side``, each mask filled and outlined in its colour and
    numbered (1-based) at its centre of mass, later masks over earlier ones."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)).astype(np.float32)
    small = [
        np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0 for m in masks
    ]
    for i, m in enumerate(small):
        rgb = np.array(colour(i), np.float32)
        canvas[m] = (1 - FILL_ALPHA) * canvas[m] + FILL_ALPHA * rgb
        canvas[outline(m)] = rgb
    out = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=14)
    for i, m in enumerate(small):
        if m.any():
            y, x = ndimage.center_of_mass(m)
            label = str(i + 1)
            left, top, right, bottom = draw.textbbox((x, y), label, font=font, anchor="mm")
            draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=colour(i), outline=(0, 0, 0))
            draw.text((x, y), label, fill=(0, 0, 0), font=font, anchor="mm")
    return out


def mask_png(mask: np.ndarray, index: int) -> bytes:
    """An RGBA PNG of ``mask`` in colour ``index``: translucent fill, opaque outline, transparent elsewhere."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[..., :3] = colour(index)
    rgba[..., 3] = np.where(outline(mask), 255, np.where(mask, round(255 * FILL_ALPHA), 0))
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()

"""Throughput of the whole discover stage, per MaskCut configuration and per step.

For each configuration of a preset (default: the paper's four plus the synthetic one), runs steps 1-10 on
synthetic scenes and records images per second overall and seconds per image in each step: features
(resize + backbone forward), cut (affinity + normalised cuts, all N iterations), crf (the torch CRF), check
(upsampling, hole filling, self-check; the CRF too for the pydensecrf backend) and encode (resize to the
original size, RLE). On CPU always, and on CUDA as well where
a GPU is present (its name goes into the JSON).

Offline, the ViT configurations run their real architectures with RANDOM weights (pass --weights-dir with
``<config name>.safetensors`` files for real ones): the speed of the forward pass, the cut and the encoding do
not depend on the weight values, but the masks (and so the CRF time per mask) do; the JSON says which was used.

    python benchmarks/discover_speed.py [--images 4] [--configs dino_b8,colour_texture] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gpu_throughput
import machine
import torch

from multilabel_imagenet.builder import backbones, configs, maskcut, synthetic


def extractor_and_weights(config: configs.MaskCutConfig, device: str, weights_dir: Path | None) -> tuple:
    """The configuration's extractor and what its weights are, for the JSON."""
    if config.backbone == backbones.COLOUR_TEXTURE:
        return backbones.load_backbone(config.backbone, config.feature), "none (non-learned)"
    weights = weights_dir / f"{config.name}.safetensors" if weights_dir else None
    if weights is not None and weights.is_file():
        return backbones.load_backbone(config.backbone, config.feature, weights=weights, device=device), str(weights)
    return gpu_throughput.extractor_for(config.backbone, config.feature, device), "random (architecture only)"


def run(config: configs.MaskCutConfig, device: str, images: list, weights_dir: Path | None, batch: int) -> dict:
    ex, weights = extractor_and_weights(config, device, weights_dir)
    maskcut.discover(images[:1], config, ex)  # warm-up
    times = maskcut.StepTimes()
    proposals = 0
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        out = maskcut.discover(images[i : i + batch], config, ex, times=times)
        proposals += sum(len(p) for p in out)
    total = time.perf_counter() - t0
    n = len(images)
    return {
        "config": config.to_dict(),
        "device": device,
        "weights": weights,
        "images": n,
        "batch": batch,
        "images_per_s": n / total,
        "s_per_image": {k: v / n for k, v in times.as_dict().items()},
        "proposals_per_image": proposals / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--configs", default="", help="comma-separated config names (default: all of the preset)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("discover_speed.json"))
    args = parser.parse_args()

    chosen = list(configs.preset(args.preset)) + list(configs.SYNTHETIC)
    if args.configs:
        names = set(args.configs.split(","))
        chosen = [c for c in chosen if c.name in names]
    images = [synthetic.make_scene(i).image for i in range(args.images)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for config in chosen:
            r = run(config, device, images, args.weights_dir, args.batch)
            print(json.dumps(r))
            results.append(r)
    out = machine.describe() | {
        "solver": "fast",
        "results": results,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

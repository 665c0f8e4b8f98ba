"""What bounds the paper preset + labeler on a GPU machine: backbone FLOPs, and the CPU work per image.

* flops (no device needed): forward FLOPs per image of each configuration's backbone and of the labeler's,
  counted on the meta device (no weights allocated) through the math SDPA kernel, for the features each one
  uses; the FLOP ceiling in images/s at the dense bf16 peaks of the GPU table in ``gpu_throughput.py``, and the
  fraction of that peak that the ``--target`` (30 images/s, issue 8) needs from the backbones alone.
* host (measured on this machine, one core): seconds per image of what the GPU machine's CPUs must do,
  on ImageNet-sized JPEGs of synthetic scenes with their object masks standing in for MaskCut's:
  decoding + resizing to the ensemble's input sizes (discover) and to the labeler's (label) in the DataLoader
  workers; per configuration, the CPU steps the thread pool runs (upsampling, hole filling and self-check,
  resizing to the original size, RLE); merging the configurations; the corner rule and component labelling
  of step 5-6 that the main thread runs between eigen-solves. From these: the cores 30 images/s needs.
* side by side: forward FLOPs if q/k/v features ran the whole backbone (they stop at the last block's
  projection); scipy's hole filling against ``crf.fill_holes`` on the same masks.
* gil: the thread-pool steps timed with 1 and 2 threads side by side; from the speed-up S, the fraction of
  them that holds the GIL, f = 2 / S - 1 (Amdahl), and the rate at which one process's threads saturate it.

    python benchmarks/paper_bounds.py [--images 32] [--target 30] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import machine
import numpy as np
import torch
from gpu_throughput import BF16_PEAK_TFLOPS, IMAGENET_TRAIN, decode_rate, extractor_for, flops_per_image
from PIL import Image
from scipy import ndimage

from multilabel_imagenet import images
from multilabel_imagenet.builder import backbones, configs, crf, labeler, maskcut, proposals, synthetic


def backbone_flops(name: str, feature: str, size: int) -> tuple[float, float, int]:
    """Forward FLOPs per image for ``feature`` and for the whole forward pass ("patch"), and the patch size, of
    timm model ``name`` (built once, on the meta device)."""
    meta = torch.device("meta")
    extractor = extractor_for(name, feature, meta)
    flops = flops_per_image(extractor, size, meta)
    if feature != "patch":
        full = flops_per_image(backbones.TimmExtractor(extractor.model, "patch"), size, meta)
    else:
        full = flops
    return flops, full, extractor.patch_size


def nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.Resampling.NEAREST))


def stand_in_masks(scene: synthetic.Scene, config: configs.MaskCutConfig, patch: int) -> tuple[list, list | None]:
    """MaskCut's output for ``scene`` as its object masks would give it: N patch masks (the largest objects,
    empty for dropped iterations) and, with CRF, the refined masks at the input size."""
    grid = (config.input_size // patch,) * 2
    ordered = sorted(scene.objects, key=lambda o: -o.area)[: config.n]
    patch_masks = [nearest(o.mask, grid) for o in ordered]
    patch_masks += [np.zeros(grid, bool)] * (config.n - len(patch_masks))
    if not config.crf:
        return patch_masks, None
    size = config.input_size
    return patch_masks, [
        proposals.resize_mask(o.mask, size, size)
        for o, m in zip(ordered, patch_masks[: len(ordered)], strict=True)
        if m.any()
    ]


def per_image(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="scenes to time the CPU steps on")
    parser.add_argument("--target", type=float, default=30.0, help="images/s end to end to size for")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("paper_bounds.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfgs, lab = configs.PAPER, labeler.LabelerConfig()

    counted = {c.name: backbone_flops(c.backbone, c.feature, c.input_size) for c in cfgs}
    counted["labeler"] = backbone_flops(lab.backbone, "patch", lab.input_size)
    flops = {name: f for name, (f, _, _) in counted.items()}
    full_forward = sum(full for _, full, _ in counted.values())
    patch = {name: p for name, (_, _, p) in counted.items()}
    total = sum(flops.values())
    ceilings = {gpu: peak * 1e12 / total for gpu, peak in BF16_PEAK_TFLOPS.items() if gpu in ("H100 SXM", "H200")}

    scenes = [synthetic.make_scene(i) for i in range(args.images)]
    sizes = sorted({c.input_size for c in cfgs})
    with tempfile.TemporaryDirectory(prefix="paper-bounds-") as tmp:
        synthetic.write_mini_imagenet(tmp, args.images, 0)  # the same scenes, as JPEG files
        records = images.open_source(Path(tmp) / "train")
        host = {  # the DataLoader workers' work (decode, resize, collate), run in this process
            "decode_resize_discover": 1.0 / decode_rate(records, sizes, 8, 0),
            "decode_resize_label": 1.0 / decode_rate(records, [lab.input_size], 8, 0),
        }

    jobs = []  # (config, resized image, patch masks, original size, refined)
    for scene in scenes:
        for c in cfgs:
            patch_masks, refined = stand_in_masks(scene, c, patch[c.name])
            resized = backbones.resize([scene.image], c.input_size)[0]
            jobs.append((c, resized, patch_masks, scene.image.shape[:2], refined))

    def post(job):
        c, resized, patch_masks, size, refined = job
        return maskcut.proposals_from_patches(resized, patch_masks, size, c, refined=refined)

    list(map(post, jobs))  # warm
    t0 = time.perf_counter()
    found = [post(j) for j in jobs]
    one_thread = time.perf_counter() - t0
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(post, jobs))  # warm
        t0 = time.perf_counter()
        list(pool.map(post, jobs))
        two_threads = time.perf_counter() - t0
    host["postprocess_threads"] = one_thread / len(scenes)
    masks = [
        m
        for _, resized, patch_masks, _, refined in jobs
        for m in refined or maskcut.full_resolution(patch_masks, resized.shape[:2])
    ]
    scipy_fill = per_image(ndimage.binary_fill_holes, masks)
    our_fill = per_image(crf.fill_holes, masks)
    k = len(cfgs)
    host["merge"] = per_image(proposals.merge, [found[i : i + k] for i in range(0, len(found), k)])

    rng = np.random.default_rng(0)
    vectors = []
    for _, _, patch_masks, _, _ in jobs:  # scene by scene, then configuration: the jobs' order
        for m in patch_masks:
            vectors.append((m.ravel() + 0.1 * rng.standard_normal(m.size), m.shape))
    seed_s = per_image(lambda v: maskcut.seed_component(*v), vectors) * len(vectors) / len(scenes)
    host["seed_component_main_thread"] = seed_s
    core_s = sum(host.values())

    speedup = one_thread / two_threads
    gil_fraction = min(1.0, max(0.0, 2.0 / speedup - 1.0))
    out = machine.describe() | {
        "preset": "paper",
        "labeler": lab.backbone,
        "backbone_tflops_per_image": {k: v / 1e12 for k, v in flops.items()},
        "total_tflops_per_image": total / 1e12,
        "total_tflops_per_image_full_forward": full_forward / 1e12,
        "flop_ceiling_images_per_s": ceilings,
        "peak_fraction_needed_for_target": {gpu: args.target / c for gpu, c in ceilings.items()},
        "target_images_per_s": args.target,
        "imagenet_train_gpu_hours_at_target": IMAGENET_TRAIN / args.target / 3600,
        "images": len(scenes),
        "proposals_per_image": sum(map(len, found)) / len(scenes),
        "host_core_s_per_image": host,
        "host_core_s_per_image_total": core_s,
        "cores_for_target": core_s * args.target,
        "fill_holes_ms_per_mask": {"scipy_binary_fill_holes": scipy_fill * 1e3, "crf.fill_holes": our_fill * 1e3},
        "gil": {
            "postprocess_two_thread_speedup": speedup,
            "held_fraction": gil_fraction,
            "one_process_ceiling_images_per_s": 1.0 / (gil_fraction * host["postprocess_threads"])
            if gil_fraction
            else None,
        },
    }
    print(json.dumps(out, indent=2))
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

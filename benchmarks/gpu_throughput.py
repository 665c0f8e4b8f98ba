"""Throughput of the build's image passes: the MaskCut ensemble (discover) and the labeler (label), per stage.

On whatever device is present, with the stage code the build runs (``loaders.discover_records``,
``loaders.label_records``) over JPEG files of synthetic scenes (240-400 x 300-512 px, ImageNet-like sizes):

* decode: decoding + resizing to every input size in DataLoader workers, alone (images/s);
* per MaskCut configuration (seconds per image, summed over the batches): features (host-to-device copy,
  normalisation, backbone forward in ``--precision``, fp32 by default), cut (affinity + all N normalised cuts),
  crf (the torch CRF on the device), check (upsampling, hole filling and the self-check, in threads), encode (resizing
  to the original size and RLE, in threads); the thread steps overlap the next batch's device steps;
* discover: the whole ensemble as the stage runs it, images/s; label: the labeler backbone + head over every
  proposal, images/s; end to end = 1 / (1 / discover + 1 / label), the two passes every image gets;
* backbone FLOPs per image (torch's FlopCounterMode) and the fraction of the device's dense bf16 peak that the
  features step reaches (CUDA; the peak from the table below or ``--peak-tflops``).

Real architectures with RANDOM weights (timm names, pretrained=False): the forward FLOPs and the cut cost do not
depend on the weights; the number and shape of the masks (so the CRF and encoding costs) do, and are recorded.

On CPU the default preset is "synthetic" (the weight-free demo configuration), and two side-by-side ratios are
added: the torch CRF against pydensecrf on the same masks, and the whole discover stage against the per-image
published-style path (one image at a time, exact float64 solve, pydensecrf in the same process, no workers).

    python benchmarks/gpu_throughput.py [--preset paper] [--images 64] [--batch 32] [--workers 8] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import machine
import numpy as np
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from multilabel_imagenet import images
from multilabel_imagenet.builder import backbones, configs, crf, labeler, loaders, maskcut, proposals, synthetic

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; matched on the device name.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "GH200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}
IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k's train split


def peak_tflops(device_name: str | None, override: float | None) -> float | None:
    if override is not None or device_name is None:
        return override
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific first
        if key in device_name:
            return value
    return None


def extractor_for(
    backbone: str, feature: str, device: str | torch.device, precision: str = "fp32"
) -> backbones.Extractor:
    """The colour/texture extractor, or timm model ``backbone`` with random weights built on ``device`` (on the
    meta device nothing is allocated), forward in ``precision`` (backbones.PRECISIONS)."""
    if backbone == backbones.COLOUR_TEXTURE:
        return backbones.load_backbone(backbone, feature)
    with torch.device(device):
        model = timm.create_model(backbone, pretrained=False, num_classes=0, dynamic_img_size=True)
    return backbones.TimmExtractor(model, feature, precision)


def flops_per_image(extractor: backbones.Extractor, size: int, device: torch.device) -> float:
    """Forward FLOPs for one image; attention through the math kernel so its matmuls count on every device."""
    x = torch.zeros(1, 3, size, size, device=device)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        extractor(x)
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def decode_rate(records, sizes, batch, workers) -> float:
    t0 = time.perf_counter()
    n = sum(len(b.indices) for b in loaders.resized_batches(records, sizes, batch, workers))
    return n / (time.perf_counter() - t0)


def run_discover(records, ensemble, batch, workers, device) -> tuple[float, list]:
    sync(device)
    t0 = time.perf_counter()
    found = list(loaders.discover_records(records, ensemble, batch, workers, device.type == "cuda"))
    sync(device)
    return len(found) / (time.perf_counter() - t0), found


def run_label(records, found, extractor, head, lab, device, batch, workers) -> float:
    masks = {
        j: np.stack([p.decode() for p in props]) if props else np.zeros((0, *size), bool) for j, size, props in found
    }
    sync(device)
    t0 = time.perf_counter()
    n = sum(1 for _ in loaders.label_records(records, masks.__getitem__, extractor, head, lab, device, batch, workers))
    sync(device)
    return n / (time.perf_counter() - t0)


def published_path(records, cfgs, extractors, n: int) -> float:
    """Images/s of the published-style loop: one image at a time, exact solver, pydensecrf in process."""
    reference = [replace(c, crf_backend="pydensecrf") for c in cfgs]
    t0 = time.perf_counter()
    for record in records[:n]:
        image = np.asarray(images.decode_image(record.full_path))
        per_config = [
            maskcut.discover([image], c, ex, solver="exact")[0] for c, ex in zip(reference, extractors, strict=True)
        ]
        proposals.merge(per_config)
    return n / (time.perf_counter() - t0)


def crf_ratio(records, cfgs, extractors, n: int) -> dict:
    """Seconds of the CRF step with pydensecrf (per mask, as published) and with the stage's torch CRF
    (``maskcut.crf_on_device``) on the same patch masks of this run's configurations; ``crf_agreement.py``
    compares the two CRFs' masks and speed on a fixed varied set instead."""
    out = {"pydensecrf_s": 0.0, "torch_s": 0.0, "masks": 0}
    decoded = [np.asarray(images.decode_image(r.full_path)) for r in records[:n]]
    for c, ex in zip(cfgs, extractors, strict=True):
        if not c.crf:
            continue
        x, resized = backbones.preprocess(decoded, c.input_size)
        feats = ex(x)
        patch = maskcut.maskcut_patches(feats, feats.shape[1:3], c.tau, c.n, maskcut.SOLVERS["fast"])
        t0 = time.perf_counter()
        for im, pm in zip(resized, patch, strict=True):
            for m in maskcut.full_resolution(pm, im.shape[:2]):
                if m.any():
                    crf.dense_crf(im, m)
                    out["masks"] += 1
        t1 = time.perf_counter()
        maskcut.crf_on_device(torch.from_numpy(np.stack(resized)), patch)
        out["pydensecrf_s"] += t1 - t0
        out["torch_s"] += time.perf_counter() - t1
    out["pydensecrf_over_torch"] = out["pydensecrf_s"] / out["torch_s"] if out["torch_s"] else None
    return out


def measure(args: argparse.Namespace, root: Path) -> dict:
    """Every figure of the JSON, on synthetic scenes written to ``root``."""
    described = machine.describe()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.preset or ("paper" if cuda else "synthetic")
    n_images = args.images or (64 if cuda else 16)
    batch = args.batch or (32 if cuda else 8)
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 1)
    cfgs = list(configs.preset(preset))
    lab = labeler.LabelerConfig() if preset != "synthetic" else labeler.LabelerConfig(backbones.COLOUR_TEXTURE, 256)

    synthetic.write_mini_imagenet(root, n_images + batch, 0)
    records = images.open_source(root / "train")
    warm, records = records[:batch], records[batch : batch + n_images]

    extractors = [extractor_for(c.backbone, c.feature, device, args.precision) for c in cfgs]
    lab_extractor = extractor_for(lab.backbone, "patch", device, args.precision)
    probe = lab_extractor(torch.zeros(1, 3, lab.input_size, lab.input_size, device=device))
    head = labeler.LabelerHead(probe.shape[-1], lab.hidden).to(device).eval()

    times: dict[str, maskcut.StepTimes] = {}
    with ThreadPoolExecutor(args.threads) as threads:
        ensemble = maskcut.Ensemble(cfgs, extractors, device, threads=threads)
        _, warm_found = run_discover(warm, ensemble, batch, workers, device)  # warm-up: kernels, allocator, SDPA
        ensemble.times = times
        discover_ips, found = run_discover(records, ensemble, batch, workers, device)
    run_label(warm, warm_found, lab_extractor, head, lab, device, batch, workers)
    label_ips = run_label(records, found, lab_extractor, head, lab, device, batch, workers)
    decode_ips = decode_rate(records, ensemble.input_sizes, batch, workers)

    peak = peak_tflops(described["gpu"], args.peak_tflops)
    per_config = []
    backbone_flops = backbone_seconds = 0.0
    for c, ex in zip(cfgs, extractors, strict=True):
        t = times[c.name]
        flops = flops_per_image(ex, c.input_size, device) if c.backbone != backbones.COLOUR_TEXTURE else 0.0
        backbone_flops += flops * t.images
        backbone_seconds += t.features
        per_config.append(
            {
                "config": c.to_dict(),
                "s_per_image": {k: v / t.images for k, v in t.as_dict().items()},
                "backbone_gflops_per_image": flops / 1e9,
            }
        )
    lab_flops = (
        flops_per_image(lab_extractor, lab.input_size, device) if lab.backbone != backbones.COLOUR_TEXTURE else 0.0
    )
    achieved = backbone_flops / backbone_seconds if backbone_seconds else 0.0
    end_to_end = 1.0 / (1.0 / discover_ips + 1.0 / label_ips)
    out = described | {
        "device": described["gpu"] or "cpu",
        "timm": timm.__version__,
        "preset": preset,
        "weights": "random (architecture only)",
        "images": n_images,
        "batch_size": batch,
        "decode_workers": workers,
        "cpu_threads": args.threads,
        "precision": args.precision,
        "labeler": {"backbone": lab.backbone, "input_size": lab.input_size, "gflops_per_image": lab_flops / 1e9},
        "proposals_per_image": float(np.mean([len(p) for _, _, p in found])),
        "images_per_s": {
            "decode_and_resize": decode_ips,
            "discover": discover_ips,
            "label": label_ips,
            "end_to_end": end_to_end,
        },
        "per_config": per_config,
        "backbone_tflops_achieved": achieved / 1e12,
        "bf16_peak_tflops": peak,
        "backbone_fraction_of_peak": achieved / (peak * 1e12) if peak else None,
        "imagenet_train_gpu_hours": IMAGENET_TRAIN / end_to_end / 3600,
    }
    if not cuda:
        published = published_path(records, cfgs, extractors, args.published_images)
        out["published_style_images_per_s"] = published
        out["discover_over_published_style"] = discover_ips / published
        out["crf"] = crf_ratio(records, cfgs, extractors, min(4, n_images))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="MaskCut preset (default: paper on CUDA, synthetic on CPU)")
    parser.add_argument("--images", type=int, help="images per measurement (default: 64 on CUDA, 16 on CPU)")
    parser.add_argument("--batch", type=int, help="images per batch (default: 32 on CUDA, 8 on CPU)")
    parser.add_argument("--workers", type=int, help="decoding processes (default: min(8, cores) on CUDA, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=4, help="threads for the CPU steps of MaskCut")
    parser.add_argument(
        "--precision", choices=backbones.PRECISIONS, default="fp32", help="backbone forward (the paper preset's: fp32)"
    )
    parser.add_argument("--published-images", type=int, default=2, help="images for the published-style path")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("gpu_throughput.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        out = measure(args, Path(tmp))
    print(json.dumps(out, indent=2))
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

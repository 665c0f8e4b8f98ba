"""Agreement and speed of the torch dense CRF against pydensecrf (the published implementation).

On a varied set (synthetic scenes and the colour photographs scikit-image ships; per image the raw masks the
synthetic MaskCut preset finds on it plus a random ellipse on the patch grid, :func:`synthetic.crf_cases`),
each mask is refined by pydensecrf (one call per mask, one core, as published) and by
:func:`crf.dense_crf_torch` (all masks of an image in one call; CPU, and CUDA where present) with the published
parameters. Records the IoU of the two refined masks (two empty masks agree: IoU 1) and the seconds each
implementation spent, side by side in one run.

    python benchmarks/crf_agreement.py [--scenes 16] [--size 480] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import machine
import numpy as np
import torch

from multilabel_imagenet.builder import crf, synthetic


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not a.any() and not b.any() else crf.mask_iou(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--size", type=int, default=480, help="side of the resized image (CutLER: 480)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("crf_agreement.json"))
    args = parser.parse_args()

    cases = synthetic.crf_cases(args.scenes, synthetic.SKIMAGE_PHOTOS, args.size)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    seconds = {"pydensecrf": 0.0} | {f"torch_{d}": 0.0 for d in devices}
    rows = []
    _, image, masks = cases[0]
    for device in devices:  # warm-up, once per device: CUDA kernels, allocator, the Gaussian lattice of the size
        crf.dense_crf_torch(
            torch.from_numpy(image)[None].to(device), torch.from_numpy(np.stack(masks))[None].to(device)
        )
    for name, image, masks in cases:
        t0 = time.perf_counter()
        reference = [crf.dense_crf(image, m) for m in masks]
        seconds["pydensecrf"] += time.perf_counter() - t0
        for device in devices:
            im = torch.from_numpy(image)[None].to(device)
            ms = torch.from_numpy(np.stack(masks))[None].to(device)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = crf.dense_crf_torch(im, ms)[0].cpu().numpy()
            seconds[f"torch_{device}"] += time.perf_counter() - t0
            ious = [agreement(r, o) for r, o in zip(reference, out, strict=True)]
            rows.append({"image": name, "device": device, "masks": len(masks), "iou": ious})
        print(name, [round(i, 4) for r in rows[-len(devices) :] for i in r["iou"]])
    summary = {}
    for device in devices:
        ious = [i for r in rows if r["device"] == device for i in r["iou"]]
        photos = [i for r in rows if r["device"] == device and not r["image"].startswith("scene") for i in r["iou"]]
        summary[device] = {
            "masks": len(ious),
            "mean_iou": float(np.mean(ious)),
            "min_iou": float(np.min(ious)),
            "share_iou_ge_0.99": float(np.mean(np.asarray(ious) >= 0.99)),
            "mean_iou_photos": float(np.mean(photos)),
            "pydensecrf_over_torch_time": seconds["pydensecrf"] / seconds[f"torch_{device}"],
        }
    out = machine.describe() | {
        "size": args.size,
        "images": len(cases),
        "seconds": seconds,
        "summary": summary,
        "rows": rows,
    }
    print(json.dumps(summary, indent=2))
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""End-to-end build speed on the synthetic scenes: images per second of every stage, on the device present.

Runs the synthetic preset (weight-free extractor, CRF on) over ``--train`` and ``--val`` scenes in a fresh work
directory with the local runner, and writes seconds and images/s per stage and split, the device, the
machine's core count and the configuration to ``benchmarks/build_speed.json``. The paper preset's GPU
throughput is measured by ``benchmarks/gpu_throughput.py`` (real architectures) where a GPU is lent.

    python benchmarks/build_speed.py [--train 64] [--val 32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from multilabel_imagenet.builder import pipeline, settings, synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("build_speed.json"))
    args = parser.parse_args()
    device = settings.resolve_device(args.device)
    config = settings.BuildConfig.preset("synthetic")
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "config": asdict(config),
        "splits": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scenes = synthetic.write_mini_imagenet(root / "scenes", args.train, args.val, seed=0)
        output, work = root / "dataset", root / "work"
        runs = [
            (
                "train",
                settings.BuildInputs(
                    scenes / "train", "train", output, work, relabel_maps=scenes / "relabel_maps", device=args.device
                ),
                settings.STAGES[:-1],
            ),
            (
                "validation",
                settings.BuildInputs(
                    scenes / "val",
                    "validation",
                    output,
                    work,
                    labels=scenes / "val_labels.txt",
                    labeler_checkpoint=work / settings.CHECKPOINT,
                    device=args.device,
                ),
                ("discover", "label", "package"),
            ),
        ]
        for split, inputs, stages in runs:
            build = pipeline.Build(inputs, config, progress=False)
            build.run(stages)
            n = len(build.records)
            result["splits"][split] = {
                "images": n,
                "seconds": {k: round(v, 2) for k, v in build.stage_seconds.items()},
                "images_per_second": {k: round(n / v, 2) for k, v in build.stage_seconds.items() if v > 0},
                "end_to_end_images_per_second": round(n / sum(build.stage_seconds.values()), 2),
            }
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    for split, r in result["splits"].items():
        print(split, r["images_per_second"], "end to end", r["end_to_end_images_per_second"], "img/s")


if __name__ == "__main__":
    main()

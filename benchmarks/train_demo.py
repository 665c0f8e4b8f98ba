"""The whole loop on the synthetic scenes: build the labels, train on them, score against the ground truth.

Builds the synthetic demo (``build_synthetic_demo``, reused when ``--root`` holds it) with more scenes than the
README's 64 + 32, then trains the same small timm ResNet (ResNet-18 at half width by default, random init, CPU)
with ``multilabel_imagenet.training.train`` twice per seed: on the single labels (``one_hot``: the largest
object's class, as an ImageNet annotator would give) and on the built multi-labels (``local_soft+original``).
Each model is scored on the held-out validation scenes, which neither the labeler nor the models saw, against
their ground-truth label sets through ``multilabel_imagenet.evaluation.evaluate``: per-sample mAP (the paper's
mAP), macro mAP over the classes present, ReaL-style top-1 (argmax in the label set) and top-1 against the single
label. Records every run and the difference (multi - single) per seed with its mean and spread in
``benchmarks/train_demo.json``. Runs resume where they stopped (each keeps its checkpoint under ``--root``).

    python benchmarks/train_demo.py [--root DIR] [--train 512] [--val 256] [--seeds 0,1,2,3,4] [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset

from multilabel_imagenet import targets
from multilabel_imagenet.builder import demo, synthetic
from multilabel_imagenet.evaluation import Benchmark
from multilabel_imagenet.training import Recipe
from multilabel_imagenet.training.loop import TrainConfig, train

SCHEMES = ("one_hot", "local_soft+original")
METRICS = (
    "map_per_sample",
    "map_macro",
    "multilabel_top1",
    "top1",
    "map_per_sample_k1",
    "map_per_sample_k2",
    "map_per_sample_k3",
    "map_per_sample_k4plus",
)


def synthetic_benchmark(scenes: Path) -> tuple[Benchmark, list[Path]]:
    """The validation scenes as a benchmark: ground-truth label sets, the single label as the original label."""
    rows = [json.loads(line) for line in (scenes / "ground_truth" / "validation.jsonl").read_text().splitlines()]
    sets = np.zeros((len(rows), 1000), dtype=bool)
    for i, row in enumerate(rows):
        sets[i, row["labels"]] = True
    original = np.array([row["label"] for row in rows], dtype=np.int64)
    bench = Benchmark("synthetic-val", tuple(r["path"] for r in rows), "multilabel", "synthetic", sets, original)
    return bench, [scenes / "val" / r["path"] for r in rows]


def target_quality(folder: Path, scenes: Path) -> dict:
    """How close each scheme's training targets (> 0.5) come to the train scenes' ground truth."""
    rows = load_dataset(str(folder), "labels", split="train")
    out = {}
    for scheme in SCHEMES:
        predicted = {}
        for r in rows:
            target = targets.dense_target(
                scheme, r["soft_classes"], r["soft_scores"], r["label"], r["global_classes"], r["global_scores"]
            )
            predicted[r["image_id"]] = np.flatnonzero(target > 0.5).tolist()
        out[scheme] = synthetic.label_quality(predicted, scenes / "ground_truth" / "train.jsonl")
    return out


def _code_version() -> str:
    """The commit the package was imported from (a git checkout, or a COMMIT file beside an exported tree)."""
    package = Path(demo.__file__).resolve().parents[2]
    if (package / "COMMIT").is_file():
        return (package / "COMMIT").read_text().strip()
    try:
        out = subprocess.run(
            ["git", "-C", str(package), "describe", "--always", "--dirty"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("train-demo"))
    parser.add_argument("--train", type=int, default=512, help="Training scenes.")
    parser.add_argument("--val", type=int, default=256, help="Held-out validation scenes.")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--channels", default="32,64,128,256", help="ResNet stage widths (ResNet-18: 64,...,512).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine 2 threads ran 4x slower)"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("train_demo.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    folder = demo.build_synthetic_demo(args.root, args.train, args.val)
    build_seconds = time.perf_counter() - start
    scenes = args.root / demo.DEMO_SCENES
    bench, paths = synthetic_benchmark(scenes)
    channels = tuple(int(c) for c in args.channels.split(","))
    recipe = Recipe(
        epochs=args.epochs,
        batch_size=args.batch_size,
        img_size=args.img_size,
        warmup_epochs=max(1, round(args.epochs * 5 / 100)),  # the paper's 5 of 100 epochs
        scale=(0.25, 1.0),
    )
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for scheme in SCHEMES:
            config = TrainConfig(
                dataset=str(folder),
                images=str(scenes),
                model=args.model,
                model_kwargs={"channels": list(channels), "stem_width": channels[0]},
                output=str(args.root / "runs" / f"{scheme}-seed{seed}"),
                scheme=scheme,
                recipe=recipe,
                seed=seed,
                workers=args.workers,
                log_every=0,
            )
            t0 = time.perf_counter()
            result = train(config, resume=True, benchmarks={bench.name: (bench, paths)}, echo=print)
            scores = result.results[bench.name]
            runs.append(
                {
                    "seed": seed,
                    "scheme": scheme,
                    "train_seconds": round(sum(h["seconds"] for h in result.history), 1),  # also when resumed
                    "seconds_this_call": round(time.perf_counter() - t0, 1),
                    "final_train_loss": result.history[-1]["loss"],
                    **{m: scores[m] for m in METRICS if m in scores},
                }
            )
            print(json.dumps(runs[-1]))
    by = {(r["seed"], r["scheme"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    summary = {}
    for metric in METRICS:
        diffs = [by[s, SCHEMES[1]][metric] - by[s, SCHEMES[0]][metric] for s in seeds if metric in by[s, SCHEMES[0]]]
        summary[metric] = {
            "single_label": spread([by[s, SCHEMES[0]][metric] for s in seeds]),
            "multi_label": spread([by[s, SCHEMES[1]][metric] for s in seeds]),
            "difference_per_seed": diffs,
            "difference": spread(diffs),
        }
    record = {
        "machine": platform.processor() or platform.machine(),
        "code": _code_version(),
        "torch_threads": torch.get_num_threads(),
        "train_scenes": args.train,
        "validation_scenes": args.val,
        "validation_label_counts": {
            str(k): int(v) for k, v in zip(*np.unique(bench.targets.sum(1), return_counts=True), strict=True)
        },
        "build_seconds_this_call": round(build_seconds, 1),
        "train_seconds_total": round(sum(r["train_seconds"] for r in runs), 1),
        "model": f"timm {args.model}, channels {list(channels)}, stem width {channels[0]}, random init",
        "recipe": recipe.to_dict(),
        "schemes": {"single": SCHEMES[0], "multi": SCHEMES[1]},
        "metrics_in_percent": "evaluate() of the sigmoid scores on the held-out validation scenes",
        "training_target_quality_vs_ground_truth": target_quality(folder, scenes),
        "runs": runs,
        "summary": summary,
    }
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    for metric in ("map_per_sample", "map_macro", "multilabel_top1", "top1"):
        d = summary[metric]["difference"]
        print(
            f"{metric}: multi - single = {d['mean']:+.2f} +- {d['std']:.2f} "
            f"(per seed {[round(x, 2) for x in summary[metric]['difference_per_seed']]})"
        )
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

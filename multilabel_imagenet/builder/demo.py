"""The README's first command: the whole build on bundled synthetic scenes, on CPU, in a few minutes."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from multilabel_imagenet.builder import synthetic
from multilabel_imagenet.builder.package import package
from multilabel_imagenet.builder.pipeline import Build
from multilabel_imagenet.builder.settings import CHECKPOINT, STAGES, BuildConfig, BuildInputs
from multilabel_imagenet.progress import bar as progress_bar

DEMO_SCENES = "scenes"
"""Folder of :func:`build_synthetic_demo`'s root holding its scenes, beside the dataset folder."""
DEMO_SCENES_DONE = "classes.json"
"""The file :func:`synthetic.write_mini_imagenet` writes last: its presence means the scenes are complete."""


def build_synthetic_demo(
    root: str | Path,
    num_train: int = 64,
    num_val: int = 32,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    config: BuildConfig | None = None,
) -> Path:
    """The README's first command: synthetic scenes -> the whole build on CPU -> ``<root>/multilabel-imagenet``.

    Writes the scenes to ``<root>/scenes`` (reused when complete), works in ``<root>/work`` (resumable), builds the
    train split (select on the synthetic ReLabel maps, train the labeler) and the validation split (reusing the
    labeler), and packages both. ``config`` replaces the ``synthetic`` preset (e.g. another labeler training)."""
    root = Path(root)
    scenes = root / DEMO_SCENES
    if not (scenes / DEMO_SCENES_DONE).is_file():
        with progress_bar(total=num_train + num_val, desc="synthetic scenes", unit="img", progress=progress) as bar:
            synthetic.write_mini_imagenet(scenes, num_train, num_val, seed, progress=bar.update)
    config = config or BuildConfig.preset("synthetic")
    output, work = root / "multilabel-imagenet", root / "work"
    train = BuildInputs(scenes / "train", "train", output, work, relabel_maps=scenes / "relabel_maps", device=device)
    train_build = Build(train, config, progress=progress)
    train_build.run(STAGES[:-1])
    val = BuildInputs(
        scenes / "val",
        "validation",
        output,
        work,
        labels=scenes / "val_labels.txt",
        labeler_checkpoint=work / CHECKPOINT,
        device=device,
    )
    val_build = Build(val, config, progress=progress)
    val_build.run(("discover", "label"))
    package(work, output, config)
    if progress:
        tqdm.write(train_build.summary() + "\n" + val_build.summary())
    return output

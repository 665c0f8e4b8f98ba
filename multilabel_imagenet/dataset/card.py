"""The dataset card: README.md rendered from ``cards/dataset_card.md`` with huggingface_hub's card API.

The YAML header carries the Hub metadata (licence terms, task categories, size, source datasets) and what
``datasets`` needs to load the folder without a script: ``configs`` (data files per config and split, ``labels``
the default) and ``dataset_info`` (features and split sizes). The prose takes the build parameters and statistics
from ``metadata/build.json``; the label-count figure is drawn with PIL into ``metadata/label_counts.png``.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from multilabel_imagenet.dataset import schema, writer

TEMPLATE = Path(__file__).resolve().parent / "templates" / "dataset_card.md"  # also at <repo>/cards/
FIGURE = "metadata/label_counts.png"
REPO_PLACEHOLDER = "<org>/multilabel-imagenet"
PAPER_TABLE5 = {"0": 0.0059, "1": 0.789, "2": 0.178, "3": 0.025, ">=4": 0.0028, "mean": 1.23}
"""The paper's Table 5: label-count distribution of the ImageNet train set at tau = 0.5."""
_BUCKETS = ("0", "1", "2", "3", ">=4")


class CardError(ValueError):
    """A dataset card is missing or lacks what ``datasets`` needs; the message names the file."""


def _size_category(num_rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_rows < bound:
            return name
    return "1M<n<10M"


def card_data(manifest: dict) -> DatasetCardData:
    """The card's YAML metadata for a build.json ``manifest``."""
    from datasets import DatasetInfo, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict
    from datasets.utils.metadata import MetadataConfigs

    configs = manifest["configs"]
    largest = max(split["num_rows"] for entry in configs.values() for split in entry["splits"].values())
    data = DatasetCardData(
        pretty_name="Multi-label ImageNet",
        license="other",
        license_name="imagenet-terms-of-access",
        license_link="https://image-net.org/download.php",
        task_categories=["image-classification"],
        task_ids=["multi-label-image-classification"],
        size_categories=[_size_category(largest)],
        source_datasets=["extended|imagenet-1k"],
        annotations_creators=["machine-generated"],
        tags=["imagenet", "multi-label", "maskcut", "soft-labels", "segmentation-masks"],
    )
    metadata_configs = MetadataConfigs(
        {
            config: {
                **({"default": True} if config == schema.DEFAULT_CONFIG else {}),
                "data_files": [
                    {"split": split, "path": f"data/{config}/{split}-*.parquet"} for split in sorted(entry["splits"])
                ],
            }
            for config, entry in configs.items()
        }
    )
    metadata_configs.to_dataset_card_data(data)
    infos = {}
    for config, entry in configs.items():
        splits = SplitDict()
        for split, info in sorted(entry["splits"].items()):
            splits.add(SplitInfo(name=split, num_bytes=info["num_bytes"], num_examples=info["num_rows"]))
        infos[config] = DatasetInfo(
            features=schema.features(config),
            splits=splits,
            download_size=sum(f["num_bytes"] for s in entry["splits"].values() for f in s["files"]),
            dataset_size=sum(s["num_bytes"] for s in entry["splits"].values()),
        )
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _distribution_rows(manifest: dict) -> list[dict]:
    labels = manifest["configs"].get("labels")
    if labels is None:
        return []
    rows = []
    for split, info in sorted(labels["splits"].items()):
        dist = info["statistics"]["label_count_distribution"]
        rows.append({"name": f"this release, {split}", "dist": dist})
    rows.append({"name": "paper, Table 5 (train)", "dist": PAPER_TABLE5})
    return [
        {
            "name": row["name"],
            **{f"k{i}": _percent(row["dist"][b]) for i, b in enumerate(_BUCKETS)},
            "mean": f"{row['dist']['mean']:.2f}",
        }
        for row in rows
    ]


def draw_label_counts(series: dict[str, dict[str, float]], path: str | Path) -> Path:
    """A grouped bar chart (PNG) of label-count distributions: ``series`` maps a name to Table-5-style buckets."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, bottom, top = 720, 400, 60, 50, 40
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_h = height - top - bottom
    draw.line([(left, top), (left, height - bottom), (width - 10, height - bottom)], fill="black")
    for tick in range(0, 101, 20):
        y = height - bottom - plot_h * tick / 100
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((8, y - 6), f"{tick}%", fill="black", font=font)
    group_w = (width - left - 20) / len(_BUCKETS)
    bar_w = group_w * 0.8 / max(1, len(series))
    for b, bucket in enumerate(_BUCKETS):
        x0 = left + 10 + b * group_w
        label = f"k{bucket}" if bucket.startswith(">") else f"k={bucket}"
        draw.text((x0 + group_w * 0.3, height - bottom + 8), label, fill="black", font=font)
        for s, values in enumerate(series.values()):
            bar_top = height - bottom - plot_h * values[bucket]
            draw.rectangle([x0 + s * bar_w, bar_top, x0 + (s + 1) * bar_w - 2, height - bottom], fill=colours[s % 4])
    for s, name in enumerate(series):
        draw.rectangle([width - 260, 10 + 16 * s, width - 250, 20 + 16 * s], fill=colours[s % 4])
        draw.text((width - 244, 8 + 16 * s), name, fill="black", font=font)
    draw.text((left, 10), "Images by number of labels (score > 0.5)", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def render_card(folder: str | Path, repo_id: str | None = None, template: str | Path = TEMPLATE) -> DatasetCard:
    """The card for the dataset folder (reads its build.json); draws the label-count figure into the folder."""
    folder = Path(folder)
    manifest = writer.read_build_json(folder)
    if not Path(template).is_file():
        raise CardError(f"{template}: dataset card template not found")
    distribution = _distribution_rows(manifest)
    if distribution:
        labels = manifest["configs"]["labels"]["splits"]
        series = {f"this release, {s}": i["statistics"]["label_count_distribution"] for s, i in sorted(labels.items())}
        draw_label_counts({**series, "paper, Table 5": PAPER_TABLE5}, folder / FIGURE)
    builds = [{"config": config, **entry["build"]} for config, entry in manifest["configs"].items()]
    split_rows = [
        {"config": config, "split": split, "num_rows": info["num_rows"], "num_files": len(info["files"])}
        for config, entry in manifest["configs"].items()
        for split, info in sorted(entry["splits"].items())
    ]
    data = card_data(manifest)
    return DatasetCard.from_template(
        data,
        template_path=str(template),
        version=manifest["version"],
        fingerprint=manifest["fingerprint"],
        repo_id=repo_id or REPO_PLACEHOLDER,
        split_rows=split_rows,
        builds=builds,
        distribution=distribution,
        threshold=schema.LABEL_THRESHOLD,
        figure=FIGURE,
    )


def write_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """Render the card and write it to ``folder/README.md``; return the path."""
    path = Path(folder) / "README.md"
    path.write_text(str(render_card(folder, repo_id)) + "\n", encoding="utf-8")
    return path


def read_configs(folder: str | Path) -> dict[str, dict]:
    """The ``configs`` of ``folder/README.md`` as ``{config: {"default": bool, "data_files": [...]}}``.

    Raises :class:`CardError` naming the file when the card is missing, has no YAML header or has no ``configs``.
    """
    path = Path(folder) / "README.md"
    if not path.is_file():
        raise CardError(f"{path}: missing; a dataset folder needs a card with `configs` in its YAML header")
    try:
        data = DatasetCard.load(path).data
    except ValueError as err:
        raise CardError(f"{path}: unreadable YAML header ({err})") from None
    configs = data.to_dict().get("configs")
    if not configs:
        raise CardError(
            f"{path}: the YAML header has no `configs`; datasets cannot find the Parquet files "
            "(rewrite the card with `multilabel_imagenet.dataset.card.write_card`)"
        )
    return {c["config_name"]: {k: v for k, v in c.items() if k != "config_name"} for c in configs}

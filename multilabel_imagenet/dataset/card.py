"""The dataset card: README.md rendered from ``cards/dataset_card.md`` with huggingface_hub's card API.

The YAML header carries the Hub metadata (licence terms, task categories, size, source datasets) and what
``datasets`` needs to load the folder without a script: ``configs`` (data files per config and split, ``labels``
the default) and ``dataset_info`` (features and split sizes). The prose takes the build parameters and statistics
from ``metadata/build.json``; the label-count figure is drawn with PIL into ``metadata/label_counts.png``.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from multilabel_imagenet import atomic
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


def label_counts_png(series: dict[str, dict[str, float]]) -> bytes:
    """A grouped bar chart (PNG bytes) of label-count distributions: ``series`` maps a name to Table-5-style
    buckets. The same series give the same bytes."""
    import io

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
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def draw_label_counts(series: dict[str, dict[str, float]], path: str | Path) -> Path:
    """:func:`label_counts_png` written (atomically) to ``path``."""
    return atomic.write_bytes(path, label_counts_png(series))


def figure_png(manifest: dict) -> bytes | None:
    """The label-count figure of a build.json ``manifest`` (PNG bytes), or None without a ``labels`` config."""
    labels = manifest["configs"].get("labels")
    if labels is None:
        return None
    series = {
        f"this release, {s}": i["statistics"]["label_count_distribution"] for s, i in sorted(labels["splits"].items())
    }
    return label_counts_png({**series, "paper, Table 5": PAPER_TABLE5})


def render_card(folder: str | Path, repo_id: str | None = None, template: str | Path = TEMPLATE) -> DatasetCard:
    """The card for the dataset folder (reads its build.json); writes nothing (the figure: :func:`figure_png`)."""
    folder = Path(folder)
    manifest = writer.read_build_json(folder)
    if not Path(template).is_file():
        raise CardError(f"{template}: dataset card template not found")
    distribution = _distribution_rows(manifest)
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


def card_bytes(card: DatasetCard) -> bytes:
    """The README.md bytes of a rendered card."""
    return (str(card) + "\n").encode("utf-8")


def write_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """Render the card and write it to ``folder/README.md`` with its figure (both atomically); return the path."""
    folder = Path(folder)
    manifest = writer.read_build_json(folder)
    text = card_bytes(render_card(folder, repo_id))
    check_card(text.decode("utf-8"), manifest, folder / "README.md")
    figure = figure_png(manifest)
    if figure is not None:
        atomic.write_bytes(folder / FIGURE, figure)
    return atomic.write_bytes(folder / "README.md", text)


def check_card(text: str, manifest: dict, where: str | Path = "README.md") -> dict:
    """Validate a card's YAML header against the build.json ``manifest`` it describes; return the header.

    The header must parse, and its ``configs`` must name exactly the manifest's configs (``labels`` the default when
    present) with one data-files pattern per split that matches exactly the Parquet files build.json lists for that
    split; ``dataset_info`` must give each config the schema's features and each split build.json's row count. This
    is what ``datasets`` reads to find and type the files, so a card that passes cannot point a loader at the wrong
    shards. Raises :class:`CardError` naming ``where`` and the field.
    """
    import fnmatch

    from datasets import Features

    try:
        data = DatasetCard(text, ignore_metadata_errors=False).data.to_dict()
    except ValueError as err:
        raise CardError(f"{where}: unreadable YAML header ({err})") from None
    configs = {c.get("config_name"): c for c in data.get("configs") or [] if isinstance(c, dict)}
    expected = manifest["configs"]
    if set(configs) != set(expected):
        raise CardError(f"{where}: `configs` names {sorted(configs)}, build.json has {sorted(expected)}")
    defaults = sorted(name for name, c in configs.items() if c.get("default"))
    want_default = [schema.DEFAULT_CONFIG] if schema.DEFAULT_CONFIG in expected else []
    if defaults != want_default:
        raise CardError(f"{where}: default config is {defaults or 'none'}, expected {want_default or 'none'}")
    all_files = {f["path"] for entry in expected.values() for s in entry["splits"].values() for f in s["files"]}
    info_list = data.get("dataset_info") or []
    info_list = [info_list] if isinstance(info_list, dict) else info_list  # one config: a mapping, not a list
    infos = {i.get("config_name", "default"): i for i in info_list if isinstance(i, dict)}
    for name, entry in expected.items():
        data_files = configs[name].get("data_files")
        patterns = {d["split"]: d["path"] for d in data_files} if isinstance(data_files, list) else {}
        if set(patterns) != set(entry["splits"]):
            raise CardError(
                f"{where}: config {name!r} has data_files for {sorted(patterns)}, build.json for "
                f"{sorted(entry['splits'])}"
            )
        for split, info in entry["splits"].items():
            matched = {p for p in all_files if any(fnmatch.fnmatchcase(p, q) for q in _as_list(patterns[split]))}
            listed = {f["path"] for f in info["files"]}
            if matched != listed:
                raise CardError(
                    f"{where}: config {name!r} split {split!r}: data_files {patterns[split]!r} match "
                    f"{sorted(matched)}, build.json lists {sorted(listed)}"
                )
        if name not in infos:
            raise CardError(f"{where}: `dataset_info` has no entry for config {name!r}")
        try:
            features = Features._from_yaml_list(infos[name]["features"])
        except (KeyError, TypeError, ValueError) as err:
            raise CardError(f"{where}: config {name!r}: unreadable features in `dataset_info` ({err})") from None
        if features != schema.features(name):
            raise CardError(f"{where}: config {name!r}: the features in `dataset_info` are not the {name} schema")
        rows = {s.get("name"): s.get("num_examples") for s in infos[name].get("splits") or []}
        want = {split: info["num_rows"] for split, info in entry["splits"].items()}
        if rows != want:
            raise CardError(f"{where}: config {name!r}: `dataset_info` gives rows {rows}, build.json {want}")
    return data


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


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

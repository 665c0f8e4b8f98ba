"""Classic `datasets` loading script for Multi-label ImageNet, for users pinned to datasets < 4.

datasets >= 4 loads the dataset without this script, from the Parquet files and the card's YAML. This script reads
the same files; it lives in `loading_script/` because datasets >= 4 refuses a script at a dataset's root.

    from huggingface_hub import snapshot_download
    from datasets import load_dataset

    root = snapshot_download("<org>/multilabel-imagenet", repo_type="dataset", revision="v1.0.0")
    ds = load_dataset(f"{root}/loading_script/multilabel_imagenet.py", "labels", split="train",
                      data_dir="/data/imagenet", trust_remote_code=True)

Configs: `labels` (default) and `proposals`. `data_dir` (optional, `labels` only) is an ImageNet root holding
`train/<wnid>/<file>` and `val/<file>`; it adds an `image` column. `data_root` (a config keyword) points at the
dataset folder or a Hub `resolve/<revision>` URL when the script is not inside that folder.
"""

import json
import os

import datasets
import pyarrow.parquet as pq

_DESCRIPTION = (
    "Multi-label, spatially grounded annotations for the ImageNet-1k images: MaskCut object proposals (COCO RLE) "
    "scored by a region labeler, and image-level soft labels aggregated from them (arXiv:2603.05729)."
)
_CITATION = """@article{chen2026multilabelimagenet,
  title   = {Unlocking ImageNet's Multi-Object Nature: Automated Large-Scale Multilabel Annotation},
  author  = {Chen, Junyu and Harun, Md Yousuf and Kanan, Christopher},
  journal = {arXiv preprint arXiv:2603.05729},
  year    = {2026}
}"""
_LICENSE = "ImageNet terms of access: non-commercial research and educational use"
_SPLITS = {"train": datasets.Split.TRAIN, "validation": datasets.Split.VALIDATION}
_IMAGE_DIRS = {"train": "train", "validation": "val"}


class MultilabelImagenetConfig(datasets.BuilderConfig):
    """A config of the dataset; ``data_root`` overrides where the dataset folder is (default: this file's parent)."""

    def __init__(self, data_root=None, **kwargs):
        super().__init__(**kwargs)
        self.data_root = data_root


class MultilabelImagenet(datasets.GeneratorBasedBuilder):
    """Multi-label ImageNet: configs `labels` (soft labels per image) and `proposals` (masks per image)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = MultilabelImagenetConfig
    BUILDER_CONFIGS = [
        MultilabelImagenetConfig(name="labels", version=VERSION, description="Image-level soft labels."),
        MultilabelImagenetConfig(name="proposals", version=VERSION, description="Object proposals with top-k."),
    ]
    DEFAULT_CONFIG_NAME = "labels"

    def _root(self):
        if self.config.data_root:
            return str(self.config.data_root).rstrip("/")
        if not self.base_path:
            raise ValueError("cannot locate the dataset folder: pass data_root=<folder or Hub resolve URL>")
        return os.path.dirname(os.path.abspath(self.base_path))

    def _manifest(self, dl_manager):
        path = dl_manager.download(f"{self._root()}/metadata/build.json")
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if self.config.name not in manifest["configs"]:
            raise ValueError(f"{path}: this release has no {self.config.name!r} config")
        return manifest

    def _features(self, dl_manager):
        """The config's features from the card's YAML (the Parquet files carry datasets>=4 type names)."""
        from datasets.info import DatasetInfosDict
        from huggingface_hub import DatasetCard

        readme = dl_manager.download(f"{self._root()}/README.md")
        infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(readme).data)
        if self.config.name not in infos or infos[self.config.name].features is None:
            raise ValueError(f"{readme}: no dataset_info features for config {self.config.name!r}")
        return infos[self.config.name].features

    def _info(self):
        return datasets.DatasetInfo(description=_DESCRIPTION, citation=_CITATION, license=_LICENSE)

    def _split_generators(self, dl_manager):
        manifest = self._manifest(dl_manager)
        splits = manifest["configs"][self.config.name]["splits"]
        files = {
            split: dl_manager.download([f"{self._root()}/{entry['path']}" for entry in info["files"]])
            for split, info in sorted(splits.items())
        }
        features = self._features(dl_manager)
        if self.config.data_dir:
            if self.config.name != "labels":
                raise ValueError("data_dir (an ImageNet root) only applies to the `labels` config")
            features["image"] = datasets.Image()
        self.info.features = features
        return [
            datasets.SplitGenerator(name=_SPLITS[split], gen_kwargs={"files": paths, "split": split})
            for split, paths in files.items()
        ]

    def _generate_examples(self, files, split):
        image_root = None
        if self.config.data_dir:
            image_root = os.path.join(os.path.expanduser(self.config.data_dir), _IMAGE_DIRS[split])
            if not os.path.isdir(image_root):
                raise FileNotFoundError(f"{image_root}: no {split} images under data_dir")
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    if image_root is not None:
                        row["image"] = os.path.join(image_root, row["path"])
                    yield row["image_id"], row

"""The classic loading script under a datasets 3.x release (run by .ci/loading_script_test.sh in its own venv).

Reads a dataset folder written by the project's writer (``MLI_DATASET_FOLDER``) and an ImageNet-style root
(``MLI_IMAGENET_ROOT``) and checks every config and split against the Parquet files themselves. It imports only
datasets, pyarrow and PIL, so it runs where the project is not installed. Skipped under datasets >= 4.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.datasets3
if int(datasets.__version__.split(".")[0]) >= 4:
    pytest.skip("the loading script needs datasets<4: run .ci/loading_script_test.sh", allow_module_level=True)
if not os.environ.get("MLI_DATASET_FOLDER"):
    pytest.skip("set MLI_DATASET_FOLDER (see .ci/loading_script_test.sh)", allow_module_level=True)

FOLDER = Path(os.environ["MLI_DATASET_FOLDER"])
SCRIPT = str(FOLDER / "loading_script" / "multilabel_imagenet.py")


def _parquet_rows(config: str, split: str) -> list[dict]:
    files = sorted((FOLDER / "data" / config).glob(f"{split}-*.parquet"))
    assert files, f"no {config}/{split} shards in {FOLDER}"
    return [row for f in files for row in pq.read_table(f).to_pylist()]


@pytest.mark.parametrize("config", ["labels", "proposals"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_script_reads_every_config_and_split(config, split, tmp_path):
    ds = datasets.load_dataset(SCRIPT, config, split=split, cache_dir=str(tmp_path), trust_remote_code=True)
    expected = _parquet_rows(config, split)
    assert len(expected) > 0 and list(ds) == expected
    if config == "labels":
        assert ds.features["label"].names[134] == "crane (n02012849)"
        assert ds.features["labels"][0].names[999] == "toilet tissue"  # a list feature in datasets 3


def test_default_config_is_labels(tmp_path):
    ds = datasets.load_dataset(SCRIPT, split="train", cache_dir=str(tmp_path), trust_remote_code=True)
    assert "soft_scores" in ds.column_names


def test_data_dir_attaches_images(tmp_path):
    root = os.environ["MLI_IMAGENET_ROOT"]
    for split in ("train", "validation"):
        ds = datasets.load_dataset(
            SCRIPT, "labels", split=split, data_dir=root, cache_dir=str(tmp_path), trust_remote_code=True
        )
        for row in ds:
            assert row["image"].size == (row["width"], row["height"])
    with pytest.raises(ValueError, match="only applies to the `labels` config"):
        datasets.load_dataset(
            SCRIPT, "proposals", split="train", data_dir=root, cache_dir=str(tmp_path), trust_remote_code=True
        )

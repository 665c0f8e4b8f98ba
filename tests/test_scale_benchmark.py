"""benchmarks/scale.py at a tiny size: every measurement runs, the report has its fields, the Parquet round-trips."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
SIZES = (300, 600)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    out = tmp / "scale.json"
    sizes = ",".join(map(str, SIZES))
    cmd = [sys.executable, str(SCRIPT), "--sizes", sizes, "--work", str(tmp), "--keep", "--out", str(out)]
    done = subprocess.run([*cmd, "--items", "64", "--batch", "32", "--pool", "40"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), tmp


@pytest.mark.slow
def test_every_measurement_succeeds(report):
    result, _ = report
    assert {"machine", "settings", "sizes", "growth"} <= set(result)
    for n in SIZES:
        size = result["sizes"][str(n)]
        assert size["train"] == n and size["validation"] == 300
        assert size["generate"]["masks"] >= n and size["generate"]["coco_json_mb"] > 0
        failed = {name: run["error"][-500:] for name, run in size["runs"].items() if "error" in run}
        assert not failed, failed
        runs = size["runs"]
        for name in (
            "package",
            "import_tsv",
            "import_cutler",
            "open_plain",
            "open_crop",
            "open_crop_warm",
            "targets",
            "workers_crop",
        ):
            assert runs[name]["seconds"] > 0 and runs[name]["peak_rss_mb"] > 0 and runs[name]["disk_read_mb"] >= 0, name
        speed = runs["targets"]["us_per_item"]
        assert len(speed) == 7 and "local_soft+original+crop" in speed and min(speed.values()) > 0
        assert runs["targets"]["repeats"] == 3 and set(runs["targets"]["page_faults_per_item"]) == set(speed)
        assert len(runs["workers_crop"]["workers"]) == 2
    growth = result["growth"][f"{SIZES[0]}->{SIZES[1]}"]
    assert growth["size"] == 2 and {"seconds", "peak_rss"} <= set(growth["package"])


@pytest.mark.slow
def test_parquet_layout_and_round_trip(report):
    result, tmp = report
    for n in SIZES:
        layout = result["sizes"][str(n)]["layout"]
        expected = {
            "dataset": {"labels/train": n, "labels/validation": 300, "proposals/train": n, "proposals/validation": 300},
            "tsv": {"labels/train": n},
            "cutler": {"proposals/train": n},
        }
        for folder, splits in expected.items():
            for key, rows in splits.items():
                entry = layout[folder][key]
                assert entry["rows"] == rows and entry["shards"] >= 1 and 1 in entry["shards_divide_gpu_counts"]
                assert 0 < entry["row_group_mb_max"] < 286
                config, split = key.split("/")
                files = sorted((tmp / str(n) / folder / "data" / config).glob(f"{split}-*.parquet"))
                assert sum(pq.read_table(f).num_rows for f in files) == rows
        labels = pq.read_table(sorted((tmp / str(n) / "dataset" / "data" / "labels").glob("train-*"))[0])
        assert labels.column("image_id")[0].as_py().startswith("n01440764_")

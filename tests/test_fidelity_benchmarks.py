"""benchmarks/precision_flips.py and benchmarks/solver_agreement.py at a tiny size: they run and report their fields."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, out: Path, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--out", str(out), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_precision_flips_compares_fp32_and_bf16_graphs_and_masks(tmp_path):
    """The paper's architectures (random weights, one block) at 112 px on one image, both LayerScale settings."""
    report = _run("precision_flips.py", tmp_path / "flips.json", "--size", "112", "--depth", "1", "--images", "1")
    rows = report["results"]
    assert [(r["config"], r["layer_scale"]) for r in rows] == [
        ("dinov3_b16", "init"),
        ("dinov3_b16", "1"),
        ("dinov2_g14", "init"),
        ("dinov2_g14", "1"),
        ("dinov2_l14", "init"),
        ("dinov2_l14", "1"),
        ("dino_b8", None),  # no LayerScale: one run
    ]
    patch = {"dinov3_b16": 16, "dinov2_g14": 14, "dinov2_l14": 14, "dino_b8": 8}
    for row in rows:
        (image,) = row["per_image"]
        assert row["depth"] == 1 and row["grid"] == [112 // patch[row["config"]]] * 2
        assert 0 <= row["flip_fraction"] <= 1 and image["flips"] <= image["pairs"]
        assert image["cos_error_max"] >= image["cos_error_mean"] >= 0
        assert len(image["mask_ious"]) == row["n"] and set(row["seconds_per_image"]) == {"fp32", "bf16"}
    assert report["device"] == "cpu" and report["weights"].startswith("random")


def test_solver_agreement_reports_each_seed_rule(tmp_path):
    report = _run("solver_agreement.py", tmp_path / "agreement.json", "--limit", "2")
    assert set(report["sets"]) == {"varied", "twins", "tiny"}
    for rules in report["sets"].values():
        assert set(rules) == {"exact_argmax", "exact_argmax_fast_only", "tie_rtol_1e-4", "published_vs_tie_rtol"}
        assert all(r["maps"] == 2 and 0 <= r["maps_identical"] <= 2 for r in rules.values())
        assert rules["exact_argmax"]["graphs_solved_again"] >= 0

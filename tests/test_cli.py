import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from multilabel_imagenet import __version__
from multilabel_imagenet.cli import main


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "multilabel_imagenet", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_classes_command():
    runner = CliRunner()
    result = runner.invoke(main, ["classes", "goldfish"])
    assert result.exit_code == 0 and result.output == "1\tn01443537\tgoldfish, Carassius auratus\n"
    assert len(runner.invoke(main, ["classes"]).output.splitlines()) == 1000
    missing = runner.invoke(main, ["classes", "unicorn"])
    assert missing.exit_code != 0 and "no ImageNet-1k class matches 'unicorn'" in missing.output


def test_synthetic_then_images_check(tmp_path):
    runner = CliRunner()
    out = tmp_path / "mini"
    result = runner.invoke(main, ["synthetic", str(out), "--train", "4", "--val", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 train and 2 validation scenes" in result.output
    result = runner.invoke(main, ["images", str(out / "train"), "--check"])
    assert result.exit_code == 0 and "4 images (train layout), 4 with an original label" in result.output
    assert "4 decoded, 0 failed" in result.output
    result = runner.invoke(main, ["images", str(out / "val"), "--labels", str(out / "val_labels.txt")])
    assert "2 images (val layout), 2 with an original label" in result.output


def test_images_check_reports_bad_files_and_exits_nonzero(tmp_path):
    runner = CliRunner()
    runner.invoke(main, ["synthetic", str(tmp_path / "mini"), "--train", "3", "--val", "0"])
    train = tmp_path / "mini" / "train"
    victim = sorted(train.rglob("*.JPEG"))[1]
    victim.write_bytes(victim.read_bytes()[:300])
    errors = tmp_path / "errors.jsonl"
    result = runner.invoke(main, ["images", str(train), "--check", "--errors", str(errors)])
    assert result.exit_code == 1
    assert "2 decoded, 1 failed" in result.output and victim.name in result.output
    (record,) = [json.loads(line) for line in errors.read_text().splitlines()]
    assert record["image_id"] == victim.stem and record["path"].endswith(victim.name)


def test_images_bad_layout_is_a_clean_error(tmp_path):
    (tmp_path / "cats").mkdir()
    result = CliRunner().invoke(main, ["images", str(tmp_path), "--layout", "train"])
    assert result.exit_code == 1 and "folders must be ImageNet-1k wnids" in result.output
    assert "Traceback" not in result.output


def test_package_level_load_is_the_dataset_loader():
    import multilabel_imagenet
    from multilabel_imagenet.dataset.loading import load

    assert multilabel_imagenet.load is load
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        multilabel_imagenet.nothing  # noqa: B018

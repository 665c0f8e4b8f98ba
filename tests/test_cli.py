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


def test_debug_shows_the_traceback_behind_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    args = ["import", "tsv", str(empty), "--output", str(tmp_path / "out")]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 1 and "Traceback" not in plain.output
    assert plain.output.startswith("Error: ") and len(plain.output.strip().splitlines()) == 1, plain.output
    for runner, extra in ((CliRunner(), ["--debug"]), (CliRunner(env={"MLIN_DEBUG": "1"}), [])):
        debug = runner.invoke(main, [*extra, *args])
        assert debug.exit_code == 1 and "Traceback (most recent call last)" in debug.output
        assert debug.output.strip().splitlines()[-1] == plain.output.strip()


def test_progress_bars_and_log_level_follow_the_switches(monkeypatch):
    import logging

    from multilabel_imagenet import progress

    logger = logging.getLogger("multilabel_imagenet")
    try:
        assert CliRunner().invoke(main, ["-vv", "classes", "goldfish"]).exit_code == 0
        assert logger.level == logging.DEBUG and progress.enabled()
        assert CliRunner().invoke(main, ["-v", "classes", "goldfish"]).exit_code == 0
        assert logger.level == logging.INFO
        assert CliRunner().invoke(main, ["--quiet", "classes", "goldfish"]).exit_code == 0
        assert logger.level == logging.ERROR and not progress.enabled() and progress.bar(total=3).disable
        progress.configure()
        assert logger.level == logging.WARNING and progress.enabled() and not progress.enabled(False)
        for name in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            with monkeypatch.context() as env:
                env.setenv(name, "1")
                assert not progress.enabled() and progress.bar(total=3).disable
    finally:
        progress.configure()


def _choices(path: list[str], option: str) -> tuple[str, ...]:
    command = main
    for name in path:
        command = command.commands[name]
    return tuple(next(p for p in command.params if p.name == option).type.choices)


def test_option_choices_written_out_in_the_cli_agree_with_the_modules():
    # the CLI spells some choices out so that `--help` does not import the builder or torch; they must not drift
    from multilabel_imagenet import targets
    from multilabel_imagenet.builder import settings
    from multilabel_imagenet.training import loop

    assert _choices(["build", "config"], "profile") == tuple(settings.PROFILES)
    assert _choices(["train"], "profile") == targets.PROFILES
    assert _choices(["train"], "amp") == loop.AMP_MODES
    for preset in _choices(["build", "config"], "preset"):
        assert settings.BuildConfig.preset(preset).dumps("json")

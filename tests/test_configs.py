"""MaskCut configurations as data: the paper's preset, validation, and the `configs` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from multilabel_imagenet.builder import configs
from multilabel_imagenet.cli import main


def test_paper_preset_is_supp_a2():
    rows = [(c.name, c.backbone, c.feature, c.input_size, c.tau, c.n, c.crf) for c in configs.preset("paper")]
    assert rows == [
        ("dinov3_b16", "vit_base_patch16_dinov3.lvd1689m", "v", 768, 0.35, 4, False),
        ("dinov2_g14", "vit_giant_patch14_reg4_dinov2.lvd142m", "v", 672, 0.12, 3, True),
        ("dinov2_l14", "vit_large_patch14_reg4_dinov2.lvd142m", "v", 448, 0.12, 3, True),
        ("dino_b8", "vit_base_patch8_224.dino", "k", 480, 0.15, 3, True),
    ]
    assert configs.MaskCutConfig(**configs.PAPER[0].to_dict()) == configs.PAPER[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("feature", "x", "feature"),
        ("input_size", 0, "input_size"),
        ("tau", 1.5, "tau"),
        ("n", 0, "n must"),
        ("seed_tie_rtol", -1e-4, "seed_tie_rtol"),
    ],
)
def test_invalid_configurations_name_the_field(field, value, message):
    kwargs = configs.PAPER[3].to_dict() | {field: value}
    with pytest.raises(ValueError, match=message):
        configs.MaskCutConfig(**kwargs)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown MaskCut preset"):
        configs.preset("nope")


def test_configs_command_prints_the_preset():
    result = CliRunner().invoke(main, ["configs", "paper"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 5 and lines[4].split("\t") == [
        "dino_b8",
        "vit_base_patch8_224.dino",
        "k",
        "480",
        "0.15",
        "3",
        "torch",
    ]
    assert lines[1].split("\t")[-1] == "off"  # dinov3_b16: no CRF (Supp. A.2)
    assert CliRunner().invoke(main, ["configs", "nope"]).exit_code != 0


def test_build_profiles_set_their_settings_and_explicit_ones_win():
    from multilabel_imagenet.builder.settings import BuildConfig

    paper = BuildConfig()
    assert paper.profile == "paper" and paper.resample == "bilinear" and paper.select_mode == "paper"
    assert paper.labeler_config().training == "online" and paper.labeler_config().pooling == "features"
    authors = BuildConfig.from_dict({"profile": "authors"})
    lab = authors.labeler_config()
    assert (authors.resample, authors.select_mode) == ("cv2_linear", "authors")
    assert (lab.pooling, lab.patch_rule, lab.drop_rule, lab.training) == ("logits", "bilinear", "bernoulli", "online")
    mixed = BuildConfig.from_dict({"profile": "authors", "resample": "bilinear", "labeler": {"pooling": "features"}})
    assert mixed.resample == "bilinear" and mixed.labeler_config().pooling == "features"
    assert mixed.labeler_config().drop_rule == "bernoulli" and mixed.select_mode == "authors"
    assert BuildConfig.from_dict(json.loads(authors.dumps("json"))) == authors
    demo = BuildConfig.preset("synthetic").with_profile("authors")
    assert demo.labeler_config().backbone == "colour-texture" and demo.labeler_config().pooling == "logits"
    assert demo.with_profile("paper").labeler_config().pooling == "features"
    with pytest.raises(ValueError, match="profile must be one of"):
        BuildConfig.from_dict({"profile": "cutler"})
    printed = CliRunner().invoke(main, ["build", "config", "--profile", "authors", "--format", "json"])
    assert printed.exit_code == 0 and BuildConfig.from_dict(json.loads(printed.output)) == authors

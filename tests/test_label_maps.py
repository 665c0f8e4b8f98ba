"""ReLabel-style label maps from our labeler (Supp. F.3), written for a folder of images."""

import json

import torch
from click.testing import CliRunner

from multilabel_imagenet import images
from multilabel_imagenet.builder import backbones, labeler, relabel_maps, synthetic
from multilabel_imagenet.cli import main


def test_label_maps_command_writes_readable_maps_and_resumes(tmp_path):
    root = synthetic.write_mini_imagenet(tmp_path / "scenes", num_train=3, num_val=0)
    records = images.open_source(root / "train")
    records[0].full_path.write_bytes(records[0].full_path.read_bytes()[:100])
    config = labeler.LabelerConfig(backbone="colour-texture", input_size=128, hidden=16)
    in_dim = backbones.load_backbone("colour-texture", "patch")(torch.zeros(1, 3, 128, 128)).shape[-1]
    torch.manual_seed(0)
    checkpoint = tmp_path / "head.safetensors"
    labeler.save_checkpoint(checkpoint, labeler.LabelerHead(in_dim, 16, 1000), config)
    out = tmp_path / "maps"
    args = ["label-maps", "--images", str(root / "train"), "--checkpoint", str(checkpoint), "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 maps written, 0 already there, 1 images failed" in result.output
    for record in records[1:]:
        label_map = relabel_maps.read_map(relabel_maps.map_path(out, record.path))
        assert label_map.shape == (2, 5, 15, 15)
    (failure,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert failure["image_id"] == records[0].image_id
    again = CliRunner().invoke(main, args)
    assert "0 maps written, 2 already there, 1 images failed" in again.output

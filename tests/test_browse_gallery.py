"""`multilabel-imagenet show`: the static gallery, rendered in headless Chromium and checked as displayed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from browse_support import browser_or_skip, chromium, demo_dataset, full_page_screenshot
from click.testing import CliRunner
from PIL import Image
from test_dataset_support import BUILD

from multilabel_imagenet import classes
from multilabel_imagenet.browse import gallery, overlay, source
from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import loading, schema, writer
from multilabel_imagenet.evaluation.benchmarks import NUM_VAL_IMAGES

TENCH = 0  # a class no synthetic scene has


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    folder, labels, proposals = demo_dataset(root)
    rows = {split: [schema.labels_row(r) for r in labels[split]] for split in labels}
    val = rows["validation"]
    sets = [[] for _ in range(NUM_VAL_IMAGES)]
    sets[0] = [val[0]["labels"][0], TENCH]  # confirms one of our labels, lacks the others, adds tench
    sets[1] = list(val[1]["labels"])  # confirms all
    sets[3] = [val[3]["label"]]  # only the original label; image 2 stays unscored
    real = root / "real.json"
    real.write_text(json.dumps(sets))
    return {"root": root, "folder": folder, "rows": rows, "proposals": proposals, "real": real, "sets": sets}


@pytest.fixture(scope="module")
def browser():
    browser_or_skip()
    with chromium() as driver:
        yield driver


CARDS_JS = """
return [...document.querySelectorAll('article.card')].map(card => {
  const img = card.querySelector('img.overlay');
  const marks = (el, kind) => [...el.querySelectorAll('.mark.' + kind)].map(m => m.dataset.benchmark);
  return {
    id: card.dataset.imageId,
    split: card.dataset.split,
    loaded: img !== null && img.complete && img.naturalWidth > 0,
    naturalWidth: img ? img.naturalWidth : 0,
    src: img ? img.getAttribute('src') : null,
    original: card.querySelector('.original').innerText,
    rows: [...card.querySelectorAll('table.soft tr[data-class]')].map(tr => ({
      cls: Number(tr.dataset.class), kind: tr.className, name: tr.cells[0].innerText, score: tr.cells[1].innerText,
      confirmed: marks(tr, 'confirmed'), lacking: marks(tr, 'lacking')})),
    benchmark: [...card.querySelectorAll('p.benchmark')].map(p => p.innerText),
    masks: [...card.querySelectorAll('li.mask')].map(li => ({source: li.dataset.source, text: li.innerText})),
  };
});
"""


def _show(*args: str) -> str:
    result = CliRunner().invoke(main, ["show", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_gallery_shows_masks_labels_and_real_agreement(demo, browser, tmp_path):
    out = tmp_path / "gallery"
    output = _show(
        str(demo["folder"]), "--output", str(out), "-b", "real", "--benchmark-labels", f"real={demo['real']}"
    )
    assert "10 images (10 pass the filters)" in output  # no --images: the demo's scenes were found
    browser.get((out / "index.html").as_uri())
    cards = browser.execute_script(CARDS_JS)
    full_page_screenshot(browser, tmp_path / "gallery.png")
    rows = {r["image_id"]: (split, r) for split, rs in demo["rows"].items() for r in rs}
    masks = {p.image_id: p.masks for split in demo["proposals"].values() for p in split}
    assert sorted(c["id"] for c in cards) == sorted(rows)
    for card in cards:
        split, row = rows[card["id"]]
        assert card["split"] == split and card["loaded"], card
        png = Image.open(out / card["src"])
        assert card["naturalWidth"] == png.width == round(row["width"] * min(1, 480 / max(row["width"], row["height"])))
        assert card["original"].startswith(f"original: {classes.name_of(row['label'])}")
        shown = list(zip(row["soft_classes"], row["soft_scores"], strict=True))[:5]
        assert [(r["cls"], r["name"], r["score"]) for r in card["rows"]] == [
            (c, classes.name_of(c), f"{np.float32(s):.2f}")
            for c, s in shown  # stored as float32
        ]
        assert [r["kind"] for r in card["rows"]] == ["label" if c in row["labels"] else "below" for c, _ in shown]
        assert [m["source"] for m in card["masks"]] == [m.source for m in masks[card["id"]]]
        for m, stored in zip(card["masks"], masks[card["id"]], strict=True):
            assert f"{classes.name_of(stored.classes[0])} {np.float16(stored.scores[0]):.2f}" in m["text"]
        pixels = np.asarray(png)
        for i in range(len(masks[card["id"]])):  # each mask's outline is drawn in its own palette colour
            assert (pixels == overlay.colour(i)).all(-1).any(), (card["id"], i)
        real = set(demo["sets"][int(card["id"][-8:]) - 1]) if split == "validation" else None
        if not real:
            assert all(not r["confirmed"] and not r["lacking"] for r in card["rows"])
            assert card["benchmark"] == (["real: no label for this image (not scored)"] if real is not None else [])
            continue
        for r in card["rows"]:
            assert r["confirmed"] == (["real"] if r["cls"] in real else [])
            assert r["lacking"] == (["real"] if r["cls"] in row["labels"] and r["cls"] not in real else [])
        extra = ", ".join(classes.name_of(c) for c in sorted(real - set(row["labels"]))) or "none"
        assert card["benchmark"] == [f"real also has: {extra}"]
    first = next(c for c in cards if c["id"] == "ILSVRC2012_val_00000001")
    assert any(r["lacking"] for r in first["rows"]) and any(r["confirmed"] for r in first["rows"])
    assert "tench" in first["benchmark"][0]


def test_filters_pick_multi_label_and_disagreeing_images(demo, browser, tmp_path):
    every = [r for rs in demo["rows"].values() for r in rs]
    cases = {
        ("--min-labels", "2"): {r["image_id"] for r in every if len(r["labels"]) >= 2},
        ("--disagreeing",): {r["image_id"] for r in every if r["soft_classes"] and r["soft_classes"][0] != r["label"]},
    }
    for args, expected in cases.items():
        assert 0 < len(expected) < len(every), "the synthetic records must exercise the filter"
        out = tmp_path / args[0].strip("-")
        _show(str(demo["folder"]), "--output", str(out), *args)
        browser.get((out / "index.html").as_uri())
        cards = browser.execute_script(CARDS_JS)
        assert {c["id"] for c in cards} == expected, args
        assert all(c["loaded"] for c in cards)
    picked = sorted(cases[("--disagreeing",)])[:1] + ["ILSVRC2012_val_00000002"]
    output = _show(str(demo["folder"]), "--output", str(tmp_path / "ids"), "--ids", ",".join(picked), "--disagreeing")
    browser.get((tmp_path / "ids" / "index.html").as_uri())
    shown = [c["id"] for c in browser.execute_script(CARDS_JS)]
    if picked[1] in cases[("--disagreeing",)]:
        assert shown == picked
    else:
        assert shown == picked[:1] and f"do not pass the filters: {picked[1]}" in output


def test_sample_is_seeded_and_output_folders_are_guarded(demo, tmp_path):
    view = source.DatasetView(demo["folder"], cache_dir=tmp_path / "cache")
    splits = list(schema.SPLITS)
    picked, matched, _ = gallery.choose(view, splits, gallery.Filters(), sample=3, seed=7)
    assert picked == gallery.choose(view, splits, gallery.Filters(), sample=3, seed=7)[0]
    assert len(picked) == 3 and matched == 10 and picked == sorted(picked)
    assert gallery.choose(view, splits, gallery.Filters(), sample=50)[0] == [("train", i) for i in range(6)] + [
        ("validation", i) for i in range(4)
    ]
    _show(str(demo["folder"]), "--output", str(tmp_path / "a"), "--sample", "3", "--seed", "7")
    expected = sorted(demo["rows"][split][row]["image_id"] for split, row in picked)
    assert sorted(p.stem for p in (tmp_path / "a" / "images").rglob("*.png")) == expected
    _show(str(demo["folder"]), "--output", str(tmp_path / "a"), "--sample", "1")  # a previous gallery is replaced
    assert len(list((tmp_path / "a" / "images").rglob("*.png"))) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = CliRunner().invoke(main, ["show", str(demo["folder"]), "--output", str(tmp_path / "mine")])
    assert refused.exit_code != 0 and "not empty and not a gallery" in refused.output
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    unknown = CliRunner().invoke(main, ["show", str(demo["folder"]), "--output", str(tmp_path / "u"), "--ids", "nope"])
    assert unknown.exit_code != 0 and "no image nope in the train/validation split(s)" in unknown.output


def test_images_root_is_required_unless_the_dataset_is_the_demo(demo, tmp_path):
    folder = tmp_path / "other" / "multilabel-imagenet"
    labels = {
        "validation": [
            schema.ImageLabels(r["image_id"], r["path"], r["label"], r["width"], r["height"])
            for r in demo["rows"]["validation"]
        ]
    }
    writer.write_dataset(folder, BUILD, labels=labels)  # labels only, from another build: no image root recorded
    result = CliRunner().invoke(main, ["show", str(folder), "--output", str(tmp_path / "g")])
    assert result.exit_code != 0 and "does not record where its images are; pass --images" in result.output
    _show(str(folder), "--output", str(tmp_path / "g"), "--images", str(demo["root"] / "scenes"))
    assert len(list((tmp_path / "g" / "images" / "validation").glob("*.png"))) == 4
    moved = CliRunner().invoke(main, ["show", str(folder), "--output", str(tmp_path / "h"), "--images", str(tmp_path)])
    assert moved.exit_code != 0 and "not found (is --images the folder holding train/ and val/?)" in moved.output
    shutil.copytree(demo["root"] / "scenes" / "val", tmp_path / "copy" / "val")
    broken = tmp_path / "copy" / "val" / demo["rows"]["validation"][1]["path"]
    broken.write_bytes(broken.read_bytes()[:200])
    _show(str(folder), "--output", str(tmp_path / "h"), "--images", str(tmp_path / "copy"))
    page = (tmp_path / "h" / "index.html").read_text()
    assert page.count('<img class="overlay"') == 3 and f'<p class="error">{broken}: cannot decode' in page


def test_hub_repo_ids_need_a_revision_and_load_through_datasets(demo, tmp_path, monkeypatch):
    import datasets

    result = CliRunner().invoke(main, ["show", "org/multilabel-imagenet", "--output", str(tmp_path / "g")])
    assert result.exit_code != 0 and "pass revision=" in result.output
    calls = []

    def local(function):
        def redirected(location, *args, revision=None, **kwargs):
            calls.append((function.__name__, location, revision))
            return function(str(demo["folder"]), *args, **kwargs)

        return redirected

    for name in ("load_dataset", "get_dataset_config_names", "get_dataset_split_names"):
        monkeypatch.setattr(datasets, name, local(getattr(datasets, name)))
    # load() resolves the revision on the Hub first; here the "Hub" is the local folder
    monkeypatch.setattr(loading, "pin_revision", lambda repo_id, revision, *args: ("f" * 40, True))
    args = ["org/multilabel-imagenet", "--revision", "v1.0.0", "--images", str(demo["root"] / "scenes")]
    output = _show(*args, "--output", str(tmp_path / "g"), "--split", "validation")
    assert "4 images" in output
    assert {c[1:] for c in calls} == {("org/multilabel-imagenet", "v1.0.0")}
    assert {c[0] for c in calls} == {"load_dataset", "get_dataset_config_names", "get_dataset_split_names"}

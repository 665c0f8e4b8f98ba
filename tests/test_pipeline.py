"""The build end to end on small synthetic scenes: CLI, errors, resume, --shard, Ray, determinism."""

import hashlib
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from datasets import load_dataset
from fault_support import fail_reads
from pycocotools import mask as mask_utils

from multilabel_imagenet import classes
from multilabel_imagenet.builder import loaders, package, pipeline, settings, shards, synthetic
from multilabel_imagenet.builder.labeler import LabelerConfig
from multilabel_imagenet.cli import main


def _small_config() -> settings.BuildConfig:
    """The synthetic preset at 128 px and a short labeler schedule, so a build takes seconds."""
    config = settings.BuildConfig.preset("synthetic")
    maskcut = [asdict(c) | {"input_size": 128} for c in config.maskcut_configs()]
    labeler = asdict(LabelerConfig(backbone="colour-texture", input_size=128, epochs=30, batch_size=16))
    return replace(config, maskcut=maskcut, labeler=labeler, shard_size=3, batch_size=4)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    synthetic.write_mini_imagenet(root, num_train=8, num_val=4, seed=0)
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "build.yaml"
    path.write_text(_small_config().dumps("yaml"))
    return path


def _train_args(scenes: Path, out: Path, config_file: Path) -> list[str]:
    """The options of a train-split build of ``scenes`` into ``out``."""
    return [
        "--images",
        str(scenes / "train"),
        "--relabel-maps",
        str(scenes / "relabel_maps"),
        "--output",
        str(out),
        "--config",
        str(config_file),
        "--quiet",
    ]


def _cli_build(scenes: Path, out: Path, config_file: Path, *extra: str) -> None:
    runner = CliRunner()
    train = ["build", *_train_args(scenes, out, config_file), *extra]
    result = runner.invoke(main, train)
    assert result.exit_code == 0, result.output
    val = [
        "build",
        "--images",
        str(scenes / "val"),
        "--split",
        "validation",
        "--labels",
        str(scenes / "val_labels.txt"),
        "--output",
        str(out),
        "--config",
        str(config_file),
        "--quiet",
        "--labeler-checkpoint",
        str(out.with_name(out.name + "-work") / settings.CHECKPOINT),
        *extra,
    ]
    result = runner.invoke(main, val)
    assert result.exit_code == 0, result.output
    assert "dataset written to" in result.output and "load_dataset(" in result.output


def _data_files(folder: Path) -> dict[str, bytes]:
    files = sorted(folder.glob("data/**/*.parquet"))
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def reference(scenes, config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "dataset"
    _cli_build(scenes, out, config_file)
    return out


def test_build_writes_a_dataset_that_loads(reference, scenes):
    labels = load_dataset(str(reference), "labels")
    assert labels["train"].num_rows == 8 and labels["validation"].num_rows == 4
    truth = {
        json.loads(line)["image_id"]: json.loads(line) for line in (scenes / "ground_truth" / "train.jsonl").open()
    }
    for row in labels["train"]:
        t = truth[row["image_id"]]
        assert row["label"] == t["label"] and (row["width"], row["height"]) == (t["width"], t["height"])
        assert list(row["soft_scores"]) == sorted(row["soft_scores"], reverse=True)
    proposals = load_dataset(str(reference), "proposals", split="validation")
    n_masks = 0
    for row in proposals:
        for m in row["masks"]:
            decoded = mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()})
            assert decoded.shape == (row["height"], row["width"]) and decoded.sum() == m["area"]
            assert m["source"] == "colour_texture" and len(m["classes"]) == 10
            n_masks += 1
    assert n_masks > 0
    build = json.loads((reference / "metadata" / "build.json").read_text())
    assert build["version"] == "1.0.0" and "fingerprint" in build
    assert (reference / "metadata" / "errors.jsonl").is_file()


def test_same_inputs_give_identical_dataset_after_a_kill(reference, scenes, config_file, tmp_path, monkeypatch):
    out = tmp_path / "dataset"
    calls = {"n": 0}
    original = shards.StageDir.write

    def killed_after_two_shards(self, index, rows, count=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed in the middle of a stage
        return original(self, index, rows, count)

    monkeypatch.setattr(shards.StageDir, "write", killed_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        config = settings.BuildConfig.load(config_file)
        inputs = settings.BuildInputs(
            scenes / "train", "train", out, tmp_path / "dataset-work", relabel_maps=scenes / "relabel_maps"
        )
        pipeline.Build(inputs, config, progress=False).run()
    monkeypatch.undo()
    done = sorted(p.name for p in (tmp_path / "dataset-work" / "discover" / "train").glob("*.jsonl"))
    assert len(done) == 2, "two complete shards survive the kill, the third was never renamed into place"
    _cli_build(scenes, out, config_file)  # the same command again resumes
    assert _data_files(out) == _data_files(reference)
    build, ref = (json.loads((d / "metadata" / "build.json").read_text()) for d in (out, reference))
    assert build["fingerprint"] == ref["fingerprint"]


def test_independent_shard_workers_give_the_same_dataset(reference, scenes, config_file, tmp_path):
    out = tmp_path / "dataset"
    runner = CliRunner()
    common = _train_args(scenes, out, config_file)
    for worker in ("1/2", "0/2"):
        result = runner.invoke(main, ["build", "discover", *common, "--shard", worker])
        assert result.exit_code == 0, result.output
    work = tmp_path / "dataset-work" / "discover" / "train"
    assert len(list(work.glob("*.jsonl"))) == 3
    _cli_build(scenes, out, config_file)
    assert _data_files(out) == _data_files(reference)


def test_ray_runner_gives_the_same_dataset(reference, scenes, config_file, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "dataset"
        _cli_build(scenes, out, config_file, "--runner", "ray")
    finally:
        ray.shutdown()
    assert _data_files(out) == _data_files(reference)


def test_bad_images_and_missing_maps_are_recorded_not_fatal(scenes, config_file, tmp_path):
    copy = tmp_path / "scenes"
    shutil.copytree(scenes, copy)
    victims = sorted((copy / "train").rglob("*.JPEG"))
    victims[0].write_bytes(victims[0].read_bytes()[:200])  # truncated
    maps = sorted((copy / "relabel_maps").rglob("*.pt"))
    maps[-1].unlink()
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["build", *_train_args(copy, out, config_file)])
    assert result.exit_code == 0, result.output
    errors = [json.loads(line) for line in (out / "metadata" / "errors.jsonl").read_text().splitlines()]
    by_stage = {(e["stage"], e["image_id"]): e["reason"] for e in errors}
    assert "cannot decode" in by_stage[("discover", victims[0].stem)]
    assert "not found" in by_stage[("select", maps[-1].stem)]
    labels = load_dataset(str(out), "labels", split="train")
    assert labels.num_rows == 7 and victims[0].stem not in labels["image_id"]
    build = json.loads((out / "metadata" / "build.json").read_text())
    assert build["configs"]["labels"]["build"]["parameters"]["errors"] == len(errors)


def test_config_round_trip_and_errors(tmp_path):
    runner = CliRunner()
    printed = runner.invoke(main, ["build", "config", "--format", "json"])
    assert printed.exit_code == 0
    data = json.loads(printed.output)
    assert data["tau_sel"] == 0.75 and data["labeler"]["patch_drop"] == 0.25 and data["maskcut_preset"] == "paper"
    assert settings.BuildConfig.from_dict(data) == settings.BuildConfig()
    assert [c.name for c in settings.BuildConfig().maskcut_configs()] == [
        "dinov3_b16",
        "dinov2_g14",
        "dinov2_l14",
        "dino_b8",
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("tau_sel: 0.75\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown build settings \['learning_rate'\]"):
        settings.BuildConfig.load(bad)
    bad.write_text("labeler: {lr: 0.1, hidden_size: 3}\n")
    with pytest.raises(ValueError, match="unknown labeler settings"):
        settings.BuildConfig.load(bad)


def test_work_dir_refuses_other_settings(scenes, config_file, tmp_path):
    config = settings.BuildConfig.load(config_file)
    inputs = settings.BuildInputs(scenes / "train", "train", tmp_path / "out", tmp_path / "work")
    pipeline.Build(inputs, config, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        pipeline.Build(inputs, replace(config, tau_sel=0.5), progress=False)
    pipeline.Build(inputs, replace(config, num_workers=3, crf_workers=2), progress=False)  # speed only: accepted
    with pytest.raises(ValueError, match="relabel-maps"):
        pipeline.Build(inputs, config, progress=False).select()
    with pytest.raises(FileNotFoundError, match="no labeler checkpoint"):
        pipeline.Build(inputs, config, progress=False).label()


def test_work_dir_stamp_names_a_changed_precision_or_device_type(scenes, config_file, tmp_path):
    """The stamp records the backbones' precision and the device type; resuming with another stops, naming it."""
    config = settings.BuildConfig.load(config_file)
    assert config.precision == "fp32" and settings.BuildConfig.preset("paper").precision == "fp32"
    inputs = settings.BuildInputs(scenes / "train", "train", tmp_path / "out", tmp_path / "work", device="cpu")
    pipeline.Build(inputs, config, progress=False)
    stamp_file = tmp_path / "work" / "build-train.json"
    stamp = json.loads(stamp_file.read_text())
    assert stamp["config"]["precision"] == "fp32" and stamp["device"] == "cpu"
    assert stamp["maskcut_configs"][0]["seed_tie_rtol"] == 0.0
    with pytest.raises(ValueError, match=r"other settings or images \(config\.precision: 'fp32' there, 'bf16' now\)"):
        pipeline.Build(inputs, replace(config, precision="bf16"), progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        replace(config, precision="fp16")

    stamp_file.write_text(json.dumps(stamp | {"device": "cuda"}))
    build = pipeline.Build(inputs, config, progress=False)  # no model runs yet: select / package may run here
    with pytest.raises(ValueError, match="ran its models on cuda, this process on cpu.*--device cuda"):
        build.discover()
    args = ["build", "discover", *_train_args(scenes, tmp_path / "out", config_file)]
    result = CliRunner().invoke(main, [*args, "--work-dir", str(tmp_path / "work"), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and "ran its models on cuda, this process on cpu" in result.output

    old = {k: v for k, v in stamp.items() if k not in ("device", "maskcut_configs")}  # written before they existed
    old["config"] = {k: v for k, v in stamp["config"].items() if k != "precision"}
    stamp_file.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="config.precision: absent there, 'fp32' now; maskcut_configs: absent"):
        pipeline.Build(inputs, config, progress=False)


def test_package_calibrates_ambiguity_on_real_when_asked(reference, config_file, tmp_path):
    config = replace(settings.BuildConfig.load(config_file), ambiguity_calibration="real")
    out = package.package(reference.with_name(reference.name + "-work"), tmp_path / "dataset", config)
    stored = json.loads((out / settings.AMBIGUITY_JSON).read_text())
    assert len(stored["pairs"]) == 35 and stored["images"] > 0
    from multilabel_imagenet.builder.aggregate import Ambiguity

    assert Ambiguity.from_dict(stored).pairs[0] == (classes.index_of("n04355933"), classes.index_of("n04356056"))
    assert not (reference / settings.AMBIGUITY_JSON).exists(), "the synthetic preset does not calibrate"
    with pytest.raises(ValueError, match="ambiguity_calibration must be one of"):
        replace(config, ambiguity_calibration="coco")


def test_discover_can_import_cutler_proposals(scenes, config_file, tmp_path):
    truth = [json.loads(line) for line in (scenes / "ground_truth" / "train.jsonl").read_text().splitlines()]
    coco = {"images": [], "annotations": []}
    for k, t in enumerate(truth[:-1]):  # the last image is missing from the file
        # CutLER's published JSON swaps each image's width and height.
        coco["images"].append({"id": k, "file_name": t["path"], "width": t["height"], "height": t["width"]})
        for obj in t["objects"]:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": k, "segmentation": obj["mask"]})
    cutler = tmp_path / "imagenet_train_fixsize480_tau0.15_N3.json"
    cutler.write_text(json.dumps(coco))
    out = tmp_path / "dataset"
    result = CliRunner().invoke(
        main, ["build", *_train_args(scenes, out, config_file), "--proposals-from", str(cutler)]
    )
    assert result.exit_code == 0, result.output
    rows = {r["image_id"]: r for r in load_dataset(str(out), "proposals", split="train")}
    assert truth[-1]["image_id"] not in rows
    for t in truth[:-1]:
        row = rows[t["image_id"]]
        assert (row["width"], row["height"]) == (t["width"], t["height"])
        assert [m["counts"] for m in row["masks"]] == [o["mask"]["counts"] for o in t["objects"]]
        assert {m["source"] for m in row["masks"]} == {cutler.stem}
    errors = (out / "metadata" / "errors.jsonl").read_text()
    assert truth[-1]["image_id"] in errors and cutler.name in errors
    # converted once into the work directory; shards read their rows from there
    assert (tmp_path / "dataset-work" / pipeline.IMPORTED_INDEX).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "dataset-work", cutler.name]


@pytest.mark.parametrize("backend", ["torch", "pydensecrf"])
def test_cpu_pools_give_the_same_proposals_as_inline(scenes, config_file, tmp_path, backend):
    """Threads (cpu_threads) and, for pydensecrf, processes (crf_workers) change speed, not proposals."""
    if backend == "pydensecrf":
        pytest.importorskip("pydensecrf", reason="pydensecrf2 (the optional extra: pip install -e '.[pydensecrf]')")
    base = settings.BuildConfig.load(config_file)
    base = replace(base, maskcut=[c | {"crf_backend": backend} for c in base.maskcut], cpu_threads=0, crf_workers=0)

    def discover(config: settings.BuildConfig, name: str) -> list[bytes]:
        inputs = settings.BuildInputs(scenes / "train", "train", tmp_path / name, tmp_path / f"{name}-work")
        pipeline.Build(inputs, config, progress=False).run(("discover",))
        return [p.read_bytes() for p in sorted((tmp_path / f"{name}-work" / "discover" / "train").glob("*.jsonl"))]

    inline = discover(base, "inline")
    assert inline and b'"counts"' in b"".join(inline)
    assert discover(replace(base, cpu_threads=2, crf_workers=2), "pooled") == inline


def _records_with_a_corrupt_file(scenes: Path, tmp_path: Path) -> list:
    from multilabel_imagenet import images

    root = tmp_path / "train"
    shutil.copytree(scenes / "train", root)
    victim = sorted(root.rglob("*.JPEG"))[2]
    victim.write_bytes(b"not a jpeg")
    return images.open_source(root), victim


@pytest.mark.parametrize("workers", [0, 2])
def test_discover_records_decodes_once_per_image_and_reports_failures(scenes, tmp_path, workers):
    import numpy as np

    from multilabel_imagenet import images
    from multilabel_imagenet.builder import backbones, configs, maskcut, proposals

    records, victim = _records_with_a_corrupt_file(scenes, tmp_path)
    (base,) = configs.preset("synthetic")
    cfgs = [replace(base, input_size=128), replace(base, name="at_64", input_size=64, crf=False)]
    ex = backbones.load_backbone(base.backbone, base.feature)
    out = list(loaders.discover_records(records, maskcut.Ensemble(cfgs, [ex, ex]), 3, workers))
    assert sorted(j for j, _, _ in out) == list(range(len(records)))
    failed = [(j, found) for j, size, found in out if size is None]
    assert [records[j].full_path for j, _ in failed] == [victim] and "not a recognised image" in failed[0][1]
    first = next(j for j, size, _ in out if size is not None)
    image = np.asarray(images.decode_image(records[first].full_path))
    alone = proposals.merge([maskcut.discover([image], c, ex)[0] for c in cfgs])
    assert dict((j, p) for j, _, p in out)[first] == alone


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_discover_records_on_cuda_with_pinned_batches(scenes, tmp_path):
    from multilabel_imagenet.builder import backbones, configs, maskcut
    from multilabel_imagenet.builder.crf import mask_iou

    records, _ = _records_with_a_corrupt_file(scenes, tmp_path)
    (base,) = configs.preset("synthetic")
    cfg = replace(base, input_size=128)
    ex = backbones.load_backbone(base.backbone, base.feature)
    cpu = {j: p for j, _, p in loaders.discover_records(records, maskcut.Ensemble([cfg], [ex]), 3, 0)}
    cuda = {j: p for j, _, p in loaders.discover_records(records, maskcut.Ensemble([cfg], [ex], "cuda"), 3, 2, True)}
    assert cpu.keys() == cuda.keys()
    pairs = [(a, b) for j in cpu if not isinstance(cpu[j], str) for a, b in zip(cpu[j], cuda[j], strict=True)]
    assert pairs and min(mask_iou(a.decode(), b.decode()) for a, b in pairs) > 0.9


def test_listing_and_summary_come_from_the_work_dir(reference, scenes, config_file, monkeypatch):
    """A second process on a work directory neither rescans the images nor re-reads shard payloads to count."""
    work = reference.with_name(reference.name + "-work")
    assert (work / "images-train.parquet").is_file()
    found = shards.StageDir(work, "discover", "train", 3)
    assert all(found.counts_path(i).is_file() for i in range(3))

    def no_scan(*args, **kwargs):
        raise AssertionError("the image folder was scanned again")

    def no_read(self, index):
        raise AssertionError(f"shard {index} of {self.stage} was re-read")

    monkeypatch.setattr(pipeline.listing.images, "iter_source", no_scan)
    monkeypatch.setattr(shards.StageDir, "read", no_read)
    inputs = settings.BuildInputs(scenes / "train", "train", reference, work, relabel_maps=scenes / "relabel_maps")
    build = pipeline.Build(inputs, settings.BuildConfig.load(config_file), progress=False)
    assert [r.path for r in build.records] == sorted(r.path for r in build.records) and len(build.records) == 8
    assert build.records[-1].full_path.is_file() and len(build.shards[2]) == 2
    summary = build.summary()
    totals = [json.loads(found.counts_path(i).read_text()) for i in range(3)]
    assert f"discover: 8 images, {sum(t['proposals'] for t in totals)} proposals" in summary


def test_package_records_an_image_that_failed_to_be_labelled(reference, config_file, tmp_path):
    """An image decoded at discover but not at label is left out of both configs and recorded, not fatal."""
    work = tmp_path / "work"
    shutil.copytree(reference.with_name(reference.name + "-work"), work)
    labelled = shards.StageDir(work, "label", "train", 3)
    rows = labelled.read(0)
    rows[1] = {"image_id": rows[1]["image_id"], "error": "decode: truncated file"}
    labelled.write(0, rows)
    out = package.package(work, tmp_path / "dataset", settings.BuildConfig.load(config_file))
    errors = [json.loads(line) for line in (out / "metadata/errors.jsonl").open()]
    failed = [e for e in errors if e["stage"] == "label"]
    assert failed == [
        {**failed[0], "split": "train", "image_id": rows[1]["image_id"], "reason": "decode: truncated file"}
    ]
    for config in ("labels", "proposals"):
        ids = load_dataset(str(out), config, split="train")["image_id"]
        assert len(ids) == 7 and rows[1]["image_id"] not in ids


def test_train_labeler_online_and_cached_record_images_that_no_longer_decode(scenes, config_file, tmp_path):
    """Online (the paper, default) streams the selected samples into one file and trains on augmented images;
    cached pools features once. Either records an image that decoded at discover but not now, once."""
    import pyarrow as pa

    from multilabel_imagenet.builder import labeler

    copy = tmp_path / "scenes"
    shutil.copytree(scenes, copy)
    config = settings.BuildConfig.load(config_file)
    assert config.labeler_config().training == "online"
    inputs = settings.BuildInputs(copy / "train", "train", tmp_path / "out", tmp_path / "work", copy / "relabel_maps")
    build = pipeline.Build(inputs, config, progress=False)
    build.run(("discover", "select"))
    chosen = [r for i in range(3) for r in build.stage("select").read(i) if r["samples"]]
    victim = next(r for r in build.records if r.image_id == chosen[0]["image_id"])
    victim.full_path.write_bytes(victim.full_path.read_bytes()[:300])
    build.train_labeler()
    work = tmp_path / "work"
    samples = pa.ipc.open_file(pa.memory_map(str(work / "labeler" / "samples.arrow"))).read_all()
    assert samples.num_rows == sum(len(r["samples"]) for r in chosen) and not (work / "labeler" / "cache").exists()
    log = (work / "labeler" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == config.labeler_config().epochs
    errors = [json.loads(line) for line in (work / settings.LABELER_ERRORS).read_text().splitlines()]
    assert [(e["stage"], e["image_id"]) for e in errors] == [("train-labeler", victim.image_id)]

    cached = replace(config, labeler=config.labeler | {"training": "cached"})
    for stage in ("discover", "select"):
        shutil.copytree(work / stage, tmp_path / "work-cached" / stage)
    inputs = replace(inputs, work_dir=tmp_path / "work-cached")
    pipeline.Build(inputs, cached, progress=False).train_labeler()
    assert (tmp_path / "work-cached" / "labeler" / "cache").is_dir()
    errors = (tmp_path / "work-cached" / settings.LABELER_ERRORS).read_text().splitlines()
    assert [json.loads(e)["image_id"] for e in errors] == [victim.image_id]
    for folder, training in ((work, "online"), (tmp_path / "work-cached", "cached")):
        assert labeler.load_checkpoint(folder / settings.CHECKPOINT)[1].training == training


def _odd_and_bad_images(folder: Path) -> dict[str, str]:
    """Files that every large image folder has somewhere, named as ImageNet names them: ``{stem: kind}``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    kinds = {}

    def save(kind: str, image: Image.Image, fmt: str) -> None:
        stem = f"{folder.name}_odd_{len(kinds)}"
        image.save(folder / f"{stem}.JPEG", fmt)
        kinds[stem] = kind

    save("greyscale", Image.fromarray(rng.integers(0, 255, (96, 120), dtype=np.uint8), "L"), "JPEG")
    save("LA", Image.new("LA", (80, 64), (128, 200)), "PNG")
    save("1-bit", Image.fromarray(rng.random((70, 90)) > 0.5), "PNG")
    save("1x1", Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")
    save("2x2", Image.new("RGB", (2, 2), (250, 0, 0)), "JPEG")
    save("flat", Image.new("RGB", (160, 120), (90, 90, 90)), "JPEG")
    save("bomb", Image.new("1", (13_000, 13_000)), "PNG")  # > PIL's 89.5 M pixels, < 2x: a warning made an error
    for kind, data in (("zero-byte", b""), ("random", rng.bytes(5000))):
        stem = f"{folder.name}_bad_{len(kinds)}"
        (folder / f"{stem}.JPEG").write_bytes(data)
        kinds[stem] = kind
    return kinds


def test_a_folder_of_bad_and_odd_images_builds_and_records_each(scenes, config_file, tmp_path):
    """Issue 16 items 1, 11: undecodable files and valid images that yield no proposal (greyscale, LA, 1-bit,
    1x1, 2x2, flat) share batches with normal images; the build finishes, every one is in errors.jsonl or has
    its proposals, and the normal images are untouched."""
    copy = tmp_path / "scenes"
    shutil.copytree(scenes, copy)
    folder = sorted(p for p in (copy / "train").iterdir() if p.is_dir())[0]
    kinds = _odd_and_bad_images(folder)
    maps = copy / "relabel_maps" / folder.name
    for stem in kinds:  # any map will do: what is asked is that discover and label survive these images
        shutil.copy(next(maps.glob("*.pt")), maps / f"{stem}.pt")
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["build", *_train_args(copy, out, config_file)])
    assert result.exit_code == 0, result.output
    errors = {e["image_id"]: e for e in map(json.loads, (out / "metadata" / "errors.jsonl").open())}
    for stem in ("zero-byte", "random", "bomb"):
        stem = next(s for s, k in kinds.items() if k == stem)
        assert errors[stem]["stage"] == "discover" and errors[stem]["reason"].startswith("decode: ")
    assert "decompression bomb" in errors[next(s for s, k in kinds.items() if k == "bomb")]["reason"]
    proposals = load_dataset(str(out), "proposals", split="train")
    stored = dict(zip(proposals["image_id"], proposals["masks"], strict=True))
    for stem, kind in kinds.items():
        assert stem in errors or stored.get(stem), f"{kind} image {stem} neither recorded nor stored"
        if kind not in ("zero-byte", "random", "bomb"):  # valid images: decoded, at most without a proposal
            assert stored.get(stem) or errors[stem]["reason"] == "no proposal", (kind, errors[stem])
    normal = {p.stem for p in (scenes / "train").rglob("*.JPEG")}
    assert normal <= set(stored) and not normal & set(errors)


def test_entries_the_scan_cannot_list_are_recorded_not_lost(scenes, config_file, tmp_path):
    """Issue 16 item 11: broken and looping symbolic links named .JPEG and a file name that is not UTF-8 are
    recorded with stage `list` (they used to vanish, or kill `package` with 'surrogates not allowed')."""
    import os

    copy = tmp_path / "scenes"
    shutil.copytree(scenes, copy)
    folder = sorted(p for p in (copy / "train").iterdir() if p.is_dir())[0]
    (folder / "broken.JPEG").symlink_to(folder / "gone.JPEG")
    (folder / "loop_a.JPEG").symlink_to(folder / "loop_b.JPEG")
    (folder / "loop_b.JPEG").symlink_to(folder / "loop_a.JPEG")
    image = sorted(folder.glob("n*.JPEG"))[0]
    shutil.copy(image, folder / os.fsdecode(b"caf\xe9.JPEG"))  # Latin-1, not UTF-8
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["build", *_train_args(copy, out, config_file)])
    assert result.exit_code == 0, result.output
    listed = [e for e in map(json.loads, (out / "metadata" / "errors.jsonl").open()) if e["stage"] == "list"]
    reasons = {e["path"]: e["reason"] for e in listed}
    assert reasons.keys() == {
        f"{folder.name}/{n}" for n in ("broken.JPEG", "loop_a.JPEG", "loop_b.JPEG", "caf\\xe9.JPEG")
    }
    assert reasons[f"{folder.name}/broken.JPEG"].startswith("broken symbolic link")
    assert reasons[f"{folder.name}/loop_a.JPEG"].startswith("symbolic link loop")
    assert "not UTF-8" in reasons[f"{folder.name}/caf\\xe9.JPEG"]
    assert load_dataset(str(out), "labels", split="train").num_rows == 8


def test_a_failed_read_fails_its_shard_and_a_rerun_finishes_it(reference, scenes, config_file, tmp_path, monkeypatch):
    """Issue 16 item 2: EIO on every try is not a bad image: the shard is not written, the error names the file
    and the shard, and a rerun once the file system is back gives the reference dataset."""
    victim = sorted((scenes / "train").rglob("*.JPEG"))[4]  # shard 1 (shard_size 3)
    fail_reads(monkeypatch, victim)
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["build", *_train_args(scenes, out, config_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{victim}: read failed 3 times (EIO" in result.output
    assert "shard 1 of discover was not written, rerun the build to try again" in result.output
    found = shards.StageDir(tmp_path / "dataset-work", "discover", "train", 3)
    assert found.is_complete(0) and not found.is_complete(1)
    monkeypatch.undo()
    _cli_build(scenes, out, config_file)
    assert _data_files(out) == _data_files(reference)


def test_a_torn_work_dir_stamp_names_the_file(scenes, config_file, tmp_path):
    out = tmp_path / "dataset"
    stamp = tmp_path / "dataset-work" / "build-train.json"
    stamp.parent.mkdir()
    stamp.write_text('{"config": {"shard')
    result = CliRunner().invoke(main, ["build", *_train_args(scenes, out, config_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{stamp}: torn or corrupt work-directory stamp" in result.output


def test_retry_errors_redoes_a_fixed_image_and_what_depended_on_it(reference, scenes, config_file, tmp_path):
    """Issue 16 item 2: `build --retry-errors` tries recorded failures again. Still bad: nothing is rewritten.
    Fixed: its shard, the later stages and (its samples changed) the labeler are redone, giving the dataset a
    clean build gives."""
    copy = tmp_path / "scenes"
    shutil.copytree(scenes, copy)
    victim = sorted((copy / "train").rglob("*.JPEG"))[4]
    good = victim.read_bytes()
    victim.write_bytes(good[:200])
    out = tmp_path / "dataset"
    runner = CliRunner()
    assert runner.invoke(main, ["build", *_train_args(copy, out, config_file)]).exit_code == 0
    work = tmp_path / "dataset-work"
    shard = shards.StageDir(work, "discover", "train", 3).path(1)
    stamp = shard.stat().st_mtime_ns
    args = [*_train_args(copy, out, config_file)]
    args.remove("--quiet")
    result = runner.invoke(main, ["build", *args, "--retry-errors"])
    assert result.exit_code == 0, result.output
    assert "discover: 1 shards tried again, 0 changed" in result.output and shard.stat().st_mtime_ns == stamp
    victim.write_bytes(good)
    result = runner.invoke(main, ["build", *args, "--retry-errors"])
    assert result.exit_code == 0, result.output
    assert "discover: 1 shards tried again, 1 changed; select: 1 shards tried again, 1 changed" in result.output
    assert "it is trained again and every shard relabelled" in result.output
    errors = (out / "metadata" / "errors.jsonl").read_text()
    assert victim.stem not in errors
    assert _data_files(out) == {k: v for k, v in _data_files(reference).items() if "validation" not in k}


def test_package_records_what_built_each_split(reference, config_file, tmp_path):
    """Issue 16 item 3: build.json says per split its image count, device type and any setting of its stamp that
    differs from the packaging configuration."""
    build = json.loads((reference / "metadata" / "build.json").read_text())
    splits = build["configs"]["labels"]["build"]["parameters"]["splits"]
    assert splits == {"train": {"images": 8, "device": "cpu"}, "validation": {"images": 4, "device": "cpu"}}
    work = tmp_path / "work"
    shutil.copytree(reference.with_name(reference.name + "-work"), work)
    stamp_file = work / "build-validation.json"
    stamp = json.loads(stamp_file.read_text())
    stamp["config"]["version"] = "0.9.0"  # as if validation had been built by another configuration
    stamp_file.write_text(json.dumps(stamp))
    out = package.package(work, tmp_path / "dataset", settings.BuildConfig.load(config_file))
    build = json.loads((out / "metadata" / "build.json").read_text())
    assert build["configs"]["labels"]["build"]["parameters"]["splits"]["validation"]["config"] == {"version": "0.9.0"}


def test_a_shard_held_by_another_process_and_shard_without_stage_are_refused(scenes, config_file, tmp_path):
    """Issue 16 item 3: a second process on a shard stops naming the holder; `build --shard` names the commands."""
    import socket

    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["build", *_train_args(scenes, out, config_file), "--shard", "0/2"])
    assert result.exit_code == 2 and "`build discover --shard I/N` on every worker" in result.output
    lock = shards.StageDir(tmp_path / "dataset-work", "discover", "train", 3).lock_path(1)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))  # pid 1 is alive
    result = CliRunner().invoke(main, ["build", "discover", *_train_args(scenes, out, config_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{lock}: shard 1 of discover is being computed by pid 1 on {socket.gethostname()}" in result.output
    found = shards.StageDir(tmp_path / "dataset-work", "discover", "train", 3)
    assert found.is_complete(0) and not found.is_complete(1) and lock.is_file()


@pytest.mark.parametrize("stage", ["discover", "label", "package"])
def test_a_full_disk_is_one_line_and_the_rerun_is_identical(
    reference, scenes, config_file, tmp_path, monkeypatch, stage
):
    """Issue 16 item 11: ENOSPC while a stage writes gives one line naming the file, no traceback; once there is
    space again, the same command finishes with the reference's bytes."""
    import errno

    from multilabel_imagenet import atomic

    real_write, real_replace = shards.StageDir.write, atomic.replace

    def full_shard(self, index, rows, count=None):
        if self.stage == stage:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path(index)))
        return real_write(self, index, rows, count)

    def full_dataset(tmp, path):
        if path.suffix == ".parquet":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        return real_replace(tmp, path)

    if stage == "package":
        monkeypatch.setattr(atomic, "replace", full_dataset)
    else:
        monkeypatch.setattr(shards.StageDir, "write", full_shard)
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["build", *_train_args(scenes, out, config_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "No space left on device" in result.output and "rerun the same command" in result.output
    monkeypatch.undo()
    _cli_build(scenes, out, config_file)
    assert _data_files(out) == _data_files(reference)


def test_work_dir_stamp_holds_the_checksum_of_local_weights(scenes, config_file, tmp_path):
    """Issue 16 item 3: weights changed in place (same path, other bytes) are refused, naming the backbone."""
    weights = tmp_path / "dino.safetensors"
    weights.write_bytes(b"first weights")
    config = replace(settings.BuildConfig.load(config_file), weights={"vit_small_patch16_224.dino": str(weights)})
    inputs = settings.BuildInputs(scenes / "train", "train", tmp_path / "out", tmp_path / "work", device="cpu")
    pipeline.Build(inputs, config, progress=False)
    stamp = json.loads((tmp_path / "work" / "build-train.json").read_text())
    assert stamp["weights_sha256"] == {"vit_small_patch16_224.dino": hashlib.sha256(b"first weights").hexdigest()}
    pipeline.Build(inputs, config, progress=False)  # the same bytes: resumes
    weights.write_bytes(b"other weights")
    with pytest.raises(ValueError, match=r"weights_sha256\.vit_small_patch16_224\.dino: '[0-9a-f]+\.\.\. there"):
        pipeline.Build(inputs, config, progress=False)


def test_speed_only_settings_leave_build_json_card_and_fingerprint_alone(reference, config_file, tmp_path):
    """Issue 16 item 11: num_workers, cpu_threads and crf_workers change how fast, not what: packaging with other
    values writes the same build.json (fingerprints included), card and data."""
    work = reference.with_name(reference.name + "-work")
    config = settings.BuildConfig.load(config_file)
    fast = replace(config, num_workers=config.num_workers + 3, cpu_threads=7, crf_workers=5)
    a = package.package(work, tmp_path / "a", config)
    b = package.package(work, tmp_path / "b", fast)
    for name in ("metadata/build.json", "README.md"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert _data_files(a) == _data_files(b)

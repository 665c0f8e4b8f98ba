import errno
import json
import pickle

import numpy as np
import pytest
from fault_support import fail_reads
from PIL import Image

from multilabel_imagenet import classes, images
from multilabel_imagenet.images import ImageDecodeError, SourceError

RNG = np.random.default_rng(0)


def _rgb(h=24, w=32):
    return Image.fromarray(RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _save(image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


# ---------------------------------------------------------------- sources


def test_train_layout(tmp_path):
    for wnid, n in (("n01440764", 2), ("n01443537", 1)):
        for k in range(n):
            _save(_rgb(), tmp_path / wnid / f"{wnid}_{k}.JPEG", format="JPEG")
    (tmp_path / "n01440764" / "notes.txt").write_text("ignored: not an image")
    records = images.open_source(tmp_path)
    assert [(r.image_id, r.path, r.label) for r in records] == [
        ("n01440764_0", "n01440764/n01440764_0.JPEG", 0),
        ("n01440764_1", "n01440764/n01440764_1.JPEG", 0),
        ("n01443537_0", "n01443537/n01443537_0.JPEG", 1),
    ]
    assert records[0].full_path == tmp_path / "n01440764" / "n01440764_0.JPEG"


def test_train_layout_rejects_foreign_folders(tmp_path):
    (tmp_path / "n01440764").mkdir()
    (tmp_path / "cats").mkdir()
    with pytest.raises(SourceError, match="cats"):
        images.train_source(tmp_path)


def _val_folder(tmp_path, n=3):
    for i in range(n):
        _save(_rgb(), tmp_path / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", format="JPEG")
    return tmp_path / "val"


def test_val_flat_with_each_label_format(tmp_path):
    root = _val_folder(tmp_path)
    expected = [65, 970, 230]
    wnids_file = tmp_path / "labels.txt"
    wnids_file.write_text("".join(classes.wnid_of(i) + "\n" for i in expected))
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps(expected))
    kaggle = tmp_path / "LOC_val_solution.csv"
    kaggle.write_text(
        "ImageId,PredictionString\n"
        + "".join(f"ILSVRC2012_val_{i + 1:08d},{classes.wnid_of(c)} 1 2 30 40\n" for i, c in enumerate(expected))
    )
    for labels in (wnids_file, json_file, kaggle):
        records = images.open_source(root, labels=labels)
        assert [r.label for r in records] == expected, labels
        assert records[1].image_id == "ILSVRC2012_val_00000002" and records[1].path == "ILSVRC2012_val_00000002.JPEG"
    assert [r.label for r in images.val_source(root)] == [None, None, None]


def test_devkit_ids_need_meta_mat(tmp_path):
    from scipy.io import savemat

    root = _val_folder(tmp_path, n=2)
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("2\n1\n")
    with pytest.raises(SourceError, match="meta.mat"):
        images.val_source(root, truth)
    # The devkit numbers classes in its own (non-sorted) order: ID 1 -> n02119789, ID 2 -> n02100735.
    synsets = np.zeros(2, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    synsets[0] = (1, "n02119789")
    synsets[1] = (2, "n02100735")
    savemat(tmp_path / "meta.mat", {"synsets": synsets})
    records = images.val_source(root, truth)
    assert [r.label for r in records] == [classes.index_of("n02100735"), classes.index_of("n02119789")]


def test_val_label_errors_name_the_file_and_line(tmp_path):
    root = _val_folder(tmp_path, n=2)
    bad = tmp_path / "labels.txt"
    bad.write_text("n01440764\nnot_a_wnid\n")
    with pytest.raises(SourceError, match=r"labels.txt, line 2: 'not_a_wnid'"):
        images.val_source(root, bad)
    short = tmp_path / "short.txt"
    short.write_text("n01440764\n")
    with pytest.raises(SourceError, match="no label for ILSVRC2012_val_00000002.JPEG"):
        images.val_source(root, short)


def test_val_in_wnid_folders(tmp_path):
    _save(_rgb(), tmp_path / "n01443537" / "ILSVRC2012_val_00000007.JPEG", format="JPEG")
    records = images.val_source(tmp_path)
    assert [(r.image_id, r.label) for r in records] == [("ILSVRC2012_val_00000007", 1)]


def test_imagenetv2_folders_are_integers_not_strings(tmp_path):
    for folder in ("0", "2", "10", "100"):
        _save(_rgb(), tmp_path / folder / f"{folder}abc.jpeg", format="JPEG")
    assert images.detect_layout(tmp_path) == "imagenetv2"
    records = images.open_source(tmp_path)
    assert [r.label for r in records] == [0, 2, 10, 100]
    assert [r.path for r in records][:2] == ["0/0abc.jpeg", "2/2abc.jpeg"]
    _save(_rgb(), tmp_path / "1000" / "x.jpeg", format="JPEG")
    with pytest.raises(SourceError, match="1000"):
        images.imagenetv2_source(tmp_path)


def test_list_source(tmp_path):
    _save(_rgb(), tmp_path / "a" / "one.jpg", format="JPEG")
    _save(_rgb(), tmp_path / "two.png", format="PNG")
    listing = tmp_path / "files.txt"
    listing.write_text(f"# my images\na/one.jpg 5\n{tmp_path / 'two.png'} n01443537\n\n")
    records = images.open_source(listing)
    assert [(r.image_id, r.path, r.label) for r in records] == [("one", "a/one.jpg", 5), ("two", "two.png", 1)]
    assert all(r.full_path.is_file() for r in records)
    unlabelled = images.list_source([tmp_path / "two.png"], root=tmp_path)
    assert unlabelled[0].label is None and unlabelled[0].path == "two.png"
    listing.write_text("a/one.jpg 1000\n")
    with pytest.raises(SourceError, match="line 1"):
        images.list_source(listing)
    listing.write_text("a/one.jpg\nb/one.jpg\n")
    with pytest.raises(SourceError, match="'one' occurs twice"):
        images.list_source(listing)


def test_unknown_layouts_are_refused(tmp_path):
    _save(_rgb(), tmp_path / "holiday.jpg", format="JPEG")
    with pytest.raises(SourceError, match="not a known ImageNet layout"):
        images.open_source(tmp_path)
    with pytest.raises(SourceError, match="unknown layout"):
        images.open_source(tmp_path, layout="coco")
    with pytest.raises(SourceError, match="not a folder"):
        images.train_source(tmp_path / "missing")


# ---------------------------------------------------------------- decoding


def test_odd_modes_decode_to_rgb(tmp_path):
    base = _rgb(20, 30)
    cases = {
        "grey.JPEG": (base.convert("L"), {"format": "JPEG"}),
        "cmyk.JPEG": (base.convert("CMYK"), {"format": "JPEG"}),
        "palette.png": (base.convert("P"), {"format": "PNG", "transparency": 0}),
        "alpha.png": (base.convert("RGBA"), {"format": "PNG"}),
        "bilevel.png": (base.convert("1"), {"format": "PNG"}),
        "png_named.JPEG": (base, {"format": "PNG"}),  # ImageNet holds one such file
    }
    for name, (image, kw) in cases.items():
        decoded = images.decode_image(_save(image, tmp_path / name, **kw))
        assert decoded.mode == "RGB" and decoded.size == (30, 20), name
    lossless = np.asarray(images.decode_image(tmp_path / "png_named.JPEG"))
    assert np.array_equal(lossless, np.asarray(base))
    alpha = np.asarray(images.decode_image(tmp_path / "alpha.png"))
    assert np.array_equal(alpha, np.asarray(base)), "alpha is dropped, colour kept, as training loaders do"
    cmyk = np.asarray(images.decode_image(tmp_path / "cmyk.JPEG"), dtype=float)
    assert np.abs(cmyk - np.asarray(base, dtype=float)).mean() < 40, "CMYK decodes to the same picture"


def test_sixteen_bit_greyscale_uses_its_range(tmp_path):
    ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200 + 1000).astype(np.uint16)
    path = _save(Image.fromarray(ramp), tmp_path / "deep.png", format="PNG")
    pixels = np.asarray(images.decode_image(path))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels.ravel().astype(int)) >= 0)


def test_exif_orientation_is_reported_and_applied_on_request(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(_rgb(20, 40), tmp_path / "rotated.JPEG", format="JPEG", exif=exif.tobytes())
    assert images.exif_orientation(path) == 6
    assert images.decode_image(path).size == (40, 20)  # the stored pixel grid, as training loaders see it
    assert images.decode_image(path, exif_transpose=True).size == (20, 40)
    assert images.exif_orientation(_save(_rgb(), tmp_path / "plain.JPEG", format="JPEG")) == 1


def _bad_files(tmp_path):
    good = _save(_rgb(64, 64), tmp_path / "good.JPEG", format="JPEG")
    data = good.read_bytes()
    (tmp_path / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    png = _save(_rgb(64, 64), tmp_path / "full.png", format="PNG").read_bytes()
    (tmp_path / "truncated_png.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "corrupt.JPEG").write_bytes(data[:2] + bytes(RNG.integers(0, 256, 3000, dtype=np.uint8)))
    (tmp_path / "empty.JPEG").write_bytes(b"")
    (tmp_path / "text.JPEG").write_text("<html>404 not found</html>")
    return {
        "truncated.JPEG": "cannot decode",
        "truncated_png.png": "cannot decode",
        "corrupt.JPEG": "not a recognised image",
        "empty.JPEG": "not a recognised image",
        "text.JPEG": "not a recognised image",
        "missing.JPEG": "file not found",
    }


def test_bad_files_raise_errors_naming_file_and_reason(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(ImageDecodeError) as info:
            images.decode_image(tmp_path / name)
        assert info.value.path == str(tmp_path / name) and reason in info.value.reason, (name, info.value.reason)
        assert name in str(info.value)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _save(_rgb(64, 64), tmp_path / "big.JPEG", format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        images.decode_image(path)


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE, errno.EMFILE, errno.EACCES])
def test_a_failed_read_is_tried_again_not_taken_for_a_bad_image(tmp_path, monkeypatch, code):
    """Issue 16 item 2: an OSError of the file system is transient; it is retried and, if it persists, raised as
    ImageReadError (not ImageDecodeError, which a build records as a bad image for good)."""
    path = _save(_rgb(), tmp_path / "a.JPEG", format="JPEG")
    calls = fail_reads(monkeypatch, path, code, images.READ_TRIES - 1)
    assert images.decode_image(path).size == (32, 24) and len(calls) == images.READ_TRIES
    calls.clear()
    fail_reads(monkeypatch, path, code, images.READ_TRIES)
    with pytest.raises(images.ImageReadError) as info:
        images.decode_image(path)
    assert not isinstance(info.value, ImageDecodeError) and info.value.path == str(path)
    assert f"read failed {images.READ_TRIES} times ({errno.errorcode[code]}" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))  # DataLoader workers hand it back as a value
    assert (copy.path, copy.reason) == (info.value.path, info.value.reason)


def test_an_oserror_of_the_bytes_is_permanent(tmp_path, monkeypatch):
    path = _save(_rgb(), tmp_path / "a.JPEG", format="JPEG")
    path.write_bytes(path.read_bytes()[:300])  # PIL: OSError without errno ("image file is truncated")
    calls = fail_reads(monkeypatch, path, errno.ENOTDIR, 1)  # not a transient errno: no second try
    with pytest.raises(ImageDecodeError):
        images.decode_image(path)
    assert len(calls) == 1
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        images.decode_image(path)


def test_iter_decoded_records_failures_and_goes_on(tmp_path):
    expected = _bad_files(tmp_path)
    names = ["good.JPEG", *expected]
    records = images.list_source(names, root=tmp_path)
    results = list(images.iter_decoded(records))
    assert [r.image_id for r, _, _ in results] == [n.rsplit(".", 1)[0] for n in names]
    good_record, good_image, good_failure = results[0]
    assert good_image is not None and good_image.size == (64, 64) and good_failure is None
    for (record, image, failure), name in zip(results[1:], expected, strict=True):
        assert image is None and failure.path == name and expected[name] in failure.reason
        assert failure.to_dict() == {"image_id": record.image_id, "path": name, "reason": failure.reason}

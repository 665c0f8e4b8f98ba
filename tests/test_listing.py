"""The stored image listing: scanned once in chunks into Arrow, equal to the source's records, ids unique."""

import pytest

from multilabel_imagenet import classes, images
from multilabel_imagenet.builder import listing


def _list_file(tmp_path, n: int):
    wnids = classes.wnids()
    path = tmp_path / "train.txt"
    path.write_text("".join(f"{wnids[k % 7]}/{wnids[k % 7]}_{k}.JPEG {k % 7}\n" for k in range(n)))
    return path


def test_listing_equals_the_source_across_scan_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "SCAN_CHUNK", 16)  # 100 records: seven chunks, the last one short
    path = _list_file(tmp_path, 100)
    stored = listing.open_listing(tmp_path / "work", "train", path, "list")
    assert listing.listing_path(tmp_path / "work", "train").is_file()
    assert list(stored) == images.open_source(path, "list")
    assert stored[5:9][0] == stored[5] and len(stored[5:9]) == 4
    again = listing.open_listing(tmp_path / "work", "train", tmp_path / "elsewhere.txt", "list")
    assert [r.path for r in again] == [r.path for r in stored]  # read back, not scanned: the file is not needed


def test_a_repeated_image_id_is_refused_and_nothing_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "SCAN_CHUNK", 16)
    path = _list_file(tmp_path, 40)
    with path.open("a") as f:
        f.write("elsewhere/n01440764_0.JPEG 0\n")  # the id of line 1, in another chunk
    first = r"\(n01440764/n01440764_0.JPEG and elsewhere/"
    with pytest.raises(images.SourceError, match=r"'n01440764_0' occurs twice " + first):
        listing.open_listing(tmp_path / "work", "train", path, "list")
    assert not listing.listing_path(tmp_path / "work", "train").exists()


def test_a_list_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"n01440764/a.JPEG 0\nn01440764/\xff.JPEG 0\n")
    with pytest.raises(images.SourceError, match=r"train.txt, line 2: not UTF-8"):
        listing.open_listing(tmp_path / "work", "train", path, "list")

import csv
from pathlib import Path

import pytest

from multilabel_imagenet import classes

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "imagenet"


def test_index_is_position_in_sorted_wnids():
    wnids = classes.wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    for i in (0, 1, 417, 999):
        assert classes.index_of(classes.wnid_of(i)) == i


def test_names_and_synonyms():
    assert classes.name_of(0) == "tench"
    assert classes.synonyms(0) == ("tench", "Tinca tinca")
    assert classes.name_of(classes.index_of("n02012849")) == "crane"  # the bird
    assert classes.name_of(classes.index_of("n03126707")) == "crane"  # the machine


def test_unique_names_disambiguate_shared_names():
    unique = classes.unique_names()
    assert len(set(unique)) == 1000
    assert unique[classes.index_of("n02012849")] == "crane (n02012849)"
    assert unique[0] == "tench"


@pytest.mark.skipif(not (SHARED / "imagenet_classes.tsv").is_file(), reason="shared/benchmarks/imagenet absent")
def test_matches_independent_class_list():
    with open(SHARED / "imagenet_classes.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["wnid"] for r in rows] == list(classes.wnids())
    assert [int(r["index"]) for r in rows] == list(range(1000))
    assert [r["name"] for r in rows] == list(classes.names())


def test_bad_lookups_name_the_problem():
    with pytest.raises(KeyError, match="n99999999"):
        classes.index_of("n99999999")
    for bad in (-1, 1000, 2.5, True):
        with pytest.raises(IndexError, match="outside 0..999"):
            classes.check_index(bad)


def test_lookup_by_index_wnid_or_name():
    assert classes.lookup("0") == [0]
    assert classes.lookup("n01443537") == [1]
    assert classes.lookup("Crane") == [classes.index_of("n02012849"), classes.index_of("n03126707")]
    assert classes.lookup("no such thing") == []

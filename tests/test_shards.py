import json
import os

import pytest

from multilabel_imagenet.builder import shards
from multilabel_imagenet.builder.shards import StageDir


def test_shard_spec_and_assignment():
    assert shards.parse_shard_spec(None) == (0, 1)
    assert shards.parse_shard_spec("3/16") == (3, 16)
    for bad in ("16/16", "-1/4", "a/b", "3"):
        with pytest.raises(ValueError, match="--shard"):
            shards.parse_shard_spec(bad)
    assert list(shards.split_into_shards(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    sliced = []

    class Items(list):
        def __getitem__(self, index):
            sliced.append(index)
            return super().__getitem__(index)

    lazy = shards.split_into_shards(Items(range(7)), 3)
    assert len(lazy) == 3 and sliced == [], "no shard is cut before it is asked for"
    assert lazy[-1] == [6] and lazy[1] == [3, 4, 5] and sliced == [slice(6, 9), slice(3, 6)]
    with pytest.raises(IndexError):
        lazy[3]
    with pytest.raises(ValueError, match="shard size"):
        shards.split_into_shards([1], 0)
    assert shards.mine(10, 1, 4) == [1, 5, 9]
    assert sorted(sum((shards.mine(10, w, 4) for w in range(4)), [])) == list(range(10))


def test_stage_dir_writes_atomically_and_deterministically(tmp_path):
    stage = StageDir(tmp_path, "discover", "train", num_shards=3)
    assert stage.missing() == [0, 1, 2]
    rows = [{"b": 0.1, "a": [1, 2]}, {"image_id": "x", "error": "truncated"}]
    path = stage.write(1, rows)
    assert path.name == "shard-00001-of-00003.jsonl" and stage.is_complete(1)
    assert path.read_text() == '{"a":[1,2],"b":0.1}\n{"error":"truncated","image_id":"x"}\n'
    assert stage.read(1) == rows
    assert not list(stage.folder.glob("*.tmp")), "no temporary left behind"
    with pytest.raises(FileNotFoundError, match="2 of 3 shards"):
        list(stage.read_all())
    stage.write(0, [{"i": 0}])
    stage.write(2, [])
    assert [r.get("i") for r in stage.read_all()] == [0, None, None]
    with pytest.raises(ValueError):
        stage.write(0, [{"x": float("nan")}])


def test_a_killed_write_leaves_no_complete_shard(tmp_path):
    stage = StageDir(tmp_path, "label", "validation", num_shards=1)

    def rows():
        yield {"ok": 1}
        raise KeyboardInterrupt  # the process is killed half-way through the shard

    with pytest.raises(KeyboardInterrupt):
        stage.write(0, rows())
    assert not stage.is_complete(0) and stage.missing() == [0]
    assert not list(stage.folder.iterdir()), "the partial file is removed"
    stage.write(0, [{"ok": 1}])
    assert stage.read(0) == [{"ok": 1}] and json.loads(stage.path(0).read_text()) == {"ok": 1}
    assert os.path.getsize(stage.path(0)) > 0


@pytest.mark.parametrize("damage", ["truncated", "number", "bytes"])
def test_a_damaged_shard_is_named_with_what_to_do(tmp_path, damage):
    stage = shards.StageDir(tmp_path, "discover", "train", 1)
    path = stage.write(0, [{"image_id": "a", "masks": [1, 2]}, {"image_id": "b", "masks": []}])
    text = path.read_bytes()
    damaged = {"truncated": text[:-9], "number": text + b"12\n", "bytes": text + b'{"image_id": "\xff"}\n'}[damage]
    path.write_bytes(damaged)
    line = 2 if damage == "truncated" else 3
    expected = rf"{path.name}: line {line} is not a complete row .*rerun the 'discover' stage"
    with pytest.raises(ValueError, match=expected):
        stage.read(0)


def test_a_shard_is_held_by_one_process_at_a_time(tmp_path):
    """Issue 16 item 3: the lock file names the holder; a second process stops with that; a lock left by a dead
    process of this host is taken over; the lock goes when the work ends, also on failure."""
    import socket
    import subprocess
    import sys

    stage = StageDir(tmp_path, "discover", "train", 4)
    with stage.lock(2):
        held = json.loads(stage.lock_path(2).read_text())
        assert held == {"pid": os.getpid(), "host": socket.gethostname()}
        mine = rf"shard 2 of discover is being computed by pid {os.getpid()}"
        with pytest.raises(shards.ShardLockedError, match=mine), stage.lock(2):
            pass
        with stage.lock(3):  # other shards are free
            pass
    assert not stage.lock_path(2).exists()
    with pytest.raises(RuntimeError), stage.lock(1):
        raise RuntimeError("the stage failed")
    assert not stage.lock_path(1).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stage.lock_path(0).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with stage.lock(0):  # its holder exited: taken over
        assert json.loads(stage.lock_path(0).read_text())["pid"] == os.getpid()
    stage.lock_path(0).write_text(json.dumps({"pid": int(gone.stdout), "host": "another-node"}))
    elsewhere = "on another-node; .*delete the lock file if that process"
    with pytest.raises(shards.ShardLockedError, match=elsewhere), stage.lock(0):
        pass

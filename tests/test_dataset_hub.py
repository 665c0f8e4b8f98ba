"""publish: offline against a fake Hub behind huggingface_hub's own HTTP client (an injected httpx transport)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from urllib.parse import parse_qs, unquote

import datasets
import httpx2
import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.utils._http import default_client_factory
from test_dataset_support import BUILD, synthetic_records

from multilabel_imagenet import atomic
from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import card, hub, loading, writer

ENDPOINT = "https://hub.test"
_REPO = r"/api/datasets/(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    """A minimal Hub: repos with files, commits, tags and an LFS store; records every request it answers."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[str] = []
        self.lfs_puts: list[str] = []
        self.fail_commits = 0
        """The next this many commits answer 500 (a Hub failure after the shards were uploaded)."""

    def _head(self, repo: str) -> str:
        return self.repos[repo]["commits"][-1] if self.repos[repo]["commits"] else "0" * 40

    def _missing(self, repo: str) -> httpx2.Response | None:
        if repo in self.repos:
            return None
        return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"}, json={"error": f"{repo} not found"})

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("GET", _REPO + r"/refs", self.refs),
            ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?P<sub>/.*)?", self.tree),
            ("POST", _REPO + r"/paths-info/(?P<rev>[^/]+)", self.paths_info),
            ("GET", _REPO + r"/revision/(?P<rev>[^/]+)", self.revision_info),
            ("GET|HEAD", r"/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<sub>.+)", self.resolve),
            ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", r"/datasets/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_put),
            ("POST", _REPO + r"/commit/(?P<rev>[^/]+)", self.commit),
            ("POST", _REPO + r"/tag/(?P<rev>[^/]+)", self.tag),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("HEAD", r"/datasets\.huggingface\.co/datasets/.+\.py", self.no_script),
            ("GET", r"/api/agent-harnesses", self.agent_harnesses),
        ]
        for verb, pattern, answer in routes:
            match = re.fullmatch(pattern, path)
            if method in verb.split("|") and match:
                return answer(request, **match.groupdict())
        self.unknown.append(f"{method} {path}")
        return httpx2.Response(404, json={"error": f"fake hub: no route {method} {path}"})

    def create_repo(self, request):
        body = json.loads(request.content)
        repo = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if repo in self.repos:
            return httpx2.Response(409, json={"error": "You already created this dataset repo", "url": repo})
        self.repos[repo] = {
            "files": {},
            "lfs_paths": set(),
            "commits": [],
            "tags": {},
            "messages": [],
            "snapshots": {},
            "operations": [],  # per commit: (key, path) of every operation, in order
        }
        return httpx2.Response(200, json={"url": f"{ENDPOINT}/datasets/{repo}", "name": repo})

    def refs(self, request, repo):
        if missing := self._missing(repo):
            return missing
        tags = [
            {"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in self.repos[repo]["tags"].items()
        ]
        main_ref = {"name": "main", "ref": "refs/heads/main", "targetCommit": self._head(repo)}
        return httpx2.Response(200, json={"branches": [main_ref], "tags": tags, "converts": []})

    def _snapshot(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) at ``rev``: a tag, ``main`` or a commit id."""
        state = self.repos[repo]
        oid = state["tags"].get(rev) or (self._head(repo) if rev == "main" else rev)
        if oid not in state["snapshots"]:
            return None
        return oid, state["snapshots"][oid]

    def _entry(self, repo: str, path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": hub.git_blob_sha1(data)}
        if path in self.repos[repo]["lfs_paths"]:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _entries(self, repo: str, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        entries, folders = [], set()
        for path, data in sorted(files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                continue
            entries.append(self._entry(repo, path, data))
        return [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)] + entries

    def tree(self, request, repo, rev, sub=None):
        if missing := self._missing(repo):
            return missing
        snapshot = self._snapshot(repo, unquote(rev))
        if snapshot is None:
            return httpx2.Response(404, headers={"X-Error-Code": "RevisionNotFound"}, json={"error": "no revision"})
        recursive = request.url.params.get("recursive") in ("true", "True", "1")
        return httpx2.Response(200, json=self._entries(repo, snapshot[1], (sub or "").strip("/"), recursive))

    def paths_info(self, request, repo, rev):
        _, files = self._snapshot(repo, unquote(rev))
        asked = parse_qs(request.content.decode()).get("paths", [])
        found = [self._entry(repo, p, files[p]) for p in asked if p in files]
        found += [
            {"type": "directory", "path": p, "oid": "0" * 40}
            for p in asked
            if any(f.startswith(p + "/") for f in files)
        ]
        return httpx2.Response(200, json=found)

    def revision_info(self, request, repo, rev):
        if missing := self._missing(repo):
            return missing
        snapshot = self._snapshot(repo, unquote(rev))
        if snapshot is None:
            return httpx2.Response(404, headers={"X-Error-Code": "RevisionNotFound"}, json={"error": "no revision"})
        oid, files = snapshot
        card = files.get("README.md", b"").decode()
        data = {"id": repo, "sha": oid, "private": False, "siblings": [{"rfilename": p} for p in sorted(files)]}
        data["cardData"] = DatasetCard(card).data.to_dict() if card else {}
        return httpx2.Response(200, json=data)

    def resolve(self, request, repo, rev, sub):
        if missing := self._missing(repo):
            return missing
        snapshot = self._snapshot(repo, unquote(rev))
        if snapshot is None or sub not in snapshot[1]:
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"}, json={"error": f"{sub} not found"})
        oid, data = snapshot[0], snapshot[1][sub]
        entry = self._entry(repo, sub, data)
        headers = {"ETag": f'"{entry["oid"]}"', "X-Repo-Commit": oid, "Content-Length": str(len(data))}
        if "lfs" in entry:
            headers |= {"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(len(data))}
        return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else data)

    def preupload(self, request, repo, rev):
        files = json.loads(request.content)["files"]
        modes = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith((".parquet", ".png")) else "regular"}
            for f in files
        ]
        return httpx2.Response(200, json={"files": [{**m, "shouldIgnore": False} for m in modes]})

    def lfs_batch(self, request, repo):
        objects = json.loads(request.content)["objects"]
        answer = []
        for obj in objects:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:
                item["actions"] = {"upload": {"href": f"{ENDPOINT}/lfs-upload/{obj['oid']}"}}
            answer.append(item)
        return httpx2.Response(200, json={"transfer": "basic", "objects": answer})

    def lfs_put(self, request, oid):
        data = request.read()
        if hashlib.sha256(data).hexdigest() != oid:
            return httpx2.Response(400, json={"error": "sha256 mismatch"})
        self.lfs[oid] = data
        self.lfs_puts.append(oid)
        return httpx2.Response(200)

    def commit(self, request, repo, rev):
        state = self.repos[repo]
        if self.fail_commits:
            self.fail_commits -= 1
            return httpx2.Response(500, json={"error": "fake hub: internal error"})
        items = [json.loads(line) for line in request.read().decode().splitlines()]
        header = items[0]["value"]
        if header.get("parentCommit", self._head(repo)) != self._head(repo):
            return httpx2.Response(412, json={"error": "A commit has happened since. Please refresh and try again."})
        files, lfs_paths = dict(state["files"]), set(state["lfs_paths"])  # applied only if every operation is valid
        for item in items[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return httpx2.Response(400, json={"error": f"LFS object of {value['path']} was never uploaded"})
                files[value["path"]] = self.lfs[value["oid"]]
                lfs_paths.add(value["path"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    return httpx2.Response(404, json={"error": "A file with this name doesn't exist"})
                files.pop(value["path"])
        state["files"], state["lfs_paths"] = files, lfs_paths
        state["messages"].append(header["summary"])
        state["operations"].append([(item["key"], item["value"]["path"]) for item in items[1:]])
        oid = hashlib.sha1(f"{repo}{len(state['commits'])}".encode(), usedforsecurity=False).hexdigest()
        state["commits"].append(oid)
        state["snapshots"][oid] = dict(state["files"])
        return httpx2.Response(200, json={"commitUrl": f"{ENDPOINT}/datasets/{repo}/commit/{oid}", "commitOid": oid})

    def no_script(self, request):
        # datasets probes the legacy script location of a Hub dataset; there is none.
        return httpx2.Response(404)

    def agent_harnesses(self, request):
        # huggingface_hub fetches this registry for its user-agent string.
        return httpx2.Response(200, json={"standardEnvVars": [], "harnesses": {}})

    def validate_yaml(self, request):
        content = json.loads(request.content)["content"]
        if not content.startswith("---\n") or "\nconfigs:\n" not in content.split("\n---\n")[0]:
            return httpx2.Response(400, json={"error": "README.md YAML has no configs"})
        return httpx2.Response(200, json={"errors": [], "warnings": []})

    def tag(self, request, repo, rev):
        body = json.loads(request.content)
        if body["tag"] in self.repos[repo]["tags"]:
            return httpx2.Response(409, json={"error": "tag exists"})
        self.repos[repo]["tags"][body["tag"]] = rev
        return httpx2.Response(200, json={})


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"))
    # hf_xet moves LFS bytes outside httpx; with it off, every byte goes through the injected transport.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake.handler)))
    yield fake
    huggingface_hub.set_client_factory(default_client_factory)
    assert not fake.unknown, fake.unknown


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return synthetic_records(tmp_path_factory.mktemp("mini") / "mini", num_train=6, num_val=2)


@pytest.fixture
def folder(records, tmp_path):
    policy = writer.ShardPolicy(min_rows_per_shard=2)
    return writer.write_dataset(tmp_path / "release", BUILD, labels=records[0], proposals=records[1], policy=policy)


def _api() -> HfApi:
    return HfApi(endpoint=ENDPOINT, token="hf_fake_token")


def _tree(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_preuploads_the_shards_then_makes_one_tagged_commit(fake_hub, folder):
    result = hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api(), max_files_per_upload=3)
    repo = fake_hub.repos["org/multilabel-imagenet"]
    local = _tree(folder)
    assert repo["files"] == local
    shards = [p for p in local if p.startswith("data/")]
    assert len(shards) == 6 and {p for p in repo["lfs_paths"] if p.startswith("data/")} == set(shards)
    assert len(result.plan.batches) == 2 and len(repo["commits"]) == 1 and result.committed
    # the one commit adds every file: shards, card, build.json, figure and loading script together
    assert sorted(path for _, path in repo["operations"][0]) == sorted(local)
    assert dict(repo["operations"][0])["lfsFile"] and ("file", "README.md") in repo["operations"][0]
    assert repo["messages"] == ["v1.0.0: data shards, card, build metadata, loading script"]
    assert repo["tags"] == {"v1.0.0": repo["commits"][0]} and result.tagged_commit == repo["commits"][0]
    assert "org/multilabel-imagenet" in repo["files"]["README.md"].decode()
    order = [f"{m} {p}" for m, p in fake_hub.requests]
    first_upload = next(i for i, r in enumerate(order) if r.startswith("PUT /lfs-upload/"))
    assert order.index("POST /api/validate-yaml") < first_upload  # the card is checked before any byte goes up
    assert order.index("POST /api/repos/create") < first_upload
    assert first_upload < order.index("POST /api/datasets/org/multilabel-imagenet/commit/main")


def _v2(records, tmp_path):
    smaller = {split: rows[:3] for split, rows in records[0].items()}
    policy = writer.ShardPolicy(min_rows_per_shard=2)
    v2 = replace(BUILD, version="1.1.0")
    folder = writer.write_dataset(tmp_path / "v2", v2, labels=smaller, proposals=records[1], policy=policy)
    return folder, smaller


def test_a_new_version_replaces_the_old_in_one_commit_with_its_stale_shards_deleted(
    fake_hub, folder, records, tmp_path
):
    hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    with pytest.raises(hub.PublishError, match="already has tag v1.0.0"):
        hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    repo = fake_hub.repos["org/multilabel-imagenet"]
    assert len(repo["commits"]) == 1

    folder2, smaller = _v2(records, tmp_path)
    plan, _ = hub.plan_publish(folder2, "org/multilabel-imagenet", "1.1.0", _api())
    assert plan.parent_commit == repo["commits"][0]
    proposals = [p.relative_to(folder2).as_posix() for p in sorted((folder2 / "data/proposals").iterdir())]
    assert set(proposals) <= set(plan.unchanged)  # the writer is deterministic: same records, same shards
    assert not any(p.startswith("data/proposals/") for p in plan.upload)
    stale = sorted(p for p in repo["files"] if p.startswith("data/labels/") and not (folder2 / p).exists())
    assert stale and plan.delete == stale
    assert "data/labels/train-00000-of-00001.parquet" in plan.upload  # 3 train rows: one shard now
    assert "data/labels/validation-00000-of-00001.parquet" in plan.unchanged  # the same 2 validation rows
    assert {"README.md", "metadata/build.json"} <= set(plan.upload)
    hub.publish(folder2, "org/multilabel-imagenet", "1.1.0", api=_api())
    assert len(repo["commits"]) == 2  # main went from v1.0.0 to v1.1.0 in one step: no mixed snapshot existed
    assert repo["snapshots"][repo["commits"][0]] == _tree(folder)
    assert repo["snapshots"][repo["commits"][1]] == _tree(folder2)
    operations = repo["operations"][1]
    assert sorted(p for k, p in operations if k == "deletedFile") == stale
    assert sorted(p for k, p in operations if k != "deletedFile") == sorted(plan.upload)
    assert set(repo["tags"]) == {"v1.0.0", "v1.1.0"} and repo["tags"]["v1.1.0"] == repo["commits"][1]

    # load() reads each pinned release back through the same fake Hub.
    cache = tmp_path / "datasets_cache"
    old = loading.load("org/multilabel-imagenet", "labels", "train", revision="v1.0.0", cache_dir=cache)
    new = loading.load("org/multilabel-imagenet", "labels", "train", revision="v1.1.0", cache_dir=cache)
    assert old["image_id"] == [r.image_id for r in records[0]["train"]]
    assert new["image_id"] == [r.image_id for r in smaller["train"]]
    streamed = loading.load("org/multilabel-imagenet", "proposals", "validation", revision="v1.0.0", streaming=True)
    assert [r["image_id"] for r in streamed] == [r.image_id for r in records[1]["validation"]]


def test_a_failed_commit_leaves_main_unchanged_and_a_rerun_sends_no_shard_twice(fake_hub, folder, records, tmp_path):
    hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    repo = fake_hub.repos["org/multilabel-imagenet"]
    folder2, _ = _v2(records, tmp_path)
    puts = len(fake_hub.lfs_puts)
    fake_hub.fail_commits = 1
    with pytest.raises(
        hub.PublishError, match="the release commit was not made: the Hub refused it .*500.* main is unchanged"
    ):
        hub.publish(folder2, "org/multilabel-imagenet", "1.1.0", api=_api())
    assert len(repo["commits"]) == 1 and repo["files"] == _tree(folder) and set(repo["tags"]) == {"v1.0.0"}
    uploaded = fake_hub.lfs_puts[puts:]
    assert uploaded  # the new shards went up before the commit failed
    hub.publish(folder2, "org/multilabel-imagenet", "1.1.0", api=_api())
    assert not set(fake_hub.lfs_puts[puts + len(uploaded) :]) & set(uploaded)  # none of them went up again
    assert len(repo["commits"]) == 2 and repo["files"] == _tree(folder2)


def test_main_moving_under_a_publish_refuses_the_commit(fake_hub, folder, records, tmp_path, monkeypatch):
    hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    folder2, _ = _v2(records, tmp_path)
    planned = hub.plan_publish

    def plan_then_someone_commits(*args, **kwargs):
        plan = planned(*args, **kwargs)
        _api().upload_file(
            path_or_fileobj=b"x", path_in_repo="notes.txt", repo_id="org/multilabel-imagenet", repo_type="dataset"
        )
        return plan

    monkeypatch.setattr(hub, "plan_publish", plan_then_someone_commits)
    with pytest.raises(hub.PublishError, match="not made: main moved since the plan"):
        hub.publish(folder2, "org/multilabel-imagenet", "1.1.0", api=_api())
    repo = fake_hub.repos["org/multilabel-imagenet"]
    assert repo["files"] == {**_tree(folder), "notes.txt": b"x"} and set(repo["tags"]) == {"v1.0.0"}


def test_a_failed_tag_is_completed_by_a_rerun_without_a_second_commit(fake_hub, folder, monkeypatch):
    def no_tag(self, *args, **kwargs):
        raise httpx2.ConnectError("connection reset")

    with monkeypatch.context() as patch:
        patch.setattr(HfApi, "create_tag", no_tag)
        with pytest.raises(hub.PublishError, match="is on main but not tagged v1.0.0: rerun to tag it"):
            hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    repo = fake_hub.repos["org/multilabel-imagenet"]
    assert len(repo["commits"]) == 1 and not repo["tags"]
    result = hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    assert not result.plan.upload and not result.committed and len(repo["commits"]) == 1
    assert repo["tags"] == {"v1.0.0": repo["commits"][0]}


def test_version_must_match_build_json(fake_hub, folder):
    with pytest.raises(hub.PublishError, match=r"build.json says version 1.0.0, not 2.0.0"):
        hub.publish(folder, "org/multilabel-imagenet", "2.0.0", api=_api())
    with pytest.raises(ValueError, match="not a semantic version"):
        hub.publish(folder, "org/multilabel-imagenet", "v2", api=_api())
    assert fake_hub.repos == {}


def test_a_card_that_does_not_match_build_json_is_refused_before_any_request(fake_hub, folder, monkeypatch):
    render = card.render_card

    def wrong_files(*args, **kwargs):  # the YAML points the train split at the validation shards
        text = str(render(*args, **kwargs))
        return DatasetCard(text.replace("data/labels/train-*.parquet", "data/labels/validation-*.parquet"))

    monkeypatch.setattr(card, "render_card", wrong_files)
    with pytest.raises(hub.PublishError, match=r"config 'labels' split 'train': data_files .* nothing was uploaded"):
        hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api(), dry_run=True)
    assert fake_hub.requests == []


def test_a_card_the_hub_rejects_is_refused_before_any_upload(fake_hub, folder, monkeypatch):
    rejected = {"errors": [{"message": '"license" must be one of [apache-2.0, mit, other, ...]'}], "warnings": []}
    monkeypatch.setattr(fake_hub, "validate_yaml", lambda request: httpx2.Response(400, json=rejected))
    with pytest.raises(
        hub.PublishError,
        match='the Hub rejects the card\'s YAML header \\(Invalid metadata in README.md. - "license" must be',
    ):
        hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    assert fake_hub.repos == {} and [m for m, _ in fake_hub.requests] == ["POST"]


def test_cli_dry_run_checks_the_card_lists_changes_and_writes_nothing(fake_hub, folder, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", _api)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    (folder / card.FIGURE).unlink()  # a dry run does not even redraw a missing figure
    del before[folder / card.FIGURE]
    result = CliRunner().invoke(
        main, ["publish", str(folder), "--repo-id", "org/multilabel-imagenet", "--version", "1.0.0", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "org/multilabel-imagenet does not exist yet" in result.output
    assert "+ data/labels/train-00000-of-00002.parquet" in result.output and "tag v1.0.0" in result.output
    assert "the card passed the checks; one commit" in result.output
    assert fake_hub.repos == {}
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()} == before
    assert {(m, p) for m, p in fake_hub.requests if m != "GET"} == {("POST", "/api/validate-yaml")}
    result = CliRunner().invoke(
        main, ["publish", str(folder), "--repo-id", "org/multilabel-imagenet", "--version", "1.0.0"]
    )
    assert result.exit_code == 0, result.output
    assert "1 commit; tagged v1.0.0" in result.output and "v1.0.0" in fake_hub.repos["org/multilabel-imagenet"]["tags"]
    assert fake_hub.repos["org/multilabel-imagenet"]["files"] == _tree(folder)  # the folder mirrors the release


def test_no_network_is_a_clear_message(folder, monkeypatch, tmp_path):
    def unreachable(request):
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"))
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(unreachable)))
    try:
        monkeypatch.setattr(hub, "HfApi", _api)
        for extra in (["--dry-run"], []):
            result = CliRunner().invoke(
                main, ["publish", str(folder), "--repo-id", "org/multilabel-imagenet", "--version", "1.0.0", *extra]
            )
            assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
            assert f"cannot reach the Hub at {ENDPOINT} (ConnectError" in result.output
            assert "the folder and its card passed the local checks; nothing was uploaded" in result.output
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


def test_hf_hub_offline_is_a_clear_message(folder, tmp_path):
    """The real CLI in a fresh interpreter with HF_HUB_OFFLINE=1 (read at import): a message, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    readme = (folder / "README.md").read_bytes()
    for extra in (["--dry-run"], []):
        command = [sys.executable, "-m", "multilabel_imagenet", "publish", str(folder), "--repo-id", "org/x"]
        done = subprocess.run(
            [*command, "--version", "1.0.0", *extra], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert "Error: HF_HUB_OFFLINE is set: publishing (and --dry-run" in done.stderr
        assert "the folder and its card passed the local checks; nothing was uploaded" in done.stderr
    assert (folder / "README.md").read_bytes() == readme


def test_publish_into_an_existing_empty_repo(fake_hub, folder):
    _api().create_repo("org/empty", repo_type="dataset")
    plan, _ = hub.plan_publish(folder, "org/empty", "1.0.0", _api())
    assert plan.repo_exists and not plan.unchanged and not plan.delete and plan.parent_commit is None
    hub.publish(folder, "org/empty", "1.0.0", api=_api())
    assert fake_hub.repos["org/empty"]["tags"] == {"v1.0.0": fake_hub.repos["org/empty"]["commits"][-1]}


def test_a_pinned_revision_holds_without_the_hub(fake_hub, folder, records, tmp_path, monkeypatch):
    """Offline or unreachable, load() reads exactly the pinned release from the cache, or raises; datasets alone
    would return the most recently cached release for any revision, with a warning."""
    repo_id = "org/multilabel-imagenet"
    hub.publish(folder, repo_id, "1.0.0", api=_api())
    folder2, smaller = _v2(records, tmp_path)
    hub.publish(folder2, repo_id, "1.1.0", api=_api())
    cache = tmp_path / "datasets_cache"
    old_ids = [r.image_id for r in records[0]["train"]]
    new_ids = [r.image_id for r in smaller["train"]]
    with pytest.raises(loading.RevisionError, match="has no revision 'v9.9.9' on the Hub"):
        loading.load(repo_id, "labels", "train", revision="v9.9.9", cache_dir=cache)
    assert loading.load(repo_id, "labels", "train", revision="v1.0.0", cache_dir=cache)["image_id"] == old_ids
    assert loading.load(repo_id, "labels", "train", revision="v1.1.0", cache_dir=cache)["image_id"] == new_ids
    assert set(loading.cached_refs(repo_id)) == {"v1.0.0", "v1.1.0"}

    def no_request(request):
        raise AssertionError(f"offline, yet a request: {request.method} {request.url}")

    def refused(request):
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(no_request)))
    with monkeypatch.context() as offline:
        offline.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        offline.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        # v1.1.0 was cached last: the release datasets' own fallback would hand back for any revision
        assert loading.load(repo_id, "labels", "train", revision="v1.0.0", cache_dir=cache)["image_id"] == old_ids
        assert loading.load(repo_id, "labels", "train", revision="v1.1.0", cache_dir=cache)["image_id"] == new_ids
        streamed = loading.load(repo_id, "labels", "train", revision="v1.0.0", cache_dir=cache, streaming=True)
        assert [row["image_id"] for row in streamed] == old_ids
        with pytest.raises(
            loading.RevisionError,
            match=r"revision 'v9.9.9' is not in the local cache and HF_HUB_OFFLINE is set, so it cannot be looked up "
            r"\(the cache holds v1.0.0 \([0-9a-f]{12}\), v1.1.0 \([0-9a-f]{12}\)\)",
        ):
            loading.load(repo_id, "labels", "train", revision="v9.9.9", cache_dir=cache)
        with pytest.raises(loading.RevisionError, match="revision 'v1.0.0' .* of config 'proposals' is not in the"):
            loading.load(repo_id, "proposals", "train", revision="v1.0.0", cache_dir=cache)
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refused)))
    with pytest.raises(
        loading.RevisionError, match=r"'v9.9.9' is not in the local cache and the Hub cannot be reached"
    ):
        loading.load(repo_id, "labels", "train", revision="v9.9.9", cache_dir=cache)
    assert loading.load(repo_id, "labels", "train", revision="v1.0.0", cache_dir=cache)["image_id"] == old_ids


def test_a_folder_that_cannot_be_updated_after_the_release_is_reported_not_fatal(fake_hub, folder, monkeypatch):
    def read_only(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "write_bytes", read_only)
    said = []
    result = hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api(), progress=said.append)
    assert result.committed and fake_hub.repos["org/multilabel-imagenet"]["tags"] == {"v1.0.0": result.commit}
    assert any("README.md was not updated to the uploaded copy" in line for line in said), said

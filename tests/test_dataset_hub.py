"""publish: offline against a fake Hub behind huggingface_hub's own HTTP client (an injected httpx transport)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import replace
from urllib.parse import parse_qs, unquote

import httpx2
import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.utils._http import default_client_factory
from test_dataset_support import BUILD, synthetic_records

from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import hub, loading, writer

ENDPOINT = "https://hub.test"
_REPO = r"/api/datasets/(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    """A minimal Hub: repos with files, commits, tags and an LFS store; records every request it answers."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[str] = []

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
        self.repos[repo] = {"files": {}, "lfs_paths": set(), "commits": [], "tags": {}, "messages": [], "snapshots": {}}
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
        return httpx2.Response(200)

    def commit(self, request, repo, rev):
        state = self.repos[repo]
        for line in request.read().decode().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                state["messages"].append(value["summary"])
            elif key == "file":
                state["files"][value["path"]] = base64.b64decode(value["content"])
                state["lfs_paths"].discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return httpx2.Response(400, json={"error": f"LFS object of {value['path']} was never uploaded"})
                state["files"][value["path"]] = self.lfs[value["oid"]]
                state["lfs_paths"].add(value["path"])
            elif key == "deletedFile":
                state["files"].pop(value["path"])
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


def test_publish_uploads_in_batches_then_tags_the_last_commit(fake_hub, folder):
    result = hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api(), max_files_per_commit=3)
    repo = fake_hub.repos["org/multilabel-imagenet"]
    local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(repo["files"]) == local
    for path in local:
        assert repo["files"][path] == (folder / path).read_bytes(), path
    shards = [p for p in local if p.startswith("data/")]
    assert len(shards) == 6 and {p for p in repo["lfs_paths"] if p.startswith("data/")} == set(shards)
    assert len(result.plan.batches) == 2 and len(repo["commits"]) == 3
    assert repo["messages"][-1].startswith("v1.0.0: card") and repo["tags"] == {"v1.0.0": repo["commits"][-1]}
    assert result.tagged_commit == repo["commits"][-1]
    assert "org/multilabel-imagenet" in repo["files"]["README.md"].decode()
    assert ("POST", "/api/repos/create") in fake_hub.requests


def test_existing_tag_is_refused_and_rerun_uploads_only_changes(fake_hub, folder, records, tmp_path):
    hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    with pytest.raises(hub.PublishError, match="already has tag v1.0.0"):
        hub.publish(folder, "org/multilabel-imagenet", "1.0.0", api=_api())
    assert len(fake_hub.repos["org/multilabel-imagenet"]["commits"]) == 2

    smaller = {split: rows[:3] for split, rows in records[0].items()}
    policy = writer.ShardPolicy(min_rows_per_shard=2)
    v2 = replace(BUILD, version="1.1.0")
    folder2 = writer.write_dataset(tmp_path / "v2", v2, labels=smaller, proposals=records[1], policy=policy)
    plan, _ = hub.plan_publish(folder2, "org/multilabel-imagenet", "1.1.0", _api())
    proposals = [p.relative_to(folder2).as_posix() for p in sorted((folder2 / "data/proposals").iterdir())]
    assert set(proposals) <= set(plan.unchanged)  # the writer is deterministic: same records, same shards
    assert not any(p.startswith("data/proposals/") for p in plan.upload)
    remote = fake_hub.repos["org/multilabel-imagenet"]["files"]
    stale = sorted(p for p in remote if p.startswith("data/labels/") and not (folder2 / p).exists())
    assert stale and plan.delete == stale
    assert "data/labels/train-00000-of-00001.parquet" in plan.upload  # 3 train rows: one shard now
    assert "data/labels/validation-00000-of-00001.parquet" in plan.unchanged  # the same 2 validation rows
    hub.publish(folder2, "org/multilabel-imagenet", "1.1.0", api=_api())
    repo = fake_hub.repos["org/multilabel-imagenet"]
    assert sorted(p for p in repo["files"] if p.startswith("data/labels/")) == sorted(
        p.relative_to(folder2).as_posix() for p in (folder2 / "data/labels").iterdir()
    )
    assert set(repo["tags"]) == {"v1.0.0", "v1.1.0"} and repo["tags"]["v1.1.0"] == repo["commits"][-1]

    # load() reads each pinned release back through the same fake Hub.
    cache = tmp_path / "datasets_cache"
    old = loading.load("org/multilabel-imagenet", "labels", "train", revision="v1.0.0", cache_dir=cache)
    new = loading.load("org/multilabel-imagenet", "labels", "train", revision="v1.1.0", cache_dir=cache)
    assert old["image_id"] == [r.image_id for r in records[0]["train"]]
    assert new["image_id"] == [r.image_id for r in smaller["train"]]
    streamed = loading.load("org/multilabel-imagenet", "proposals", "validation", revision="v1.0.0", streaming=True)
    assert [r["image_id"] for r in streamed] == [r.image_id for r in records[1]["validation"]]


def test_version_must_match_build_json(fake_hub, folder):
    with pytest.raises(hub.PublishError, match=r"build.json says version 1.0.0, not 2.0.0"):
        hub.publish(folder, "org/multilabel-imagenet", "2.0.0", api=_api())
    with pytest.raises(ValueError, match="not a semantic version"):
        hub.publish(folder, "org/multilabel-imagenet", "v2", api=_api())
    assert fake_hub.repos == {}


def test_cli_dry_run_lists_changes_and_writes_nothing(fake_hub, folder, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", _api)
    readme = (folder / "README.md").read_bytes()
    result = CliRunner().invoke(
        main, ["publish", str(folder), "--repo-id", "org/multilabel-imagenet", "--version", "1.0.0", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "org/multilabel-imagenet does not exist yet" in result.output
    assert "+ data/labels/train-00000-of-00002.parquet" in result.output and "tag v1.0.0" in result.output
    assert fake_hub.repos == {} and (folder / "README.md").read_bytes() == readme
    assert all(method == "GET" for method, _ in fake_hub.requests)
    result = CliRunner().invoke(
        main, ["publish", str(folder), "--repo-id", "org/multilabel-imagenet", "--version", "1.0.0"]
    )
    assert result.exit_code == 0, result.output
    assert "tagged v1.0.0" in result.output and "v1.0.0" in fake_hub.repos["org/multilabel-imagenet"]["tags"]


def test_publish_into_an_existing_empty_repo(fake_hub, folder):
    _api().create_repo("org/empty", repo_type="dataset")
    plan, _ = hub.plan_publish(folder, "org/empty", "1.0.0", _api())
    assert plan.repo_exists and not plan.unchanged and not plan.delete
    hub.publish(folder, "org/empty", "1.0.0", api=_api())
    assert fake_hub.repos["org/empty"]["tags"] == {"v1.0.0": fake_hub.repos["org/empty"]["commits"][-1]}

"""Publish a dataset folder to the Hugging Face Hub: create the repo, upload what changed, tag ``vX.Y.Z``.

Order of work: check the folder and its version; refuse an existing tag; compare every local file with the
repo's ``main`` (sha256 for LFS files, git blob sha1 for the others) so a rerun after an interruption uploads only
what is missing; upload the Parquet shards in several commits (bounded by file count and bytes); then one last
commit with the card (rendered for this repo id), build.json, the figure and the loading script, deleting the
repo's stale ``data/`` shards; then tag that last commit. ``dry_run`` does the comparison only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from multilabel_imagenet.dataset import card, writer

MANAGED_PREFIXES = ("data/", "metadata/", "loading_script/")
"""Remote files under these folders that the folder does not hold are deleted by a publish."""
MAX_FILES_PER_COMMIT = 100
MAX_BYTES_PER_COMMIT = 8 * 2**30


class PublishError(RuntimeError):
    """Publishing was refused (existing tag, version mismatch) or a commit failed; the message says which."""


@dataclass
class PublishPlan:
    """What a publish would do: ``upload`` (new or changed), ``unchanged`` and ``delete`` paths, commit batches."""

    repo_id: str
    tag: str
    repo_exists: bool
    upload: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)
    final: list[str] = field(default_factory=list)


@dataclass
class PublishResult:
    """A finished publish: the plan, the commits made (oids) and the tagged commit."""

    plan: PublishPlan
    commits: list[str]
    tagged_commit: str


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with ``data`` (what the Hub reports as a regular file's ``blob_id``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _local_files(folder: Path, readme: bytes) -> dict[str, bytes | Path]:
    files: dict[str, bytes | Path] = {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }
    files["README.md"] = readme
    return files


def _same(local: bytes | Path, remote) -> bool:
    data = local if isinstance(local, bytes) else None
    if remote.lfs is not None:
        digest = hashlib.sha256(data).hexdigest() if data is not None else writer.file_sha256(local)
        return digest == remote.lfs.sha256
    return git_blob_sha1(data if data is not None else local.read_bytes()) == remote.blob_id


def _size(local: bytes | Path) -> int:
    return len(local) if isinstance(local, bytes) else local.stat().st_size


def _batches(paths: list[str], files: dict[str, bytes | Path], max_files: int, max_bytes: int) -> list[list[str]]:
    batches: list[list[str]] = []
    size = 0
    for path in paths:
        if not batches or len(batches[-1]) >= max_files or size + _size(files[path]) > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += _size(files[path])
    return batches


def _remote_files(api: HfApi, repo_id: str) -> dict:
    """The files on the repo's ``main`` by path (none for a repo without commits)."""
    try:
        entries = api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)
        return {entry.path: entry for entry in entries if hasattr(entry, "blob_id")}
    except (RevisionNotFoundError, RemoteEntryNotFoundError):
        return {}


def plan_publish(
    folder: str | Path,
    repo_id: str,
    version: str,
    api: HfApi,
    max_files_per_commit: int = MAX_FILES_PER_COMMIT,
    max_bytes_per_commit: int = MAX_BYTES_PER_COMMIT,
) -> tuple[PublishPlan, dict[str, bytes | Path]]:
    """Check the folder and the repo and return the plan with the local files (README.md rendered in memory)."""
    folder = Path(folder)
    writer.check_version(version)
    manifest = writer.read_build_json(folder)
    if manifest["version"] != version:
        raise PublishError(
            f"{folder / writer.BUILD_JSON} says version {manifest['version']}, not {version}: "
            "rebuild or re-import with that version"
        )
    for config in manifest["configs"]:
        writer.check_folder(folder, config)
    readme = (str(card.render_card(folder, repo_id)) + "\n").encode("utf-8")
    files = _local_files(folder, readme)
    tag = f"v{version}"
    try:
        tags = {ref.name for ref in api.list_repo_refs(repo_id, repo_type="dataset").tags}
        exists = True
    except RepositoryNotFoundError:
        tags, exists = set(), False
    remote = _remote_files(api, repo_id) if exists else {}
    if tag in tags:
        raise PublishError(f"{repo_id} already has tag {tag}; a published version is never overwritten")
    plan = PublishPlan(repo_id=repo_id, tag=tag, repo_exists=exists)
    for path, local in files.items():
        (plan.unchanged if path in remote and _same(local, remote[path]) else plan.upload).append(path)
    plan.delete = sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in files)
    shards = [p for p in plan.upload if p.startswith("data/")]
    plan.final = [p for p in plan.upload if not p.startswith("data/")]
    plan.batches = _batches(shards, files, max_files_per_commit, max_bytes_per_commit)
    return plan, files


def publish(
    folder: str | Path,
    repo_id: str,
    version: str,
    *,
    api: HfApi | None = None,
    private: bool = False,
    dry_run: bool = False,
    max_files_per_commit: int = MAX_FILES_PER_COMMIT,
    max_bytes_per_commit: int = MAX_BYTES_PER_COMMIT,
) -> PublishResult:
    """Publish ``folder`` as version ``version`` of the Hub dataset ``repo_id`` (see the module docstring)."""
    folder = Path(folder)
    api = api or HfApi()
    plan, files = plan_publish(folder, repo_id, version, api, max_files_per_commit, max_bytes_per_commit)
    if dry_run:
        return PublishResult(plan, [], "")
    (folder / "README.md").write_bytes(files["README.md"])
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commits = []
    parts = len(plan.batches) + 1
    for i, batch in enumerate(plan.batches, start=1):
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            allow_patterns=batch,
            commit_message=f"{plan.tag}: data shards, part {i}/{parts}",
        )
        commits.append(info.oid)
    if plan.final or plan.delete or not commits:
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            allow_patterns=plan.final or ["README.md"],
            delete_patterns=plan.delete or None,
            commit_message=f"{plan.tag}: card, build metadata, loading script (part {parts}/{parts})",
        )
        commits.append(info.oid)
    api.create_tag(
        repo_id, tag=plan.tag, revision=commits[-1], repo_type="dataset", tag_message=f"multilabel-imagenet {plan.tag}"
    )
    return PublishResult(plan, commits, commits[-1])

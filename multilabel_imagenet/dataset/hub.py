"""Publish a dataset folder to the Hugging Face Hub as one commit, tagged ``vX.Y.Z``.

Order of work, so that no reader ever sees a mixed release:

1. Local checks, before any request: the folder's version, every config's files, and the card rendered in memory
   for this repo id, its YAML checked against build.json (:func:`.card.check_card`).
2. The Hub checks the card's YAML too (``/api/validate-yaml``), still before anything is uploaded; an existing tag
   is refused; every local file is compared with the repo's ``main`` at its current head commit (sha256 for LFS
   files, git blob sha1 for the others).
3. New and changed shards are pre-uploaded to the LFS store in batches (bounded by file count and bytes). This
   creates no commit: ``main`` is untouched, and a rerun after an interruption sends no object the store holds.
4. One commit on top of that head (``parent_commit``: it fails if ``main`` moved meanwhile) adds the shards, the
   card, build.json, the figure and the loading script and deletes the repo's stale files under
   :data:`MANAGED_PREFIXES` (an earlier version's shards). ``main`` goes from the old release to the new in one step.
5. The tag goes on that commit; then the folder's README.md and figure are replaced (atomically) by what was
   uploaded. A rerun after a failed tag finds nothing to upload and tags the head.

``dry_run`` does steps 1-2 only and writes nothing, locally or remotely. Without the Hub (``HF_HUB_OFFLINE=1``, no
network) every step that needs it raises :class:`PublishError` with a message saying so, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from multilabel_imagenet import atomic
from multilabel_imagenet.dataset import card, loading, writer

MANAGED_PREFIXES = ("data/", "metadata/", "loading_script/")
"""Remote files under these folders that the folder does not hold are deleted by the release commit."""
MAX_FILES_PER_UPLOAD = 100
MAX_BYTES_PER_UPLOAD = 8 * 2**30
_NO_COMMIT = "0" * 40


class PublishError(RuntimeError):
    """Publishing was refused (invalid card, existing tag, version mismatch, no Hub) or a commit failed; the message
    says which and what state the repo is left in."""


@dataclass
class PublishPlan:
    """What a publish does: ``upload`` (new or changed), ``unchanged`` and ``delete`` paths; ``batches``: the shards
    pre-uploaded before the one release commit; ``parent_commit``: the head of ``main`` it was planned against."""

    repo_id: str
    tag: str
    repo_exists: bool
    parent_commit: str | None = None
    upload: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)

    @property
    def needs_commit(self) -> bool:
        """False when ``main`` already holds exactly this release (a rerun after the tag failed): only tag it."""
        return bool(self.upload or self.delete)


@dataclass
class PublishResult:
    """A finished publish: the plan, the release commit (None for a dry run) and whether it was made now."""

    plan: PublishPlan
    commit: str | None
    committed: bool = False

    @property
    def tagged_commit(self) -> str | None:
        return self.commit


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with ``data`` (what the Hub reports as a regular file's ``blob_id``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def _reaching(api: HfApi, state: Callable[[], str]) -> Iterator[None]:
    """Turn "the Hub cannot be reached" into a :class:`PublishError` saying so and what ``state()`` the repo is in."""
    try:
        yield
    except OfflineModeIsEnabled:
        raise PublishError(
            f"HF_HUB_OFFLINE is set: publishing (and --dry-run, which compares the folder with the repo) needs the "
            f"Hub; {state()}. Unset HF_HUB_OFFLINE and rerun"
        ) from None
    except loading.network_errors() as err:
        raise PublishError(
            f"cannot reach the Hub at {api.endpoint} ({type(err).__name__}: {err}); {state()}. "
            "Rerun when it is reachable: nothing already uploaded is sent again"
        ) from None


def _local_files(folder: Path, readme: bytes, figure: bytes | None) -> dict[str, bytes | Path]:
    files: dict[str, bytes | Path] = {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }
    files["README.md"] = readme
    if figure is not None:
        files[card.FIGURE] = figure
    return dict(sorted(files.items()))


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


def _remote_files(api: HfApi, repo_id: str, revision: str) -> dict:
    """The files of the repo at ``revision`` by path (none for a repo without commits)."""
    try:
        entries = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
        return {entry.path: entry for entry in entries if hasattr(entry, "blob_id")}
    except (RevisionNotFoundError, RemoteEntryNotFoundError):
        return {}


def _check_card_on_hub(api: HfApi, text: str) -> None:
    """The Hub's own validation of a card's YAML (what a commit of README.md would be refused for)."""
    try:
        api._validate_yaml(text, repo_type="dataset")  # HfApi has no public name for this call
    except ValueError as err:
        reason = " ".join(str(err).split())
        raise PublishError(f"the Hub rejects the card's YAML header ({reason}); nothing was uploaded") from None


def plan_publish(
    folder: str | Path,
    repo_id: str,
    version: str,
    api: HfApi,
    max_files_per_upload: int = MAX_FILES_PER_UPLOAD,
    max_bytes_per_upload: int = MAX_BYTES_PER_UPLOAD,
) -> tuple[PublishPlan, dict[str, bytes | Path]]:
    """Check the folder, its card and the repo; return the plan with the local files (README.md and the figure
    rendered in memory). Writes nothing, locally or remotely."""
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
    readme = card.card_bytes(card.render_card(folder, repo_id))
    try:
        card.check_card(readme.decode("utf-8"), manifest, f"{folder / 'README.md'} (rendered for {repo_id})")
    except card.CardError as err:
        raise PublishError(f"{err}; nothing was uploaded") from None
    files = _local_files(folder, readme, card.figure_png(manifest))
    tag = f"v{version}"
    with _reaching(api, lambda: "the folder and its card passed the local checks; nothing was uploaded"):
        _check_card_on_hub(api, readme.decode("utf-8"))
        try:
            refs = api.list_repo_refs(repo_id, repo_type="dataset")
        except RepositoryNotFoundError:
            refs = None
        head = None
        if refs is not None:
            head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
            head = None if head == _NO_COMMIT else head
            if tag in {ref.name for ref in refs.tags}:
                raise PublishError(f"{repo_id} already has tag {tag}; a published version is never overwritten")
        remote = _remote_files(api, repo_id, head) if head else {}
    plan = PublishPlan(repo_id=repo_id, tag=tag, repo_exists=refs is not None, parent_commit=head)
    for path, local in files.items():
        (plan.unchanged if path in remote and _same(local, remote[path]) else plan.upload).append(path)
    plan.delete = sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in files)
    shards = [p for p in plan.upload if p.startswith("data/")]
    plan.batches = _batches(shards, files, max_files_per_upload, max_bytes_per_upload)
    return plan, files


def _addition(path: str, local: bytes | Path) -> CommitOperationAdd:
    return CommitOperationAdd(path_in_repo=path, path_or_fileobj=local if isinstance(local, bytes) else str(local))


def publish(
    folder: str | Path,
    repo_id: str,
    version: str,
    *,
    api: HfApi | None = None,
    private: bool = False,
    dry_run: bool = False,
    max_files_per_upload: int = MAX_FILES_PER_UPLOAD,
    max_bytes_per_upload: int = MAX_BYTES_PER_UPLOAD,
    progress: Callable[[str], None] | None = None,
) -> PublishResult:
    """Publish ``folder`` as version ``version`` of the Hub dataset ``repo_id`` (see the module docstring)."""
    folder = Path(folder)
    api = api or HfApi()
    say = progress or (lambda message: None)
    plan, files = plan_publish(folder, repo_id, version, api, max_files_per_upload, max_bytes_per_upload)
    if dry_run:
        return PublishResult(plan, None)
    commit: str | None = None
    state = ["nothing was committed: main is unchanged"]
    with _reaching(api, lambda: state[0]):
        if not plan.repo_exists:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            state[0] = f"{repo_id} was created and holds no release yet"
        additions = {path: _addition(path, files[path]) for path in plan.upload}
        for i, batch in enumerate(plan.batches, start=1):
            say(f"uploading shards, batch {i}/{len(plan.batches)} ({len(batch)} files)")
            api.preupload_lfs_files(repo_id, additions=[additions[p] for p in batch], repo_type="dataset")
            state[0] = "nothing was committed: main is unchanged (the uploaded shards are kept for a rerun)"
        if plan.needs_commit:
            operations = [*additions.values(), *(CommitOperationDelete(path_in_repo=p) for p in plan.delete)]
            say(f"committing {plan.tag}: {len(plan.upload)} added or changed, {len(plan.delete)} deleted")
            try:
                info = api.create_commit(
                    repo_id,
                    operations,
                    commit_message=f"{plan.tag}: data shards, card, build metadata, loading script",
                    commit_description=(
                        f"multilabel-imagenet {plan.tag}: {len(plan.upload)} files added or changed, "
                        f"{len(plan.delete)} stale files deleted, {len(plan.unchanged)} unchanged."
                    ),
                    repo_type="dataset",
                    parent_commit=plan.parent_commit,
                )
            except HfHubHTTPError as err:
                status = getattr(getattr(err, "response", None), "status_code", None)
                why = "main moved since the plan (another publish?)" if status in (409, 412) else "the Hub refused it"
                reason = " ".join(str(err).split())
                raise PublishError(
                    f"the release commit was not made: {why} ({reason}); {state[0]}. Rerun: the plan is made again "
                    "against the current head and no uploaded shard is sent twice"
                ) from None
            commit = info.oid
            state[0] = f"the release commit {commit} is on main but not tagged {plan.tag}: rerun to tag it"
        else:
            commit = plan.parent_commit
            state[0] = f"main ({commit}) already holds this release but is not tagged {plan.tag}: rerun to tag it"
        if commit is None:
            raise PublishError(f"{repo_id}: nothing to commit and no head commit to tag")
        api.create_tag(
            repo_id, tag=plan.tag, revision=commit, repo_type="dataset", tag_message=f"multilabel-imagenet {plan.tag}"
        )
    for path in ("README.md", card.FIGURE):  # the folder now mirrors the release (the card names the repo)
        if path in files and isinstance(files[path], bytes) and _read(folder / path) != files[path]:
            try:
                atomic.write_bytes(folder / path, files[path])
            except OSError as err:  # published and tagged all the same: say so, do not fail
                say(f"published, but {folder / path} was not updated to the uploaded copy ({err})")
    return PublishResult(plan, commit, committed=plan.needs_commit)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None

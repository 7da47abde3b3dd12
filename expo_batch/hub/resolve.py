"""Pin a model reference: a Hub reference to its commit SHA, a local folder to a content hash.

The SHA (or hash) is what every later step records and keys on. Online, the Hub is asked once per
reference (model info at the requested revision, with file sizes); offline (``HF_HUB_OFFLINE=1``)
or when the Hub stays unreachable after retries, the reference resolves from the local cache if
that revision was downloaded before, and otherwise fails saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from expo_batch.errors import CheckpointError, HubError
from expo_batch.hub import _env
from expo_batch.hub._errors import Context, call, is_transient, offline_not_cached
from expo_batch.refs import ModelRef

Source = Literal["hub", "cache", "local"]

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# Weight files are hashed by header (safetensors) and sampled chunks, never read whole.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_SMALL_FILE_LIMIT = 64 * 1024 * 1024
_SAMPLES, _SAMPLE_BYTES = 16, 4096


@dataclass(frozen=True)
class RepoFile:
    """A file of a checkpoint: its path relative to the repo root or folder, and its size."""

    name: str
    size: int


@dataclass(frozen=True)
class ResolvedRef:
    """A reference pinned to what it names now.

    Attributes:
        ref: the reference as parsed from the manifest or command line.
        sha: the Hub commit SHA (40 hex), or for a local folder a sha256 content hash (64 hex).
        local_path: the folder, for a local reference; None for a Hub reference.
        where: where the reference was written (``registry.yaml:42 pairs[3].aligned``), for errors.
        source: ``hub`` (asked the Hub), ``cache`` (offline, from the local cache) or ``local``.
        files: the files at that revision, with sizes (the repo root and subfolders).
    """

    ref: ModelRef
    sha: str
    local_path: Path | None = None
    where: str | None = None
    source: Source = "hub"
    files: tuple[RepoFile, ...] = field(default=(), repr=False)

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    @property
    def repo_id(self) -> str | None:
        return self.ref.repo_id

    @property
    def pinned(self) -> str:
        """``org/name@sha`` for a Hub reference, the folder for a local one."""
        return str(self.local_path) if self.is_local else f"{self.ref.repo_id}@{self.sha}"

    def context(self) -> Context:
        return Context(self.ref.text, self.ref.repo_id, self.ref.revision, self.where)

    def to_dict(self) -> dict:
        return {
            "ref": self.ref.text,
            "repo_id": self.ref.repo_id,
            "revision": self.ref.revision,
            "sha": self.sha,
            "local_path": str(self.local_path) if self.local_path else None,
            "source": self.source,
        }


def resolve(ref: ModelRef, *, where: str | None = None) -> ResolvedRef:
    """Pin ``ref``: a Hub reference to its commit SHA, a local folder to its content hash.

    Raises:
        HubError: gated repo or bad token, unknown repo or revision, Hub unreachable after retries
            and nothing cached, or offline and not cached. The message names ``ref`` and ``where``.
        CheckpointError: a local folder that does not exist.
    """
    if ref.is_local:
        return _resolve_local(ref, where)
    ctx = Context(ref.text, ref.repo_id, ref.revision, where)
    sha, source, files = pin_revision(ref.repo_id, ref.revision, ctx)
    return ResolvedRef(ref=ref, sha=sha, where=where, source=source, files=files)


def pin_revision(
    repo_id: str, revision: str | None, ctx: Context, *, repo_type: str = "model"
) -> tuple[str, Source, tuple[RepoFile, ...]]:
    """The commit SHA ``revision`` of a Hub repo names now, where it was learnt, and its files.

    Online: one repo-info request (with file sizes), retried when transient; the branch or tag is
    then recorded in the cache's ``refs/`` so that it resolves offline later. Offline, or when the
    Hub stays unreachable after retries: the cached snapshot of that revision (its files are the
    ones on disk), else a :class:`HubError` naming ``ctx``.

    Args:
        repo_type: ``model`` or ``dataset`` (any repo type huggingface_hub knows).
    """
    if _env.is_offline():
        sha = cached_revision(repo_id, revision, repo_type=repo_type)
        if sha is None:
            raise offline_not_cached(ctx)
        return sha, "cache", _folder_files(repo_id, sha, repo_type)
    api = _env.api()
    try:
        info = call(
            lambda: api.repo_info(
                repo_id, revision=revision, repo_type=repo_type, files_metadata=True
            ),
            ctx,
        )
    except HubError as e:
        if e.__cause__ is not None and is_transient(e.__cause__):
            sha = cached_revision(repo_id, revision, repo_type=repo_type)
            if sha is not None:
                from expo_batch.console import warn

                warn(f"{e.message}; using the cached revision {sha} of {repo_id}")
                return sha, "cache", _folder_files(repo_id, sha, repo_type)
        raise
    files = tuple(
        RepoFile(s.rfilename, int(s.size if s.size is not None else (s.lfs.size if s.lfs else 0)))
        for s in (info.siblings or [])
    )
    _remember_revision(repo_id, revision, info.sha, repo_type=repo_type)
    return info.sha, "hub", files


def storage_folder(repo_id: str, repo_type: str = "model") -> Path:
    """The folder of ``repo_id`` in the Hugging Face cache (``models--org--name``,
    ``datasets--org--name``)."""
    from huggingface_hub.file_download import repo_folder_name

    return Path(_env.cache_dir()) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def snapshot_folder(repo_id: str, sha: str, repo_type: str = "model") -> Path:
    return storage_folder(repo_id, repo_type) / "snapshots" / sha


def resolve_from_cache(ref: ModelRef, *, where: str | None = None) -> ResolvedRef | None:
    """The cached snapshot of ``ref``'s revision, or None when it was never downloaded."""
    sha = cached_revision(ref.repo_id, ref.revision)
    if sha is None:
        return None
    files = _folder_files(ref.repo_id, sha, "model")
    return ResolvedRef(ref=ref, sha=sha, where=where, source="cache", files=files)


def cached_revision(repo_id: str, revision: str | None, *, repo_type: str = "model") -> str | None:
    """The SHA ``revision`` named when it was last resolved online, if its snapshot is cached.

    No request is made: a branch or tag is looked up in the cache's ``refs/``, a full SHA as is.
    """
    from huggingface_hub.errors import RevisionResolutionError

    try:
        sha = str(
            _env.api()
            .resolve_revision(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                cache_dir=_env.cache_dir(),
                local_files_only=True,
            )
            .resolved
        )
    except RevisionResolutionError:
        return None
    return sha if snapshot_folder(repo_id, sha, repo_type).is_dir() else None


def _folder_files(repo_id: str, sha: str, repo_type: str) -> tuple[RepoFile, ...]:
    return tuple(list_folder(snapshot_folder(repo_id, sha, repo_type)))


def _remember_revision(
    repo_id: str, revision: str | None, sha: str, *, repo_type: str = "model"
) -> None:
    """Record ``revision -> sha`` in the cache's refs/ folder (as huggingface_hub does), so that the
    same reference resolves offline later. Best effort: a read-only cache is not an error."""
    revision = revision or "main"
    if _SHA_RE.match(revision):
        return
    path = storage_folder(repo_id, repo_type) / "refs" / revision
    with contextlib.suppress(OSError):
        if path.is_file() and path.read_text().strip() == sha:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(sha)
        os.replace(tmp, path)


# ---- local folders ------------------------------------------------------------------------------


def _resolve_local(ref: ModelRef, where: str | None) -> ResolvedRef:
    path = Path(ref.path)
    if not path.is_dir():
        at = f" ({where})" if where else ""
        raise CheckpointError(
            f"model folder {path} does not exist{at}",
            "give an existing folder, or a Hub id such as 'org/name' or 'org/name@revision'",
        )
    files = tuple(list_folder(path))
    return ResolvedRef(
        ref=ref,
        sha=content_hash(path, files),
        local_path=path,
        where=where,
        source="local",
        files=files,
    )


def list_folder(folder: Path) -> list[RepoFile]:
    """Files under ``folder`` (following the cache's symlinks), hidden ones skipped, sorted."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(RepoFile(rel.as_posix(), p.stat().st_size))
    return out


def content_hash(folder: Path, files: tuple[RepoFile, ...] | None = None) -> str:
    """A cheap, deterministic sha256 of a checkpoint folder's content.

    Covers every file's relative name and size, the full bytes of small non-weight files (configs,
    tokenizers, templates), the header of each safetensors file, and 16 evenly spaced 4 KiB samples
    of each weight file. Whole weights are never read: a retrained model with the same shapes is
    still told apart by its sampled bytes, at the cost of a few reads per file.
    """
    folder = Path(folder)
    h = hashlib.sha256(b"expo-batch local folder v1\0")
    for f in files if files is not None else list_folder(folder):
        path = folder / f.name
        h.update(f"{f.name}\0{f.size}\0".encode())
        if f.name.endswith(WEIGHT_SUFFIXES):
            with open(path, "rb") as fh:
                if f.name.endswith(".safetensors") and f.size >= 8:
                    n = int.from_bytes(fh.read(8), "little")
                    h.update(fh.read(min(n, f.size - 8)))
                for i in range(_SAMPLES):
                    fh.seek(max(0, (f.size - _SAMPLE_BYTES) * i // (_SAMPLES - 1)))
                    h.update(fh.read(_SAMPLE_BYTES))
        elif f.size <= _SMALL_FILE_LIMIT:
            h.update(path.read_bytes())
    return h.hexdigest()

"""Hub datasets: pin a dataset to its commit SHA, list its files, download chosen files pinned to it.

The same edge as for models (:mod:`expo_batch.hub.resolve`, :mod:`expo_batch.hub._errors`): the
endpoint read at call time, transient failures retried, every failure a :class:`HubError` naming
the dataset, and ``HF_HUB_OFFLINE=1`` served from the local cache without a single request.

Usage::

    ds = resolve_dataset("HuggingFaceH4/ultrafeedback_binarized", "main")
    [path] = download_dataset_files(ds, ["data/test_gen-00000-of-00001.parquet"])
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from expo_batch.errors import HubError
from expo_batch.hub import _env
from expo_batch.hub._errors import Context, call, offline_not_cached
from expo_batch.hub.resolve import RepoFile, Source, pin_revision, snapshot_folder

REPO_TYPE = "dataset"


@dataclass(frozen=True)
class ResolvedDataset:
    """A Hub dataset pinned to the commit its revision names now.

    Attributes:
        repo_id: ``org/name``.
        revision: the revision as requested (branch, tag, SHA), or None for the default branch.
        sha: the commit SHA (40 hex) every download is pinned to.
        where: where the dataset was named (``registry.yaml:7 prompts.dataset``), for errors.
        source: ``hub`` (asked the Hub) or ``cache`` (offline, or the Hub unreachable).
        files: the dataset's files at that commit, with sizes. Offline, the listing cached by the
            last download (so that a split resolves to the same files), else the files on disk.
    """

    repo_id: str
    revision: str | None
    sha: str
    where: str | None = None
    source: Source = "hub"
    files: tuple[RepoFile, ...] = field(default=(), repr=False)

    @property
    def pinned(self) -> str:
        return f"{self.repo_id}@{self.sha}"

    @property
    def folder(self) -> Path:
        """The snapshot folder of this commit in the Hugging Face cache."""
        return snapshot_folder(self.repo_id, self.sha, REPO_TYPE)

    def context(self) -> Context:
        return _context(self.repo_id, self.revision, self.where)

    def to_dict(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "sha": self.sha,
            "source": self.source,
        }


def _context(repo_id: str, revision: str | None, where: str | None) -> Context:
    text = f"{repo_id}@{revision}" if revision else repo_id
    return Context(text, repo_id, revision, where, repo_type=REPO_TYPE)


def resolve_dataset(
    repo_id: str, revision: str | None = None, *, where: str | None = None
) -> ResolvedDataset:
    """Pin dataset ``repo_id`` at ``revision`` (default branch when None) to its commit SHA.

    Raises:
        HubError: unknown dataset or revision, rejected token, Hub unreachable after retries and
            nothing cached, or offline and not cached. The message names the dataset and ``where``.
    """
    ctx = _context(repo_id, revision, where)
    sha, source, files = pin_revision(repo_id, revision, ctx, repo_type=REPO_TYPE)
    if source == "cache":
        files = _cached_listing(repo_id, sha) or files
    return ResolvedDataset(repo_id, revision, sha, where=where, source=source, files=files)


def _cached_listing(repo_id: str, sha: str) -> tuple[RepoFile, ...] | None:
    """The full file listing huggingface_hub cached for ``sha`` when it downloaded from it."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        tree = get_cached_repo_tree(
            repo_id, repo_type=REPO_TYPE, revision=sha, cache_dir=_env.cache_dir()
        )
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return None
    return tuple(sorted((RepoFile(f.path, int(f.size or 0)) for f in tree), key=lambda f: f.name))


def download_dataset_files(resolved: ResolvedDataset, names: Iterable[str]) -> list[Path]:
    """Local paths of ``names`` (files of ``resolved``), downloading what the cache lacks.

    Downloads are pinned to ``resolved.sha`` and go to the standard Hugging Face cache; files
    already there are not requested again. Offline (``HF_HUB_OFFLINE=1``) nothing is requested
    at all.

    Raises:
        HubError: a name not in the dataset at that commit; gated dataset without access; Hub
            unreachable after retries; offline and a file not cached.
    """
    names = list(dict.fromkeys(names))
    ctx = resolved.context()
    known = {f.name for f in resolved.files}
    unknown = [n for n in names if known and n not in known]
    if unknown:
        raise HubError(
            f"{ctx.ref} has no file {unknown[0]!r} at commit {resolved.sha}",
            f"files there: {', '.join(sorted(known)[:15])}",
        )
    folder = resolved.folder
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and _env.is_offline():
        raise offline_not_cached(ctx)
    if missing:
        from huggingface_hub import snapshot_download

        call(
            lambda: snapshot_download(
                resolved.repo_id,
                repo_type=REPO_TYPE,
                revision=resolved.sha,
                allow_patterns=[glob.escape(n) for n in missing],
                cache_dir=_env.cache_dir(),
                endpoint=_env.endpoint(),
            ),
            ctx,
        )
        still = [n for n in missing if not (folder / n).is_file()]
        if still:
            raise HubError(f"{ctx.ref}: {still[0]} was not downloaded from commit {resolved.sha}")
    return [folder / n for n in names]

"""Publish a model folder to the Hub in one commit, idempotently.

The commit carries ``expo_publish.json`` (the artifact's fingerprint and file list). Before
uploading, that file is read back from the repo: when it already holds the same fingerprint,
nothing is uploaded. A dry run touches nothing (no network, no writes) and says exactly what would
go where.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from expo_batch.errors import HubError
from expo_batch.hub import _env
from expo_batch.hub._errors import Context, call
from expo_batch.hub.preflight import fmt_bytes
from expo_batch.hub.resolve import list_folder

MARKER = "expo_publish.json"
Action = Literal["dry-run", "uploaded", "skipped"]


@dataclass
class PublishResult:
    repo_id: str
    url: str
    action: Action
    fingerprint: str
    private: bool
    commit_message: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, bytes)
    commit_url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        """Human-readable lines: what was (or would be) uploaded where."""
        what = f"{len(self.files)} files ({fmt_bytes(self.total_bytes)})"
        vis = "private" if self.private else "public"
        if self.action == "skipped":
            return f"skipped {self.url}: it already holds fingerprint {self.fingerprint}"
        if self.action == "uploaded":
            return f"uploaded {what} to {self.url} in one commit: {self.commit_url}"
        width = max((len(n) for n, _ in self.files), default=0)
        lines = [
            f"dry run: would upload {what} to {self.url} ({vis} repo, created if missing) "
            "in one commit, unless it already holds this fingerprint",
            f"  commit message: {self.commit_message}",
            f"  fingerprint:    {self.fingerprint}",
        ]
        lines += [f"    {n:<{width}}  {fmt_bytes(s):>10}" for n, s in self.files]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "url": self.url,
            "action": self.action,
            "fingerprint": self.fingerprint,
            "private": self.private,
            "commit_message": self.commit_message,
            "commit_url": self.commit_url,
            "files": [{"path": n, "bytes": s} for n, s in self.files],
            "total_bytes": self.total_bytes,
        }


def publish(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    fingerprint: str,
    commit_message: str,
    dry_run: bool = False,
) -> PublishResult:
    """Upload ``folder`` to ``repo_id`` in one commit, unless it already holds ``fingerprint``.

    Creates the repo if needed (``private`` applies only then). The commit message is the
    caller's (it should name the source pair and alpha); its description records the fingerprint.

    Raises:
        HubError: no token, token without write access, unreachable after retries, empty folder.
    """
    from expo_batch import __version__

    folder = Path(folder)
    files = [f for f in list_folder(folder)] if folder.is_dir() else []
    files = [f for f in files if f.name != MARKER]
    if not files:
        raise HubError(f"nothing to publish: {folder} is not a folder with files")
    marker = json.dumps(
        {
            "fingerprint": fingerprint,
            "tool": f"expo-batch {__version__}",
            "files": {f.name: f.size for f in files},
        },
        indent=2,
    ).encode()
    listing = [(f.name, f.size) for f in files] + [(MARKER, len(marker))]
    result = PublishResult(
        repo_id=repo_id,
        url=f"{_env.endpoint()}/{repo_id}",
        action="dry-run",
        fingerprint=fingerprint,
        private=private,
        commit_message=commit_message,
        files=listing,
    )
    if dry_run:
        return result
    if _env.is_offline():
        raise HubError(f"cannot publish {repo_id}: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE")
    if _env.current_token() is None:
        raise HubError(
            f"publishing {repo_id} needs a Hugging Face token with write access, and none is set",
            "set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) or run "
            "`hf auth login`",
        )
    from huggingface_hub import CommitOperationAdd

    ctx = Context(repo_id, repo_id, None, None)
    api = _env.api()
    call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), ctx)
    if remote_fingerprint(repo_id) == fingerprint:
        result.action = "skipped"
        return result
    ops = [CommitOperationAdd(f.name, str(folder / f.name)) for f in files]
    ops.append(CommitOperationAdd(MARKER, marker))
    info = call(
        lambda: api.create_commit(
            repo_id,
            ops,
            commit_message=commit_message,
            commit_description=f"expo-batch fingerprint: {fingerprint}",
        ),
        ctx,
    )
    result.action = "uploaded"
    result.commit_url = str(info.commit_url)
    return result


def remote_fingerprint(repo_id: str) -> str | None:
    """The fingerprint recorded in ``repo_id``'s ``expo_publish.json`` on main, or None."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    api = _env.api()

    def read() -> str | None:
        # a private, throw-away cache: a stale cached copy must never decide to skip an upload
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = api.hf_hub_download(repo_id, MARKER, revision="main", cache_dir=tmp)
            except RemoteEntryNotFoundError:
                return None
            try:
                return json.loads(Path(path).read_text()).get("fingerprint")
            except (ValueError, AttributeError):
                return None

    return call(read, Context(repo_id, repo_id, "main", None))

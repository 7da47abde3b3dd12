"""Download a resolved checkpoint into the standard Hugging Face cache, pinned to its SHA."""

from __future__ import annotations

from pathlib import Path

from expo_batch.compat import VocabPolicy
from expo_batch.errors import HubError
from expo_batch.hub import _env
from expo_batch.hub._errors import call, offline_not_cached
from expo_batch.hub.files import select_files
from expo_batch.hub.resolve import ResolvedRef, snapshot_folder
from expo_batch.refs import ModelRef


def fetch(resolved: ResolvedRef, *, trust_remote_code: bool = False) -> Path:
    """The folder holding ``resolved``'s files, downloading what the cache lacks.

    ``snapshot_download`` pinned to the commit SHA, with allow-patterns for the weights (safetensors
    preferred over ``.bin``), their index, configs, tokenizer files and chat templates, and
    ``*.py`` only when ``trust_remote_code``. Uses HF_HOME / HF_HUB_CACHE, HF_TOKEN and
    HF_HUB_OFFLINE as huggingface_hub does; files already in the cache are not fetched again, so
    a run that was interrupted continues with the files it lacks. Progress bars go to stderr.
    A local folder is returned as is.

    Raises:
        HubError: no weights in the repo, gated/401, unreachable after retries, offline and
            not cached.
    """
    if resolved.is_local:
        return resolved.local_path
    ctx = resolved.context()
    sel = select_files(resolved.files, trust_remote_code=trust_remote_code)
    if sel.format is None:
        raise HubError(
            f"{ctx.ref} has no weight files (*.safetensors or *.bin at the repo root) at "
            f"commit {resolved.sha}"
        )
    if resolved.source == "cache" or _env.is_offline():
        folder = snapshot_folder(resolved.repo_id, resolved.sha)
        missing = [f.name for f in sel.files if not (folder / f.name).is_file()]
        if not missing:
            return folder
        if _env.is_offline():
            raise offline_not_cached(ctx)
        # Resolved from the cache because the Hub was unreachable: try to download the rest,
        # which fails with the network error (not a misleading "offline") if it is still down.
    from huggingface_hub import snapshot_download

    path = call(
        lambda: snapshot_download(
            resolved.repo_id,
            revision=resolved.sha,
            allow_patterns=sel.allow_patterns,
            cache_dir=_env.cache_dir(),
            endpoint=_env.endpoint(),
        ),
        ctx,
    )
    return Path(path)


def fetch_pair(
    sft: ModelRef,
    aligned: ModelRef,
    *,
    output_dir: Path,
    vocab_policy: VocabPolicy = "error",
    trust_remote_code: bool = False,
) -> tuple[Path, Path, dict]:
    """Resolve, preflight (headers only) and fetch a pair in one go, for single-pair commands.

    The batch pipeline runs the same sequence as separate ledger steps. Returns both folders and
    the provenance of what was resolved (``{"sft": ..., "aligned": ...}``).

    Raises:
        HubError / CheckpointError: as :func:`resolve`, :func:`preflight` and :func:`fetch`.
    """
    from expo_batch.hub.preflight import preflight
    from expo_batch.hub.resolve import resolve

    rs, ra = resolve(sft, where="SFT argument"), resolve(aligned, where="ALIGNED argument")
    if not (rs.is_local and ra.is_local):
        preflight(
            rs, ra, output_dir=output_dir, vocab_policy=vocab_policy,
            trust_remote_code=trust_remote_code,
        ).require_ok()  # fmt: skip
    sft_dir = fetch(rs, trust_remote_code=trust_remote_code)
    aligned_dir = fetch(ra, trust_remote_code=trust_remote_code)
    return sft_dir, aligned_dir, {"sft": rs.to_dict(), "aligned": ra.to_dict()}

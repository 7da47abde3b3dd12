"""The Hub edge: resolve references to commit SHAs, preflight a pair from safetensors headers
before any download, fetch into the standard cache, and publish results idempotently.

All Hub traffic goes through huggingface_hub; every failure a user can act on is a
:class:`expo_batch.errors.HubError` naming the reference as written and where it was written.

Per pair, the pipeline calls::

    sft = resolve(sft_ref, where=...)
    aligned = resolve(aligned_ref, where=...)
    report = preflight(sft, aligned, output_dir=..., vocab_policy=..., trust_remote_code=...)
    report.require_ok()
    sft_dir = fetch(sft, trust_remote_code=...)
    aligned_dir = fetch(aligned, trust_remote_code=...)

Datasets (the prompt set) go through the same edge::

    ds = resolve_dataset("HuggingFaceH4/ultrafeedback_binarized", revision, where=...)
    paths = download_dataset_files(ds, ["data/test_gen-00000-of-00001.parquet"])
"""

from expo_batch.hub._env import RetryPolicy
from expo_batch.hub._errors import Context, is_transient, scrub, translate
from expo_batch.hub.dataset import ResolvedDataset, download_dataset_files, resolve_dataset
from expo_batch.hub.fetch import fetch, fetch_pair
from expo_batch.hub.files import Selection, read_local_specs, remote_specs, select_files
from expo_batch.hub.preflight import (
    DiskCheck,
    PreflightReport,
    SideReport,
    fmt_bytes,
    preflight,
    require_ok,
)
from expo_batch.hub.publish import MARKER, PublishResult, publish, remote_fingerprint
from expo_batch.hub.resolve import (
    RepoFile,
    ResolvedRef,
    cached_revision,
    content_hash,
    pin_revision,
    resolve,
    resolve_from_cache,
    snapshot_folder,
)

__all__ = [
    "MARKER",
    "Context",
    "DiskCheck",
    "PreflightReport",
    "PublishResult",
    "RepoFile",
    "ResolvedDataset",
    "ResolvedRef",
    "RetryPolicy",
    "Selection",
    "SideReport",
    "cached_revision",
    "content_hash",
    "download_dataset_files",
    "fetch",
    "fetch_pair",
    "fmt_bytes",
    "is_transient",
    "pin_revision",
    "preflight",
    "publish",
    "read_local_specs",
    "remote_fingerprint",
    "remote_specs",
    "require_ok",
    "resolve",
    "resolve_dataset",
    "resolve_from_cache",
    "scrub",
    "select_files",
    "snapshot_folder",
    "translate",
]

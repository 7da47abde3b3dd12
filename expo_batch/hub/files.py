"""Which files of a checkpoint the tool needs, and its tensor specs read from headers only.

The selection is computed from the repo's file list: weights (safetensors preferred when a repo has
both formats; only ``model*.safetensors`` when present, so a second copy such as
``consolidated.safetensors`` is not fetched), their index, configs, tokenizer files, chat
templates, and ``*.py`` only for trust_remote_code pairs. Subfolders (``original/``...) are
never fetched.
"""

from __future__ import annotations

import fnmatch
import glob
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from expo_batch.compat import TensorSpec
from expo_batch.errors import CheckpointError
from expo_batch.hub import _env
from expo_batch.hub._errors import call, offline_not_cached
from expo_batch.hub.resolve import RepoFile, ResolvedRef, snapshot_folder

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
_SIDE_SUFFIXES = (".json", ".model", ".tiktoken", ".jinja", ".txt")
_NOT_WEIGHTS = ("training_args.bin", "optimizer*.bin", "scheduler*.bin", "rng_state*")
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class Selection:
    """The files to fetch. ``format`` is ``safetensors``, ``bin`` or None (no weights found)."""

    files: tuple[RepoFile, ...]
    weights: tuple[RepoFile, ...]
    format: str | None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weight_bytes(self) -> int:
        return sum(f.size for f in self.weights)

    @property
    def allow_patterns(self) -> list[str]:
        """Exact names, escaped for fnmatch, for ``snapshot_download(allow_patterns=...)``."""
        return [glob.escape(f.name) for f in self.files]


def select_files(files: Iterable[RepoFile], *, trust_remote_code: bool = False) -> Selection:
    root = [f for f in files if "/" not in f.name]
    names = {f.name for f in root}

    def match(*patterns: str) -> list[RepoFile]:
        return [f for f in root if any(fnmatch.fnmatch(f.name, p) for p in patterns)]

    # the standard names first: a repo may also hold variants (model.fp16.safetensors) or a
    # second copy (consolidated.safetensors) that would double the download
    st = (
        match("model.safetensors", "model-[0-9]*-of-[0-9]*.safetensors")
        or match("model*.safetensors")
        or match("*.safetensors")
    )
    if st:
        weights, fmt, index = st, "safetensors", ST_INDEX
    else:
        bins = (
            match("pytorch_model.bin", "pytorch_model-[0-9]*-of-[0-9]*.bin")
            or match("pytorch_model*.bin")
        ) or [
            f for f in match("*.bin") if not any(fnmatch.fnmatch(f.name, p) for p in _NOT_WEIGHTS)
        ]
        weights, fmt, index = bins, ("bin" if bins else None), BIN_INDEX
    side = [
        f
        for f in root
        if (f.name.endswith(_SIDE_SUFFIXES) and f.name not in (ST_INDEX, BIN_INDEX))
        or (trust_remote_code and f.name.endswith(".py"))
    ]
    chosen = {f.name: f for f in [*weights, *side]}
    if index in names:
        chosen[index] = next(f for f in root if f.name == index)
    ordered = tuple(sorted(chosen.values(), key=lambda f: f.name))
    return Selection(ordered, tuple(sorted(weights, key=lambda f: f.name)), fmt)


# ---- tensor specs from headers ------------------------------------------------------------------


def remote_specs(resolved: ResolvedRef) -> dict[str, TensorSpec] | None:
    """Tensor names, shapes and dtypes from the safetensors headers, without fetching weights.

    Hub references read the headers with range requests (``HfApi.get_safetensors_metadata``);
    local folders and cached snapshots read them from disk. Returns None when the checkpoint has
    no safetensors weights (``.bin`` only), so the check must wait for the download.
    """
    if resolved.is_local:
        return read_local_specs(resolved.local_path)
    if resolved.files and select_files(resolved.files).format != "safetensors":
        return None
    cached = snapshot_folder(resolved.repo_id, resolved.sha)
    if resolved.source == "cache" or _env.is_offline():
        if not cached.is_dir():
            raise offline_not_cached(resolved.context())
        return read_local_specs(cached)
    from huggingface_hub.errors import NotASafetensorsRepoError

    api = _env.api()
    try:
        meta = call(
            lambda: api.get_safetensors_metadata(resolved.repo_id, revision=resolved.sha),
            resolved.context(),
        )
    except NotASafetensorsRepoError:
        return None
    specs: dict[str, TensorSpec] = {}
    for fm in meta.files_metadata.values():
        for name, info in fm.tensors.items():
            specs[name] = TensorSpec(tuple(int(d) for d in info.shape), str(info.dtype))
    return specs


def read_local_specs(folder: Path) -> dict[str, TensorSpec] | None:
    """Specs from the safetensors files in ``folder`` (the index's shards, if there is an index)."""
    folder = Path(folder)
    index = folder / ST_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        shards = sorted({folder / name for name in weight_map.values()})
    else:
        shards = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))
    if not shards:
        return None
    specs: dict[str, TensorSpec] = {}
    for shard in shards:
        specs.update(read_header(shard))
    return specs


def read_header(path: Path) -> dict[str, TensorSpec]:
    """Parse one safetensors header (8-byte little-endian length, then JSON), not the data."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= _MAX_HEADER:
                raise ValueError(f"header length {n} is not plausible")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"shard {path} listed in the index does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    return {
        name: TensorSpec(tuple(int(d) for d in info["shape"]), str(info["dtype"]))
        for name, info in header.items()
        if name != "__metadata__"
    }

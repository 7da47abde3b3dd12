"""Preflight of a pair before any weight is downloaded: compatibility from headers, sizes, disk.

Reads both checkpoints' safetensors headers (range requests on the Hub, from disk locally), checks
them with :func:`expo_batch.compat.check_compatible` (the rule the extrapolation engine applies),
and checks that the disks can hold what is not cached yet plus one output checkpoint.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expo_batch.compat import CompatReport, VocabPolicy, check_compatible
from expo_batch.errors import HubError
from expo_batch.hub import _env
from expo_batch.hub.files import Selection, remote_specs, select_files
from expo_batch.hub.resolve import ResolvedRef


@dataclass
class SideReport:
    """One checkpoint of the pair: what it is pinned to and what fetching it costs."""

    ref: str
    pinned: str
    sha: str
    source: str
    format: str | None
    n_files: int
    total_bytes: int  # the selected files at that revision
    weight_bytes: int
    download_bytes: int  # the part not in the cache yet (0 for local folders)


@dataclass
class DiskCheck:
    """One filesystem: what the pair will write to it, and what is free there."""

    path: str
    needed_bytes: int
    free_bytes: int
    what: str

    @property
    def ok(self) -> bool:
        return self.needed_bytes <= self.free_bytes


@dataclass
class PreflightReport:
    sft: SideReport
    aligned: SideReport
    compat: CompatReport | None
    output_dir: str
    output_bytes: int
    disk: list[DiskCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def download_bytes(self) -> int:
        return self.sft.download_bytes + self.aligned.download_bytes

    @property
    def needed_bytes(self) -> int:
        return sum(d.needed_bytes for d in self.disk)

    @property
    def free_bytes(self) -> int:
        """Free bytes on the filesystem of ``output_dir``."""
        return next((d.free_bytes for d in self.disk if "output" in d.what), 0)

    @property
    def ok(self) -> bool:
        return (self.compat is None or self.compat.ok) and all(d.ok for d in self.disk)

    def to_dict(self) -> dict:
        compat = None
        if self.compat is not None:
            compat = {
                "ok": self.compat.ok,
                "n_tensors": self.compat.n_tensors,
                "problems": list(self.compat.problems),
                "vocab_mismatches": [asdict(v) for v in self.compat.vocab_mismatches],
            }
        return {
            "ok": self.ok,
            "sft": asdict(self.sft),
            "aligned": asdict(self.aligned),
            "compat": compat,
            "download_bytes": self.download_bytes,
            "output_bytes": self.output_bytes,
            "needed_bytes": self.needed_bytes,
            "output_dir": self.output_dir,
            "free_bytes": self.free_bytes,
            "disk": [{**asdict(d), "ok": d.ok} for d in self.disk],
            "notes": list(self.notes),
        }

    def require_ok(self) -> None:
        """Raise CheckpointError (incompatible pair) or HubError (disk too small) when not ok."""
        if self.compat is not None:
            self.compat.raise_for_problems(f"pair {self.sft.ref} -> {self.aligned.ref}")
        for d in self.disk:
            if not d.ok:
                raise HubError(
                    f"not enough disk space for pair {self.sft.ref} -> {self.aligned.ref}: "
                    f"{d.what} need {fmt_bytes(d.needed_bytes)} on the filesystem of {d.path}, "
                    f"only {fmt_bytes(d.free_bytes)} free",
                    "free space there, point HF_HOME (downloads) or the output folder at a "
                    "larger disk, or run fewer pairs at once",
                )


def require_ok(report: PreflightReport) -> None:
    report.require_ok()


def preflight(
    sft: ResolvedRef,
    aligned: ResolvedRef,
    *,
    output_dir: Path,
    vocab_policy: VocabPolicy = "error",
    trust_remote_code: bool = False,
) -> PreflightReport:
    """Check a resolved pair without downloading a weight: tensors, sizes and disk space.

    Raises:
        HubError: a header cannot be read (gated repo, network, offline and not cached...).
    """
    notes: list[str] = []
    sel_s = select_files(sft.files, trust_remote_code=trust_remote_code)
    sel_a = select_files(aligned.files, trust_remote_code=trust_remote_code)
    side_s = _side(sft, sel_s)
    side_a = _side(aligned, sel_a)
    if not sft.is_local and sft.pinned == aligned.pinned:
        side_a.download_bytes = 0  # the same commit is fetched once
    for r, sel in ((sft, sel_s), (aligned, sel_a)):
        if sel.format is None:
            notes.append(f"{r.ref.text}: no weight files (.safetensors or .bin) found at {r.sha}")

    specs_s, specs_a = remote_specs(sft), remote_specs(aligned)
    compat = None
    if specs_s is None or specs_a is None:
        which = [r.ref.text for r, s in ((sft, specs_s), (aligned, specs_a)) if s is None]
        notes.append(
            f"{' and '.join(which)}: no safetensors header to read (.bin weights, or no "
            "model.safetensors / index); the tensor check runs on the downloaded files instead"
        )
    else:
        compat = check_compatible(specs_s, specs_a, vocab_policy=vocab_policy)

    output_bytes = sel_a.weight_bytes
    needs = [(Path(_env.cache_dir()), side_s.download_bytes + side_a.download_bytes, "downloads")]
    needs.append((Path(output_dir), output_bytes, "output"))
    return PreflightReport(
        sft=side_s,
        aligned=side_a,
        compat=compat,
        output_dir=str(output_dir),
        output_bytes=output_bytes,
        disk=_disk_checks(needs),
        notes=notes,
    )


def _side(r: ResolvedRef, sel: Selection) -> SideReport:
    download = 0
    if not r.is_local:
        from huggingface_hub import try_to_load_from_cache

        for f in sel.files:
            hit = try_to_load_from_cache(
                r.repo_id, f.name, cache_dir=_env.cache_dir(), revision=r.sha
            )
            if not isinstance(hit, str):
                download += f.size
    return SideReport(
        ref=r.ref.text,
        pinned=r.pinned,
        sha=r.sha,
        source=r.source,
        format=sel.format,
        n_files=len(sel.files),
        total_bytes=sel.total_bytes,
        weight_bytes=sel.weight_bytes,
        download_bytes=download,
    )


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk_checks(needs: list[tuple[Path, int, str]]) -> list[DiskCheck]:
    """One check per filesystem: needs on the same device add up."""
    by_dev: dict[int, DiskCheck] = {}
    for path, needed, what in needs:
        where = _existing(path)
        dev = os.stat(where).st_dev
        if dev in by_dev:
            d = by_dev[dev]
            d.needed_bytes += needed
            d.what = f"{d.what} + {what}"
            if what == "output":
                d.path = str(path)
        else:
            free = shutil.disk_usage(where).free
            by_dev[dev] = DiskCheck(str(path), needed, free, what)
    return list(by_dev.values())


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"

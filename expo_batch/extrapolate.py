"""ExPO's arithmetic, theta2 = theta1 + alpha * (theta1 - theta0), exact and streaming.

Arithmetic: every element is computed in float64 as ``t1 + alpha * (t1 - t0)`` (the paper's
formula, in that order) and rounded once to the output dtype, so the result is the float64
reference rounded to the output dtype, bit for bit. float32 is not enough: where ``t1`` and
``alpha * (t1 - t0)`` nearly cancel, float32 rounding errors exceed a bf16 ulp of the (tiny)
result. The authors' script computes in bf16, which can swallow part of ``alpha * delta``
(deltas are about 6e-6 per element). alpha = 0 copies the aligned tensor unchanged
(bit-identical, negative zeros and all).

Streaming: tensors are processed in chunks of a few MB read straight from the shards (see
:func:`expo_batch.checkpoint.iter_pair_chunks`) and written straight into the output shards, so
memory holds neither model. The whole pair is checked before anything is written.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from expo_batch.checkpoint import (
    BIN_INDEX,
    SAFE_INDEX,
    Checkpoint,
    PairJob,
    PlannedShardWriter,
    dtype_name,
    iter_pair_chunks,
    parse_size,
    torch_dtype,
)
from expo_batch.compat import TensorSpec, VocabPolicy, check_compatible
from expo_batch.errors import CheckpointError

PROVENANCE_FILE = "expo_provenance.json"

# float64 work buffers of this many elements: 2 MiB each, cache-sized.
_SUB = 1 << 18
# Output chunk buffers in rotation (see _stream).
OUT_RING = 4

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp64": torch.float64,
    "float64": torch.float64,
}

# Files of the aligned folder that are weights (rewritten) or not ours to copy.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_SKIP_FILES = {SAFE_INDEX, BIN_INDEX, "README.md", PROVENANCE_FILE}
_COPY_DIRS = ("additional_chat_templates",)


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``'bf16'``/``'bfloat16'``/``torch.bfloat16`` -> ``torch.bfloat16``; None/"auto" -> None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if str(value).lower() == "auto":
        return None
    try:
        return _DTYPE_ALIASES[str(value).lower().removeprefix("torch.")]
    except KeyError:
        raise CheckpointError(
            f"unknown dtype {value!r}", "use one of bf16, fp16, fp32 (or leave it unset)"
        ) from None


# ---- the pure function -------------------------------------------------------------------


class _Work:
    """Reused float64 scratch buffers (allocating per chunk costs more than the arithmetic)."""

    def __init__(self, n: int = _SUB):
        self.a = torch.empty(n, dtype=torch.float64)
        self.b = torch.empty(n, dtype=torch.float64)


def _extrapolate_flat(
    t0: torch.Tensor, t1: torch.Tensor, alpha: float, out: torch.Tensor, work: _Work
) -> bool:
    """out = t1 + alpha * (t1 - t0) elementwise over 1-D tensors, in float64, one rounding.

    Returns False when some output value is NaN or Inf (including overflow when rounding to a
    narrower ``out`` dtype).
    """
    if alpha == 0:
        out.copy_(t1)
        return _all_finite(out)
    n = t1.numel()
    step = work.a.numel()
    for s in range(0, n, step):
        e = min(s + step, n)
        a, b = work.a[: e - s], work.b[: e - s]
        a.copy_(t1[s:e])
        b.copy_(t0[s:e])
        # Exactly the reference's float64 operations, so the rounded result is the reference
        # bit for bit, even where t1 and alpha * (t1 - t0) cancel almost completely (a fused
        # lerp is 1.5x faster but differs there by many ulps of the tiny result).
        # (t0 - t1) * -alpha is bitwise alpha * (t1 - t0): negation is exact in IEEE arithmetic.
        b.sub_(a).mul_(-alpha)
        a.add_(b)
        out[s:e].copy_(a)
    return _all_finite(out)


def extrapolate_tensor(
    theta0: torch.Tensor,
    theta1: torch.Tensor,
    alpha: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """theta1 + alpha * (theta1 - theta0), computed in float64 and rounded once to ``out_dtype``.

    Args:
        theta0: the SFT tensor.
        theta1: the aligned tensor, same shape (dtypes may differ).
        alpha: any real number; 0 returns theta1 bit-identical (cast to ``out_dtype`` if given).
        out_dtype: the result's dtype; default ``theta1.dtype``.
    """
    if theta0.shape != theta1.shape:
        raise ValueError(f"shapes differ: {tuple(theta0.shape)} vs {tuple(theta1.shape)}")
    if not (theta0.is_floating_point() and theta1.is_floating_point()):
        raise ValueError("extrapolation needs floating-point tensors")
    out_dtype = out_dtype or theta1.dtype
    out = torch.empty(theta1.shape, dtype=out_dtype)
    _extrapolate_flat(
        theta0.reshape(-1),
        theta1.reshape(-1),
        float(alpha),
        out.view(-1),
        _Work(min(_SUB, max(1, theta1.numel()))),
    )
    return out


def _all_finite(chunk: torch.Tensor) -> bool:
    """No NaN or Inf in ``chunk``. A plain sum is the cheap test (NaN and Inf propagate); only
    when it is not finite (a NaN/Inf, or a large sum overflowing) is the exact test run."""
    if chunk.numel() == 0 or math.isfinite(chunk.sum().item()):
        return True
    if chunk.element_size() < 8 and math.isfinite(torch.sum(chunk, dtype=torch.float64).item()):
        return True
    return bool(torch.isfinite(chunk).all())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Chunk arithmetic runs on one core: the prefetch thread reads on the other, and torch's
    intra-op threads on small chunks mostly spin-wait (badly so on a loaded machine)."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


# ---- planning a pair ---------------------------------------------------------------------


def _aliased_specs(ckpt: Checkpoint, wanted: dict[str, TensorSpec]) -> dict[str, TensorSpec]:
    """Specs of ``ckpt`` plus its tied aliases that the other model stores as tensors."""
    specs = dict(ckpt.specs)
    for alias, target in ckpt.aliases.items():
        if alias in wanted:
            specs[alias] = ckpt.specs[target]
    return specs


def _drop_tied_duplicates(
    sft: Checkpoint, aligned: Checkpoint, sft_specs: dict[str, TensorSpec]
) -> dict[str, TensorSpec]:
    """A head the aligned model ties (stores once) may be stored by the SFT model as a separate
    but equal tensor: then it is the same model structure, and the extra name is ignored."""
    for alias, target in aligned.aliases.items():
        present = alias in sft_specs and target in sft_specs and alias not in aligned.specs
        if (
            present
            and sft_specs[alias] == sft_specs[target]
            and torch.equal(sft.get(alias), sft.get(target))
        ):
            sft_specs = {k: v for k, v in sft_specs.items() if k != alias}
    return sft_specs


def pair_specs(sft: Checkpoint, aligned: Checkpoint) -> dict[str, TensorSpec]:
    """The SFT specs to compare with ``aligned.specs``, tied weights reconciled.

    An SFT alias (a head tied in a legacy .bin) counts as a tensor when the aligned model stores
    that name; an SFT head that the aligned model ties is dropped when it equals its target.
    """
    return _drop_tied_duplicates(sft, aligned, _aliased_specs(sft, aligned.specs))


def _check_pair(
    sft: Checkpoint, aligned: Checkpoint, vocab_policy: VocabPolicy
) -> dict[str, TensorSpec]:
    """Everything that can be checked without writing: names, shapes, dtypes, vocabulary,
    and equality of non-float tensors. Returns the SFT specs to use (aliases resolved)."""
    sft_specs = pair_specs(sft, aligned)
    report = check_compatible(sft_specs, aligned.specs, vocab_policy=vocab_policy)
    report.raise_for_problems(f"pair (SFT {sft.folder}, aligned {aligned.folder})")
    differ = []
    for name, spec in aligned.specs.items():
        if not spec.is_float and not torch.equal(sft.get(name), aligned.get(name)):
            differ.append(f"{name} {list(spec.shape)} {spec.dtype}")
    if differ:
        raise CheckpointError(
            "non-floating tensors (buffers, ids, masks) differ between the SFT and the aligned "
            "model, so the aligned copy would not be right for both:\n"
            + "\n".join(f"  - {d}" for d in differ),
            "check that the aligned model was trained from this SFT model",
        )
    return sft_specs


def _jobs(
    sft_specs: dict[str, TensorSpec],
    aligned: Checkpoint,
    out_dtype: torch.dtype | None,
    order: list[str] | None = None,
) -> tuple[list[PairJob], dict[str, TensorSpec]]:
    jobs, out_specs = [], {}
    for name in order or aligned.names:
        spec = aligned.specs[name]
        if spec.is_float:
            a = sft_specs[name]
            shared = a.numel  # fewer rows in the SFT: the extra rows are copied
            sft_dtype = torch_dtype(a.dtype)
            out = dtype_name(out_dtype) if out_dtype is not None else spec.dtype
        else:
            shared, sft_dtype, out = 0, None, spec.dtype
        jobs.append(PairJob(name, spec.numel, shared, sft_dtype, torch_dtype(spec.dtype)))
        out_specs[name] = TensorSpec(spec.shape, out)
    return jobs, out_specs


def _stream(
    sft: Checkpoint,
    aligned: Checkpoint,
    alpha: float,
    jobs: list[PairJob],
    out_specs: dict[str, TensorSpec],
) -> Iterator[tuple[PairJob, int, int, torch.Tensor]]:
    """Compute every job chunk by chunk; yield ``(job, start, stop, output chunk)``.

    Output chunks live in a ring of ``OUT_RING`` reused buffers: a chunk stays valid until
    ``OUT_RING - 1`` further chunks have been requested (room for asynchronous writes).
    """
    # Scratch no bigger than the largest tensor: an alpha switch of a small model stays cheap.
    work = _Work(min(_SUB, max((j.shared for j in jobs), default=1) or 1))
    ring: list[torch.Tensor] = [torch.empty(0, dtype=torch.uint8) for _ in range(OUT_RING)]
    for i, (job, start, stop, s, a) in enumerate(iter_pair_chunks(sft, aligned, jobs)):
        spec = out_specs[job.name]
        dtype = torch_dtype(spec.dtype)
        n = stop - start
        slot = i % OUT_RING
        if ring[slot].numel() < n * dtype.itemsize:
            ring[slot] = torch.empty(n * dtype.itemsize, dtype=torch.uint8)
        out = ring[slot][: n * dtype.itemsize].view(dtype)
        if job.sft_dtype is None:  # non-float: the aligned values as they are
            out.copy_(a)
            yield job, start, stop, out
            continue
        m = 0 if s is None else s.numel()
        with _one_thread():
            ok = _extrapolate_flat(s, a[:m], alpha, out[:m], work) if m else True
            if m < n:  # vocabulary rows the SFT model does not have: the aligned rows
                out[m:].copy_(a[m:])
                ok = ok and _all_finite(out[m:])
        if not ok:
            k = int((~torch.isfinite(out)).sum())
            raise CheckpointError(
                f"extrapolation at alpha={alpha:g} produced {k} NaN/Inf value(s) in tensor "
                f"{job.name!r} {list(spec.shape)} ({spec.dtype})",
                "check the input checkpoints for NaN/Inf, or use a smaller |alpha| "
                "or a wider --dtype",
            )
        yield job, start, stop, out


def iter_extrapolated(
    sft: Checkpoint,
    aligned: Checkpoint,
    alpha: float,
    *,
    out_dtype: torch.dtype | None = None,
    vocab_policy: VocabPolicy = "error",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, theta2 tensor)`` one whole tensor at a time, in the aligned model's order.

    The whole pair is checked first (names, shapes, dtypes, vocabulary, non-float equality):
    a :class:`CheckpointError` is raised before the first tensor. Nothing is written. Each
    yielded tensor is freshly allocated (the caller may keep it). Tied aliases of the aligned
    model are not yielded (the model ties them on load).
    """
    alpha = float(alpha)
    out_dtype = parse_dtype(out_dtype)
    sft_specs = _check_pair(sft, aligned, vocab_policy)
    jobs, out_specs = _jobs(sft_specs, aligned, out_dtype)
    full: torch.Tensor | None = None
    for job, start, stop, chunk in _stream(sft, aligned, alpha, jobs, out_specs):
        if start == 0:
            spec = out_specs[job.name]
            full = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype))
        full.view(-1)[start:stop].copy_(chunk)
        if stop == job.numel:
            yield job.name, full
            full = None


# ---- the output folder -------------------------------------------------------------------


def _copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer, chat templates and remote code of ``src``."""
    copied = []
    for p in sorted(src.iterdir()):
        if p.name.startswith(".") or p.name in _SKIP_FILES:
            continue
        if p.is_dir():
            if p.name in _COPY_DIRS:
                shutil.copytree(p, dst / p.name)
                copied.append(p.name + "/")
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES) or not p.is_file():
            continue
        shutil.copyfile(p, dst / p.name)  # follows Hub-cache symlinks
        copied.append(p.name)
    return copied


def _set_config_dtype(folder: Path, out_dtype: torch.dtype | None) -> None:
    """Record a changed output dtype in config.json so ``dtype="auto"`` loads it as written."""
    path = folder / "config.json"
    if out_dtype is None or not path.is_file():
        return
    from expo_batch.io import atomic_write_json, read_json

    cfg = read_json(path)
    name = str(out_dtype).removeprefix("torch.")
    keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
    if all(cfg.get(k) == name for k in keys):
        return
    for k in keys:
        cfg[k] = name
    atomic_write_json(path, cfg)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def extrapolate_checkpoint(
    sft_dir: Path,
    aligned_dir: Path,
    alpha: float,
    output_dir: Path,
    *,
    dtype: str | torch.dtype | None = None,
    vocab_policy: VocabPolicy = "error",
    max_shard_size: int | str | None = None,
    provenance: dict | None = None,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> Path:
    """Write theta1 + alpha * (theta1 - theta0) as a complete Hugging Face model folder.

    The folder appears under ``output_dir`` only when complete (written to a temporary sibling
    and renamed). It holds sharded safetensors with an index, every non-weight file of the
    aligned folder (config, generation config, tokenizer, chat template, remote code) and
    ``expo_provenance.json``.

    Args:
        dtype: output dtype for floating tensors (bf16, fp16, fp32); default: each tensor keeps
            the aligned model's dtype.
        vocab_policy: ``copy-extra`` extrapolates the shared vocabulary rows and copies the
            aligned model's extra rows; ``error`` refuses a vocabulary mismatch.
        max_shard_size: bytes or "5GB"; default: the aligned model's largest weight file.
        provenance: extra fields for the provenance record (e.g. Hub ids and revisions).
        trust_remote_code: recorded only; remote code files are copied, never executed.
        progress: show a progress bar over bytes on stderr.

    Raises:
        CheckpointError: incompatible pair (before anything is written), NaN/Inf in an output
            tensor, unreadable files.
    """
    from expo_batch import __version__
    from expo_batch.io import atomic_dir, atomic_write_json

    sft_dir, aligned_dir, output_dir = Path(sft_dir), Path(aligned_dir), Path(output_dir)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise CheckpointError(f"alpha must be a finite number, got {alpha}")
    out_dtype = parse_dtype(dtype)
    for src in (sft_dir, aligned_dir):
        if _same_folder(src, output_dir):
            raise CheckpointError(
                f"output folder {output_dir} is an input folder", "choose another --output"
            )
    with Checkpoint.open(sft_dir) as sft, Checkpoint.open(aligned_dir) as aligned:
        sft_specs = _check_pair(sft, aligned, vocab_policy)
        if max_shard_size is None:
            shard_bytes = aligned.largest_shard_bytes
        else:
            try:
                shard_bytes = parse_size(max_shard_size)
            except ValueError as e:
                raise CheckpointError(str(e)) from None
        _, planned = _jobs(sft_specs, aligned, out_dtype)
        total = sum(s.numel * torch_dtype(s.dtype).itemsize for s in planned.values())
        vocab_extra = {
            n: [sft_specs[n].shape[0], s.shape[0]]
            for n, s in aligned.specs.items()
            if s.is_float and sft_specs[n].shape != s.shape
        }
        with atomic_dir(output_dir) as tmp:
            writer = PlannedShardWriter(tmp, planned.items(), shard_bytes)
            jobs, out_specs = _jobs(sft_specs, aligned, out_dtype, order=writer.order)
            bar = _Progress(total, f"alpha={alpha:g}") if progress else None
            # Writes run in a second thread, overlapping the arithmetic; at most OUT_RING - 1
            # are pending, so a chunk's buffer is never reused before its write is done.
            pending: deque[Future] = deque()
            pool = ThreadPoolExecutor(1, thread_name_prefix="expo-write")
            try:
                for job, _, _, chunk in _stream(sft, aligned, alpha, jobs, out_specs):
                    pending.append(pool.submit(writer.write, job.name, chunk))
                    while len(pending) > OUT_RING - 1:
                        pending.popleft().result()
                    if bar is not None:
                        bar.advance(chunk.numel() * chunk.element_size())
                while pending:
                    pending.popleft().result()
                index = writer.close()
            finally:
                for f in pending:
                    f.cancel()
                pool.shutdown(wait=True)
                writer.abort()
                if bar is not None:
                    bar.close()
            copied = _copy_aux_files(aligned_dir, tmp)
            _set_config_dtype(tmp, out_dtype)
            record = {
                "tool": "expo-batch",
                "tool_version": __version__,
                "method": "theta1 + alpha * (theta1 - theta0)",
                "alpha": alpha,
                "dtype": "aligned" if out_dtype is None else str(out_dtype).removeprefix("torch."),
                "compute_dtype": "float64",
                "sft": {"path": str(sft_dir.resolve())},
                "aligned": {"path": str(aligned_dir.resolve())},
                "vocab_policy": vocab_policy,
                "vocab_extra_rows": vocab_extra,
                "tied_aliases": dict(aligned.aliases),
                "n_tensors": len(planned),
                "total_size": index["metadata"]["total_size"],
                "shards": len(writer.filenames),
                "max_shard_size": shard_bytes,
                "copied_files": copied,
                "trust_remote_code": trust_remote_code,
                "torch_version": torch.__version__,
            }
            for key, value in (provenance or {}).items():
                if isinstance(value, dict) and isinstance(record.get(key), dict):
                    record[key] = {**record[key], **value}
                else:
                    record[key] = value
            atomic_write_json(tmp / PROVENANCE_FILE, record)
    return output_dir


class _Progress:
    """A rich progress bar over bytes, on stderr."""

    def __init__(self, total: int, label: str):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        from expo_batch.console import err

        self._p = Progress(
            TextColumn("[bold]extrapolate[/bold] {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task(label, total=total)

    def advance(self, n: int) -> None:
        self._p.advance(self._task, n)

    def close(self) -> None:
        self._p.stop()

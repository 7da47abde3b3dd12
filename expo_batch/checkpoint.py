"""A checkpoint folder as an index of tensors across shards, and a sharded safetensors writer.

Reading never holds a whole model: a tensor (or a range of its elements) is read on request
straight from its shard into a caller's buffer. Safetensors shards are read with ``pread`` at the
offsets their header gives, not through a memory map: pages touched through a map count towards
the process's resident set until the map is closed, so mapping a 5 GB shard would make peak RSS
grow with the shard size. Legacy ``pytorch_model*.bin`` shards are opened with
``torch.load(weights_only=True, mmap=True)`` (never unpickling arbitrary objects), one shard at a
time.

Tied weights: a legacy ``.bin`` file can hold two names that share one storage (``lm_head.weight``
and ``model.embed_tokens.weight``). Like transformers' safetensors saving, the checkpoint lists
such a group once (the input embedding is kept) and records the other names in
:attr:`Checkpoint.aliases`; reading an alias reads the tensor it is tied to.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from expo_batch.compat import TensorSpec
from expo_batch.errors import CheckpointError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# safetensors dtype names <-> torch dtypes (those torch has on every platform we support).
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)
_NAMES = {v: k for k, v in _DTYPES.items()}

# Output heads that transformers drops when tied to the input embedding.
_TIED_HEADS = ("lm_head.weight", "embed_out.weight", "output.weight")

_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "B": 1})


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype name (``BF16`` -> ``torch.bfloat16``)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise CheckpointError(f"unsupported tensor dtype {name!r}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.bfloat16`` -> ``BF16``)."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise CheckpointError(f"unsupported tensor dtype {dtype}") from None


def itemsize(dtype_str: str) -> int:
    return torch_dtype(dtype_str).itemsize


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units as transformers uses; KiB/MiB/GiB are binary)."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size must be positive, got {text}")
        return text
    s = str(text).strip().upper().replace(" ", "")
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            num = s[: -len(unit)]
            break
    else:
        unit, num = "B", s
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 5GB, 500MB or 2GiB") from None
    if not value > 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return int(value * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class _Entry:
    file: Path
    spec: TensorSpec
    offset: int | None  # absolute byte offset in a safetensors file; None for .bin
    key: str  # the name inside the file


def _read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Return (header dict, byte offset where tensor data starts), validated against the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or n + 8 > size:
                raise CheckpointError(
                    f"{path} is not a valid safetensors file (header length {n}, file size {size})",
                    "the download may be truncated; fetch the file again",
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has a corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object)")
    return header, 8 + n


def _safetensors_entries(path: Path) -> list[tuple[str, _Entry]]:
    header, data_start = _read_safetensors_header(path)
    data_len = path.stat().st_size - data_start
    rows = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {key!r}") from None
        spec = TensorSpec(tuple(int(d) for d in shape), str(dtype))
        nbytes = spec.numel * itemsize(spec.dtype)
        if end - start != nbytes or start < 0 or end > data_len:
            raise CheckpointError(
                f"{path}: tensor {key!r} {list(shape)} {dtype} has data offsets [{start}, {end}] "
                f"that do not fit its size ({nbytes} bytes) or the file ({data_len} data bytes)",
                "the file may be truncated or corrupt; fetch it again",
            )
        rows.append((start, key, _Entry(path, spec, data_start + start, key)))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(key, entry) for _, key, entry in rows]


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True; mmap when the file is in the zip format."""
    import pickle

    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "zip" not in str(e).lower() and "mmap" not in str(e).lower():
                raise
            # Pre-1.6 torch.save format: cannot be memory-mapped; loaded whole (legacy only).
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and was not loaded "
            f"(weights_only=True refuses to unpickle arbitrary code): {str(e).splitlines()[0]}",
            "convert the checkpoint to safetensors with a trusted tool first",
        ) from e
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot load {path}: {str(e).splitlines()[0]}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} is not a flat state dict of tensors")
    return sd


class Checkpoint:
    """A checkpoint folder: tensor names, specs and lazy reads across shards.

    Use :meth:`open`. Safe to read from several threads (reads are positional).
    """

    def __init__(
        self,
        folder: Path,
        fmt: str,
        entries: dict[str, _Entry],
        aliases: dict[str, str],
        files: list[Path],
    ):
        self.folder = folder
        self.format = fmt
        self._entries = entries
        self.aliases = aliases
        self.files = files
        self._lock = threading.Lock()
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._bin: OrderedDict[Path, dict[str, torch.Tensor]] = OrderedDict()
        self._config: dict | None = None
        self._specs = {k: e.spec for k, e in entries.items()}

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path) -> Checkpoint:
        """Index the weights in ``folder``: safetensors (single or sharded) or legacy .bin.

        Raises:
            CheckpointError: the folder has no weights, an index names a missing shard, or a
                header is corrupt.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {folder} does not exist")
        if (folder / SAFE_INDEX).is_file():
            files = _index_files(folder, SAFE_INDEX)
            return cls._open_safetensors(folder, files)
        if (folder / SAFE_SINGLE).is_file():
            return cls._open_safetensors(folder, [folder / SAFE_SINGLE])
        if (folder / BIN_INDEX).is_file():
            return cls._open_bin(folder, _index_files(folder, BIN_INDEX))
        if (folder / BIN_SINGLE).is_file():
            return cls._open_bin(folder, [folder / BIN_SINGLE])
        shards = sorted(folder.glob("model-*-of-*.safetensors"))
        if shards:  # shards without an index: still unambiguous
            return cls._open_safetensors(folder, shards)
        raise CheckpointError(
            f"no model weights in {folder}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} "
            f"or {BIN_INDEX}",
            "point at the folder that holds config.json and the weight files",
        )

    @classmethod
    def _open_safetensors(cls, folder: Path, files: list[Path]) -> Checkpoint:
        entries: dict[str, _Entry] = {}
        for path in files:
            for key, entry in _safetensors_entries(path):
                if key in entries:
                    raise CheckpointError(
                        f"tensor {key!r} is stored twice: in {entries[key].file.name} "
                        f"and {path.name}"
                    )
                entries[key] = entry
        return cls(folder, "safetensors", entries, {}, files)

    @classmethod
    def _open_bin(cls, folder: Path, files: list[Path]) -> Checkpoint:
        entries: dict[str, _Entry] = {}
        aliases: dict[str, str] = {}
        for path in files:
            sd = _load_bin(path)
            groups: dict[tuple, list[str]] = {}
            for key, t in sd.items():
                if key in entries:
                    raise CheckpointError(
                        f"tensor {key!r} is stored twice: in {entries[key].file.name} "
                        f"and {path.name}"
                    )
                sid = (
                    t.untyped_storage().data_ptr(),
                    t.storage_offset(),
                    tuple(t.shape),
                    tuple(t.stride()),
                    t.dtype,
                )
                groups.setdefault(sid, []).append(key)
                spec = TensorSpec(tuple(t.shape), dtype_name(t.dtype))
                entries[key] = _Entry(path, spec, None, key)
            for keys in groups.values():
                if len(keys) < 2:
                    continue
                kept = next((k for k in keys if k not in _TIED_HEADS), keys[0])
                for k in keys:
                    if k != kept:
                        aliases[k] = kept
                        del entries[k]
            del sd
        return cls(folder, "bin", entries, aliases, files)

    # ---- metadata ------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Tensor names in storage order (shard by shard, then by position in the shard)."""
        return list(self._entries)

    @property
    def specs(self) -> dict[str, TensorSpec]:
        """Name -> spec in :attr:`names` order (one shared dict: do not modify it)."""
        return self._specs

    @property
    def config(self) -> dict:
        """config.json of the folder, or ``{}`` when it has none."""
        if self._config is None:
            path = self.folder / "config.json"
            try:
                self._config = (
                    json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
                )
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"cannot read {path}: {e}") from e
        return self._config

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data (each tied group counted once)."""
        return sum(e.spec.numel * itemsize(e.spec.dtype) for e in self._entries.values())

    @property
    def largest_shard_bytes(self) -> int:
        """Size on disk of the biggest weight file: the shard size policy of this model."""
        return max(p.stat().st_size for p in self.files)

    def shard_of(self, name: str) -> Path:
        return self._entry(name).file

    def spec(self, name: str) -> TensorSpec:
        return self._entry(name).spec

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self.aliases

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.folder)!r}, {self.format}, {len(self._entries)} tensors)"

    def _entry(self, name: str) -> _Entry:
        name = self.aliases.get(name, name)
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in {self.folder}") from None

    # ---- reading -------------------------------------------------------------------------

    def get(self, name: str) -> torch.Tensor:
        """The whole tensor ``name`` (or the tensor an alias is tied to), in its own memory."""
        entry = self._entry(name)
        out = torch.empty(entry.spec.numel, dtype=torch_dtype(entry.spec.dtype))
        self.read_flat(name, 0, entry.spec.numel, out)
        return out.reshape(entry.spec.shape)

    def read_flat(
        self, name: str, start: int, stop: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Elements ``[start, stop)`` of tensor ``name`` in row-major order, as a 1-D tensor.

        Args:
            out: a 1-D buffer of the tensor's dtype with at least ``stop - start`` elements to
                read into (no allocation); its first ``stop - start`` elements are returned.
        """
        entry = self._entry(name)
        dtype = torch_dtype(entry.spec.dtype)
        n = stop - start
        if not 0 <= start <= stop <= entry.spec.numel:
            raise ValueError(
                f"range [{start}, {stop}) outside tensor {name!r} ({entry.spec.numel})"
            )
        if out is None:
            out = torch.empty(n, dtype=dtype)
        elif out.dtype != dtype or out.dim() != 1 or out.numel() < n:
            raise ValueError(f"buffer {out.dtype} {tuple(out.shape)} cannot hold {n} x {dtype}")
        view = out[:n]
        if n == 0:
            return view
        if entry.offset is None:
            src = self._bin_tensor(entry)
            view.copy_(src.reshape(-1)[start:stop])
            return view
        size = dtype.itemsize
        self._pread(entry.file, view, entry.offset + start * size, n * size)
        return view

    def _pread(self, path: Path, view: torch.Tensor, offset: int, nbytes: int) -> None:
        mv = memoryview(view.view(torch.uint8).numpy()).cast("B")
        fd = self._fd(path)
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [mv[done:]], offset + done)
            if got <= 0:
                raise CheckpointError(
                    f"{path} ended early (truncated file?) at byte {offset + done}"
                )
            done += got

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is not None:
                self._fds.move_to_end(path)
                return fd
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise CheckpointError(f"cannot open {path}: {e.strerror}") from e
            self._fds[path] = fd
            while len(self._fds) > 4:  # a small LRU of open shards
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def _bin_tensor(self, entry: _Entry) -> torch.Tensor:
        with self._lock:
            sd = self._bin.get(entry.file)
            if sd is None:
                self._bin.clear()  # one mapped .bin shard at a time
                sd = _load_bin(entry.file)
                self._bin[entry.file] = sd
            t = sd[entry.key]
        return t if t.is_contiguous() else t.contiguous()

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._bin.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        with contextlib.suppress(Exception):
            self.close()


def _index_files(folder: Path, index_name: str) -> list[Path]:
    path = folder / index_name
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read the shard index {path}: {e}") from e
    names = list(dict.fromkeys(weight_map.values()))
    files = [folder / n for n in sorted(names)]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{path} names shard files that are missing: {', '.join(missing)}",
            "the download is incomplete; fetch the checkpoint again",
        )
    return files


# ---- writing -----------------------------------------------------------------------------


def shard_filenames(n: int) -> list[str]:
    """transformers' names: ``model.safetensors`` for one shard, else ``model-0000i-of-0000n``."""
    if n == 1:
        return [SAFE_SINGLE]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def plan_shards(
    entries: Iterable[tuple[str, TensorSpec]], max_shard_size: int
) -> list[list[tuple[str, TensorSpec]]]:
    """Split tensors into shards greedily in order, as huggingface_hub does.

    A tensor bigger than ``max_shard_size`` gets a shard of its own. Within a shard, tensors are
    ordered by decreasing item size (stable), so every tensor's data stays aligned to its item
    size, as safetensors' own writer guarantees.
    """
    shards: list[list[tuple[str, TensorSpec]]] = []
    cur: list[tuple[str, TensorSpec]] = []
    cur_size = 0
    for name, spec in entries:
        size = spec.numel * itemsize(spec.dtype)
        if size > max_shard_size:
            shards.append([(name, spec)])
            continue
        if cur and cur_size + size > max_shard_size:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.append((name, spec))
        cur_size += size
    if cur:
        shards.append(cur)
    if not shards:
        shards.append([])
    return [sorted(s, key=lambda e: -itemsize(e[1].dtype)) for s in shards]


def _header_bytes(items: list[tuple[str, TensorSpec]], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    pos = 0
    for name, spec in items:
        n = spec.numel * itemsize(spec.dtype)
        header[name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [pos, pos + n],
        }
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(raw)) + raw


def _write_all(fd: int, view: torch.Tensor) -> None:
    mv = memoryview(view.reshape(-1).view(torch.uint8).numpy()).cast("B")
    done = 0
    while done < len(mv):
        done += os.write(fd, mv[done:])


def _index_dict(weight_map: dict[str, str], total_size: int, total_parameters: int) -> dict:
    return {
        "metadata": {"total_parameters": total_parameters, "total_size": total_size},
        "weight_map": dict(sorted(weight_map.items())),
    }


class PlannedShardWriter:
    """Streams tensors into safetensors shards planned up front, in bounded memory.

    The full list of tensors (names, shapes, dtypes) is known before the first byte, so each
    shard's header is written first and the data appended chunk by chunk: a 5 GB shard never
    sits in memory. Tensors must be written in :attr:`order`, each completely, via
    :meth:`write` (any number of chunks) or :meth:`add`.
    """

    def __init__(
        self,
        folder: Path,
        entries: Iterable[tuple[str, TensorSpec]],
        max_shard_size: int,
        metadata: dict[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(entries, max_shard_size)
        self.filenames = shard_filenames(len(self.shards))
        self.order = [name for shard in self.shards for name, _ in shard]
        self._plan = [
            (i, name, spec.numel * itemsize(spec.dtype), spec)
            for i, shard in enumerate(self.shards)
            for name, spec in shard
        ]
        self._pos = 0  # index into _plan of the tensor being written
        self._written = 0  # bytes written of that tensor
        self._fd: int | None = None
        self._shard = -1
        self._closed = False

    def _advance_if_complete(self) -> None:
        if self._written == self._plan[self._pos][2]:
            self._pos += 1
            self._written = 0
            if self._pos == len(self._plan) or self._plan[self._pos][0] != self._shard:
                self._close_fd()

    def _open_shard(self, i: int) -> None:
        self._close_fd()
        path = self.folder / self.filenames[i]
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._shard = i
        _write_all(
            self._fd,
            torch.frombuffer(
                bytearray(_header_bytes(self.shards[i], self.metadata)), dtype=torch.uint8
            ),
        )

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append ``chunk`` (contiguous, the planned dtype) to tensor ``name``'s data."""
        if self._pos >= len(self._plan):
            raise RuntimeError(f"all planned tensors are written; unexpected {name!r}")
        shard, planned, nbytes, spec = self._plan[self._pos]
        if name != planned:
            raise RuntimeError(f"expected tensor {planned!r} next, got {name!r}")
        if chunk.dtype != torch_dtype(spec.dtype):
            raise RuntimeError(f"tensor {name!r}: planned {spec.dtype}, got {chunk.dtype}")
        size = chunk.numel() * chunk.element_size()
        if self._written + size > nbytes:
            raise RuntimeError(f"tensor {name!r}: more data than its planned {nbytes} bytes")
        if self._fd is None or self._shard != shard:
            self._open_shard(shard)
        if size:
            _write_all(self._fd, chunk if chunk.is_contiguous() else chunk.contiguous())
        self._written += size
        self._advance_if_complete()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.write(name, tensor)

    def close(self) -> dict:
        """Check every planned tensor was written; write the index when there are several shards.

        Returns:
            The index dict (``metadata`` and ``weight_map``), also for a single shard.
        """
        # Tensors with no bytes (numel 0) at the end still need their shard opened.
        while self._pos < len(self._plan) and self._plan[self._pos][2] == 0:
            self.write(
                self._plan[self._pos][1],
                torch.empty(0, dtype=torch_dtype(self._plan[self._pos][3].dtype)),
            )
        if self._pos != len(self._plan):
            missing = self._plan[self._pos][1]
            self._close_fd()
            raise RuntimeError(f"shard writer closed before tensor {missing!r} was complete")
        if not self._plan and self._shard == -1:
            self._open_shard(0)
            self._close_fd()
        self._closed = True
        weight_map = {
            name: self.filenames[i] for i, shard in enumerate(self.shards) for name, _ in shard
        }
        total_size = sum(p[2] for p in self._plan)
        total_params = sum(p[3].numel for p in self._plan)
        index = _index_dict(weight_map, total_size, total_params)
        if len(self.shards) > 1:
            from expo_batch.io import atomic_write_json

            atomic_write_json(self.folder / SAFE_INDEX, index)
        return index

    def abort(self) -> None:
        self._close_fd()


class ShardedWriter:
    """Writes tensors as they come into safetensors shards of at most ``max_shard_size`` bytes.

    Holds at most one shard's tensors in memory (use :class:`PlannedShardWriter` to stream when
    all specs are known in advance). Shards are named as transformers names them once the count
    is known, at :meth:`close`; the index is written when there is more than one shard.
    """

    def __init__(self, folder: Path, max_shard_size: int, metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_shard_size = parse_size(max_shard_size)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._current: dict[str, torch.Tensor] = {}
        self._current_size = 0
        self._done: list[tuple[Path, list[tuple[str, TensorSpec]]]] = []
        self._seen: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._seen:
            raise ValueError(f"tensor {name!r} added twice")
        self._seen.add(name)
        size = tensor.numel() * tensor.element_size()
        if self._current and self._current_size + size > self.max_shard_size:
            self._flush()
        self._current[name] = tensor.detach().contiguous()
        self._current_size += size
        if size > self.max_shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._current:
            return
        items = [
            (k, TensorSpec(tuple(t.shape), dtype_name(t.dtype))) for k, t in self._current.items()
        ]
        items.sort(key=lambda e: -itemsize(e[1].dtype))
        path = self.folder / f".shard-{len(self._done):05d}.safetensors.partial"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(
                fd,
                torch.frombuffer(bytearray(_header_bytes(items, self.metadata)), dtype=torch.uint8),
            )
            for k, _ in items:
                if self._current[k].numel():
                    _write_all(fd, self._current[k])
        finally:
            os.close(fd)
        self._done.append((path, items))
        self._current, self._current_size = {}, 0

    def close(self) -> dict:
        """Write the last shard, rename the shards to their final names, write the index."""
        self._flush()
        if not self._done:  # an empty model still gets a (header-only) file
            self._current = {}
            path = self.folder / ".shard-00000.safetensors.partial"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _write_all(
                fd, torch.frombuffer(bytearray(_header_bytes([], self.metadata)), dtype=torch.uint8)
            )
            os.close(fd)
            self._done.append((path, []))
        names = shard_filenames(len(self._done))
        weight_map: dict[str, str] = {}
        total_size = total_params = 0
        for (path, items), final in zip(self._done, names, strict=True):
            os.replace(path, self.folder / final)
            for k, spec in items:
                weight_map[k] = final
                total_size += spec.numel * itemsize(spec.dtype)
                total_params += spec.numel
        index = _index_dict(weight_map, total_size, total_params)
        if len(names) > 1:
            from expo_batch.io import atomic_write_json

            atomic_write_json(self.folder / SAFE_INDEX, index)
        return index


# ---- chunked pair reading ----------------------------------------------------------------


@dataclass(frozen=True)
class PairJob:
    """One output tensor to read from a pair: ``shared`` leading elements from both models,
    the rest (``numel - shared``, extra vocabulary rows) from the aligned model alone."""

    name: str
    numel: int
    shared: int
    sft_dtype: torch.dtype | None  # None: read the aligned model only (non-float tensors)
    aligned_dtype: torch.dtype


def iter_pair_chunks(
    sft: Checkpoint,
    aligned: Checkpoint,
    jobs: list[PairJob],
    chunk_bytes: int = 8 << 20,
    prefetch: int = 2,
) -> Iterator[tuple[PairJob, int, int, torch.Tensor | None, torch.Tensor]]:
    """Yield ``(job, start, stop, sft_chunk, aligned_chunk)`` over every job's elements.

    ``sft_chunk`` covers ``[start, min(stop, job.shared))`` (None when empty); ``aligned_chunk``
    covers ``[start, stop)``. Reads run ``prefetch`` chunks ahead in a background thread, so the
    disk (or page cache) and the arithmetic overlap. Chunks live in a small ring of reused
    buffers: a chunk is valid only until the next one is requested.
    """
    import queue

    ring = prefetch + 2  # queued + being filled + being consumed, never overwritten in use
    max_item = max(
        (d.itemsize for j in jobs for d in (j.sft_dtype, j.aligned_dtype) if d is not None),
        default=1,
    )
    # No bigger than the largest tensor: small models (and every alpha switch) stay cheap.
    cap = max(1, min(chunk_bytes // max_item, max((j.numel for j in jobs), default=1)))
    buffers = [(bytearray(cap * max_item), bytearray(cap * max_item)) for _ in range(ring)]

    def view(buf: bytearray, dtype: torch.dtype, n: int) -> torch.Tensor:
        return torch.frombuffer(buf, dtype=torch.uint8, count=n * dtype.itemsize).view(dtype)

    def chunks() -> Iterator[tuple[PairJob, int, int]]:
        for job in jobs:
            if job.numel == 0:
                yield job, 0, 0
            for start in range(0, job.numel, cap):
                yield job, start, min(start + cap, job.numel)

    def read(slot: int, job: PairJob, start: int, stop: int):
        b0, b1 = buffers[slot]
        a = aligned.read_flat(job.name, start, stop, view(b1, job.aligned_dtype, stop - start))
        s = None
        if job.sft_dtype is not None and start < job.shared:
            end = min(stop, job.shared)
            s = sft.read_flat(job.name, start, end, view(b0, job.sft_dtype, end - start))
        return job, start, stop, s, a

    if prefetch <= 0:
        for slot, (job, start, stop) in enumerate(chunks()):
            yield read(slot % ring, job, start, stop)
        return

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop_event = threading.Event()
    _END = object()

    def put(item) -> bool:
        while not stop_event.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def producer() -> None:
        try:
            for slot, (job, start, stop) in enumerate(chunks()):
                if not put(read(slot % ring, job, start, stop)):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=producer, name="expo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop_event.set()
        thread.join()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


__all__ = [
    "Checkpoint",
    "PairJob",
    "PlannedShardWriter",
    "ShardedWriter",
    "dtype_name",
    "human_bytes",
    "iter_pair_chunks",
    "parse_size",
    "plan_shards",
    "shard_filenames",
    "torch_dtype",
]

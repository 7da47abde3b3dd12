"""Evaluation prompts: loading a prompt set, hashing it, rendering prompts for a policy.

A prompt set comes from a Hub dataset split (the paper's UltraFeedback ``test_gen``, the first user
message of each row) or a local JSONL/JSON file. Its hash covers the ids and texts, so later steps
can key their caches on it. Prompts are rendered with the policy's own chat template and handed
to the engines as token ids with exactly one BOS (eval_protocol.md §2, pitfall 6).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expo_batch.errors import ScoringError

if TYPE_CHECKING:
    from expo_batch.manifest import PromptsConfig

_TEXT_KEYS = ("prompt", "instruction")
_ID_KEYS = ("id", "prompt_id")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]
    hash: str
    """sha256 of the ids and texts (hex); changes whenever any prompt or the order changes."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the prompts came from (dataset, split, resolved revision, files; or the local path)."""

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]


def prompt_set_hash(prompts: list[Prompt] | tuple[Prompt, ...]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.id, p.text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def make_prompt_set(prompts: list[Prompt], source: dict[str, Any] | None = None) -> PromptSet:
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            where = (source or {}).get("path") or (source or {}).get("dataset") or "the prompt set"
            raise ScoringError(
                f"prompt id {p.id!r} appears twice in {where}", "prompt ids must be unique"
            )
        seen.add(p.id)
    return PromptSet(tuple(prompts), prompt_set_hash(prompts), dict(source or {}))


def prompt_text(row: dict[str, Any], where: str) -> str:
    """One record's prompt: first user message of ``messages``, else ``prompt``/``instruction``.

    ``messages`` wins because it is what the authors' generation script reads (``e[:1]``).
    """
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        for m in messages:
            if (
                isinstance(m, dict)
                and m.get("role") == "user"
                and isinstance(m.get("content"), str)
            ):
                return m["content"]
        raise ScoringError(f"{where}: 'messages' has no user message with text content")
    for key in _TEXT_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            return value
    raise ScoringError(
        f"{where}: no prompt found (expected a 'prompt' or 'instruction' string or a "
        "'messages' list); "
        f"keys are {sorted(row)[:10]}"
    )


def _row_id(row: dict[str, Any], index: int) -> str:
    for key in _ID_KEYS:
        value = row.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return str(index)


def rows_to_prompts(
    rows: list[dict[str, Any]], where: str, limit: int | None = None
) -> list[Prompt]:
    if limit is not None:
        rows = rows[:limit]
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ScoringError(f"{where}: record {i} is a {type(row).__name__}, expected an object")
        out.append(Prompt(_row_id(row, i), prompt_text(row, f"{where} record {i}")))
    return out


def read_local_rows(path: Path) -> list[dict[str, Any]]:
    """Records of a .jsonl file (one object a line) or .json (a list, or {"prompts": [...]})."""
    path = Path(path)
    if not path.is_file():
        raise ScoringError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl" or (path.suffix != ".json" and not text.lstrip().startswith("[")):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ScoringError(f"{path}:{n}: invalid JSON: {e.msg}") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScoringError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if isinstance(data, dict):
        data = data.get("prompts", data.get("data"))
    if not isinstance(data, list):
        raise ScoringError(
            f"{path}: expected a list of objects (or an object with a 'prompts' list)"
        )
    return data


def split_files(files: list[str], split: str) -> list[str]:
    """The data files of ``split`` in a dataset repo (parquet preferred, then json/jsonl).

    Follows the Hub's file-naming conventions: ``data/<split>-00000-of-00001.parquet``,
    ``<split>/*.parquet``, ``<config>/<split>-*.parquet``, ``<split>.jsonl``.
    """

    def matches(f: str) -> bool:
        parts = f.split("/")
        name = parts[-1]
        stem = name.split(".", 1)[0]
        return (
            split in parts[:-1]
            or stem == split
            or name.startswith(f"{split}-")
            or name.startswith(f"{split}_")
        )

    for exts in ((".parquet",), (".jsonl", ".json")):
        chosen = sorted(f for f in files if f.endswith(exts) and matches(f))
        if chosen:
            return chosen
    return []


# Columns a prompt or its id can come from; a parquet split is read for these only (UltraFeedback's
# test_gen also carries both responses, scores and `chosen`/`rejected` conversations).
_ROW_COLUMNS = ("messages", *_TEXT_KEYS, *_ID_KEYS)


def _read_hub_file(local: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of one downloaded data file (parquet, jsonl or json), at most ``limit`` of them."""
    if local.suffix != ".parquet":
        rows = read_local_rows(local)
        return rows if limit is None else rows[:limit]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ScoringError(
            f"reading {local.name} needs pyarrow, which is not installed",
            "pip install pyarrow (or give a local .jsonl prompt file with --prompts)",
        ) from None
    try:
        pf = pq.ParquetFile(local)
        columns = [c for c in pf.schema_arrow.names if c in _ROW_COLUMNS] or None
        rows: list[dict[str, Any]] = []
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            rows.extend(batch.to_pylist())
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
        return rows
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise ScoringError(f"cannot read {local}: {type(e).__name__}: {e}") from None


def load_hub_prompts(
    dataset: str,
    split: str,
    revision: str | None,
    limit: int | None,
    *,
    where: str | None = None,
) -> PromptSet:
    """Read one split of a Hub dataset, pinned to the commit ``revision`` names now.

    The dataset is resolved once to its commit SHA (recorded as ``source["revision"]``) and every
    file is downloaded at that SHA into the Hugging Face cache; with ``limit``, only the split's
    first files that hold enough rows are downloaded. With ``HF_HUB_OFFLINE=1`` the revision and
    the files come from the cache without any request.

    Raises:
        HubError: unknown or gated dataset, bad token, Hub unreachable, offline and not cached.
        ScoringError: no data files for ``split``, or rows without a prompt.
    """
    from expo_batch.hub.dataset import download_dataset_files, resolve_dataset

    ds = resolve_dataset(dataset, revision, where=where)
    files = [f.name for f in ds.files]
    chosen = split_files(files, split)
    if not chosen:
        raise ScoringError(
            f"dataset {dataset!r} has no data files for split {split!r} at commit {ds.sha}",
            f"files in the repo: {', '.join(sorted(files)[:15]) or 'none'}",
        )
    rows: list[dict[str, Any]] = []
    for name in chosen:
        [local] = download_dataset_files(ds, [name])
        rows.extend(_read_hub_file(local, None if limit is None else limit - len(rows)))
        if limit is not None and len(rows) >= limit:
            break
    prompts = rows_to_prompts(rows, f"{dataset} ({split})", limit)
    source = {
        "kind": "hub",
        "dataset": dataset,
        "split": split,
        "revision": ds.sha,
        "requested_revision": revision,
        "files": chosen,
        "limit": limit,
    }
    return make_prompt_set(prompts, source)


def load_prompts(cfg: PromptsConfig, *, where: str | None = None) -> PromptSet:
    """Load the prompt set a :class:`~expo_batch.manifest.PromptsConfig` describes.

    ``where`` (e.g. ``registry.yaml:12 pair 'x' field 'prompts'``) is named in errors.
    """
    if cfg.path is not None:
        path = Path(cfg.path)
        try:
            prompts = rows_to_prompts(read_local_rows(path), str(path), cfg.limit)
        except ScoringError as e:
            if where is None:
                raise
            raise ScoringError(f"{e.message} ({where})", e.hint) from None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        source = {"kind": "file", "path": str(path), "file_sha256": digest, "limit": cfg.limit}
        return make_prompt_set(prompts, source)
    assert cfg.dataset is not None
    return load_hub_prompts(cfg.dataset, cfg.split, cfg.revision, cfg.limit, where=where)


# ------------------------------------------------------------------------------------ rendering


def _model_where(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", None) or "the model folder"


def render_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one user prompt in the policy's chat template, ready for generation.

    ``add_generation_prompt=True``, no system prompt, exactly one BOS at the start when the
    tokenizer uses one (a template that already adds BOS plus a tokenizer that adds another is
    the Llama-3 double-BOS trap; a template without it gets the one the tokenizer would add).

    Raises:
        ScoringError: the tokenizer has no chat template (we never fall back to a default one).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ScoringError(
            f"the tokenizer of {_model_where(tokenizer)} has no chat template",
            "ExPO renders prompts with the policy's own template; add a chat_template "
            "(chat_template.jinja or tokenizer_config.json) to the aligned model folder",
        )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    if hasattr(ids, "get") and not isinstance(ids, list):  # a BatchEncoding in some versions
        ids = ids["input_ids"]
    ids = [int(t) for t in ids]
    return fix_bos(ids, tokenizer)


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    try:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    except Exception:
        return False
    return bool(probe) and probe[0] == bos


def fix_bos(ids: list[int], tokenizer: Any) -> list[int]:
    """Collapse repeated leading BOS to one; add one the template lacks but the tokenizer adds."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return ids
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    if start >= 1:
        return ids[start - 1 :]
    if _tokenizer_adds_bos(tokenizer):
        return [bos, *ids]
    return ids


def load_policy_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The policy's tokenizer (the aligned model's: an ExPO checkpoint copies it from there)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ScoringError(
            f"cannot load the tokenizer of {model_dir}: {type(e).__name__}: {e}"
        ) from None


def render_prompt_set(tokenizer: Any, prompts: PromptSet | list[Prompt]) -> list[list[int]]:
    return [render_prompt_ids(tokenizer, p.text) for p in prompts]

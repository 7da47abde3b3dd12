"""The manifest (registry.yaml): pydantic models, a loader that keeps line numbers, pair selection.

A manifest has ``defaults`` (every run setting) and ``pairs``; a pair may override any setting
except ``output_dir``. Loading reports every problem at once, each as ``file:line field: message``,
and raises :class:`~expo_batch.errors.ManifestError` (exit code 2, no traceback).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from expo_batch.errors import ManifestError, UsageError
from expo_batch.refs import ModelRef, parse_ref

DEFAULT_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)
PAIR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _check_ref(text: str) -> None:
    # Local folders are checked when the run resolves them; here only the syntax of Hub ids.
    if text.startswith((".", "/", "~")):
        return
    parse_ref(text)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptsConfig(_Strict):
    """Where the evaluation prompts come from: a Hub dataset split, or a local JSONL/JSON file."""

    dataset: str | None = None
    """Hub dataset id, e.g. HuggingFaceH4/ultrafeedback_binarized."""
    split: str = "test_gen"
    revision: str | None = None
    """Dataset revision (commit SHA, branch or tag); resolved to a SHA and recorded."""
    path: Path | None = None
    """Local .jsonl/.json file: objects with `prompt`, `instruction` or `messages`."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N prompts."""

    @model_validator(mode="after")
    def _one_source(self) -> PromptsConfig:
        if (self.dataset is None) == (self.path is None):
            raise ValueError(
                "give exactly one of 'dataset' (a Hub dataset id) or 'path' (a local file)"
            )
        return self


class SamplingConfig(_Strict):
    """Sampling parameters, with vLLM's meaning for every field."""

    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    top_k: int = Field(default=50, ge=-1)
    """-1 or 0 disables top-k."""
    presence_penalty: float = Field(default=0.1, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.1, ge=-2, le=2)
    max_tokens: int = Field(default=2048, ge=1)
    seed: int = 42


class ScorerConfig(_Strict):
    """The reward model (a Hub id, id@revision or local folder) or a function `module:function`."""

    model: str | None = None
    function: str | None = None
    batch_size: int = Field(default=8, ge=1)
    """Reward-model batch size (recorded: padding can change scores in some RMs)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ScorerConfig:
        if (self.model is None) == (self.function is None):
            raise ValueError(
                "give exactly one of 'model' (a reward model) or 'function' (module:function)"
            )
        if self.function is not None and not re.match(r"^[\w.]+:[\w]+$", self.function):
            raise ValueError(f"function {self.function!r} must look like 'package.module:function'")
        if self.model is not None:
            _check_ref(self.model)
        return self


class SearchConfig(_Strict):
    """How alphas are searched: the grid only, or the grid then finer steps around the best."""

    strategy: Literal["grid", "refine"] = "grid"
    refine_step: float = Field(default=0.05, gt=0)
    """Step of the first refinement round (halved each further round)."""
    refine_rounds: int = Field(default=1, ge=1, le=5)


class SelectionConfig(_Strict):
    """The selection rule: the paper's (best mean reward, or none) plus optional guards."""

    min_gain: float = 0.0
    """A candidate must beat the baseline's mean reward by more than this (negative: accept the
    best candidate even when it scores below the baseline)."""
    bootstrap_samples: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    max_truncation_increase: float | None = Field(default=None, ge=0, le=1)
    """Reject candidates whose truncation rate exceeds the baseline's by more than this."""
    max_degenerate_increase: float | None = Field(default=None, ge=0, le=1)
    """Reject candidates whose degenerate-output rate exceeds the baseline's by more than this."""


class Settings(_Strict):
    """Every run setting. `defaults:` sets them for all pairs; a pair may override any of them."""

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    """The alpha grid; alpha 0 (the aligned model itself) is always evaluated as the baseline."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Policy dtype for generation and the written checkpoint; auto = the aligned model's."""
    prompts: PromptsConfig = PromptsConfig(dataset="HuggingFaceH4/ultrafeedback_binarized")
    sampling: SamplingConfig = SamplingConfig()
    scorer: ScorerConfig = ScorerConfig(model="weqweasdas/RM-Mistral-7B")
    backend: Literal["transformers", "vllm"] = "transformers"
    batch_size: int = Field(default=16, ge=1)
    """Prompts per generation batch (transformers backend) and per recorded chunk."""
    search: SearchConfig = SearchConfig()
    selection: SelectionConfig = SelectionConfig()
    vocab_policy: Literal["error", "copy-extra"] = "error"
    """What to do when the vocabularies differ: refuse, or extrapolate the shared rows."""

    @field_validator("alphas")
    @classmethod
    def _grid(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError(
                "the alpha grid is empty: give at least one alpha, e.g. [0.1, 0.3, 0.5]"
            )
        bad = [a for a in v if a <= -1]
        if bad:
            raise ValueError(
                f"alpha must be greater than -1 (got {bad[0]}): -1 is the SFT model itself"
            )
        return tuple(sorted({float(a) for a in v if a != 0}))


class PaperValues(BaseModel):
    """What the paper reports for this pair, shown next to our results. Free-form extra keys allowed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    optimal_alpha: float | None = None
    reward: float | None = None
    expo_reward: float | None = None


_OVERRIDABLE = tuple(n for n in Settings.model_fields)


class PairSpec(_Strict):
    """One SFT/aligned pair."""

    name: str
    """Unique; used as a folder name."""
    sft: str
    """theta0: `org/name`, `org/name@revision` or a local folder."""
    aligned: str
    """theta1: the aligned model trained from `sft`."""
    algorithm: str | None = None
    family: str | None = None
    size: str | None = None
    tags: tuple[str, ...] = ()
    trust_remote_code: bool = False
    """Set only for models whose code lives in their repo (e.g. InternLM2)."""
    stop_token_ids: tuple[int, ...] = ()
    publish_name: str | None = None
    """Hub repo name for `publish` (default: <aligned-name>-ExPO)."""
    paper: PaperValues | None = None
    # Per-pair overrides of any setting:
    alphas: tuple[float, ...] | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    prompts: PromptsConfig | None = None
    sampling: dict[str, Any] | None = None
    scorer: ScorerConfig | None = None
    backend: Literal["transformers", "vllm"] | None = None
    batch_size: int | None = Field(default=None, ge=1)
    search: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    vocab_policy: Literal["error", "copy-extra"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not PAIR_NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a safe folder name: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("sft", "aligned")
    @classmethod
    def _ref(cls, v: str) -> str:
        _check_ref(v)
        return v

    _grid = field_validator("alphas")(lambda cls, v: v if v is None else Settings._grid(v))

    @field_validator("stop_token_ids")
    @classmethod
    def _stops(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(t < 0 for t in v):
            raise ValueError("token ids are non-negative integers")
        return v


class Pair(BaseModel):
    """A pair with its effective settings (defaults merged with its overrides) and parsed refs."""

    model_config = ConfigDict(frozen=True)

    spec: PairSpec
    settings: Settings
    sft: ModelRef
    aligned: ModelRef
    line: int | None = None
    field_lines: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def where(self) -> str:
        return (
            f"pair {self.name!r}" if self.line is None else f"line {self.line}, pair {self.name!r}"
        )


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    name: str | None = None
    defaults: Settings
    output_dir: Path
    pairs: tuple[Pair, ...]
    defaults_lines: dict[str, int] = {}

    @property
    def stem(self) -> str:
        """The run's default name: the manifest's `name:` or its file stem."""
        return self.name or self.path.stem

    def pair(self, name: str) -> Pair:
        for p in self.pairs:
            if p.name == name:
                return p
        raise KeyError(name)

    def location(self, pair: Pair, field: str) -> str:
        """`file:line pair 'name' field 'x'` for error messages of later steps."""
        key = field.split(".")[0]
        if key not in pair.field_lines and key in self.defaults_lines:
            return (
                f"{self.path.name}:{self.defaults_lines[key]} defaults.{field} (pair {pair.name!r})"
            )
        number = pair.field_lines.get(key) or pair.line
        line = f":{number}" if number else ""
        return f"{self.path.name}{line} pair {pair.name!r} field '{field}'"


class _TopLevel(_Strict):
    name: str | None = Field(default=None, pattern=PAIR_NAME_RE.pattern)
    defaults: dict[str, Any] = {}
    output_dir: str | None = None
    pairs: list[dict[str, Any]]


# ------------------------------------------------------------------------------------- loading


def _plain(node: Any) -> Any:
    """ruamel CommentedMap/Seq -> plain dict/list (pydantic wants plain data)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _line_of(root: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` found in the ruamel tree."""
    node, line = root, None
    for key in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and key in node:
                if lc is not None:
                    line = lc.key(key)[0] + 1
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                if lc is not None:
                    line = lc.item(key)[0] + 1
                node = node[key]
            else:
                break
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    if line is None and getattr(root, "lc", None) is not None:
        line = root.lc.line + 1
    return line


def _fields_of(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (for did-you-mean), walking nested pydantic models."""
    current: Any = model
    for key in loc:
        if isinstance(key, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(key)
        if field is None:
            return []
        ann = field.annotation
        current = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                current = cand
                break
    return list(getattr(current, "model_fields", {})) if current is not None else []


_NESTED_SETTINGS = {
    "sampling": SamplingConfig,
    "search": SearchConfig,
    "selection": SelectionConfig,
}


def _format_error(
    err: dict[str, Any], root: Any, base_loc: tuple[Any, ...], model: type[BaseModel], file: str
) -> tuple[int, str]:
    loc = base_loc + tuple(err["loc"])
    line = _line_of(root, loc)
    dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(
        ".[", "["
    )
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        options = _fields_of(model, tuple(err["loc"][:-1]))
        if not options and len(err["loc"]) >= 2 and str(err["loc"][-2]) in _NESTED_SETTINGS:
            options = list(_NESTED_SETTINGS[str(err["loc"][-2])].model_fields)
        close = difflib.get_close_matches(key, options, n=1)
        msg = f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif (
        "input" in err
        and err["type"] != "value_error"
        and err["type"] not in ("model_type", "dict_type")
        and not isinstance(err["input"], (dict, list))
    ):
        msg = f"{msg} (got {err['input']!r})"
    return (line or 0), f"{file}:{line if line else '?'} {dotted}: {msg}"


def _merge_overrides(defaults: dict[str, Any], pair: dict[str, Any]) -> dict[str, Any]:
    """Effective raw settings: nested tables merge key by key; other fields replace."""
    merged = dict(defaults)
    for key in _OVERRIDABLE:
        if key not in pair or pair[key] is None:
            continue
        if key in _NESTED_SETTINGS and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **pair[key]}
        else:
            merged[key] = pair[key]
    return merged


def _absolutize(settings: Settings, base: Path) -> Settings:
    updates: dict[str, Any] = {}
    p = settings.prompts
    if p.path is not None and not p.path.is_absolute():
        updates["prompts"] = p.model_copy(update={"path": (base / p.path).resolve()})
    s = settings.scorer
    if s.model is not None and s.model.startswith((".", "~")):
        updates["scorer"] = s.model_copy(
            update={"model": str((base / s.model).expanduser().resolve())}
        )
    return settings.model_copy(update=updates) if updates else settings


def parse_manifest(text: str, path: Path) -> Manifest:
    """Parse manifest text (``path`` is used for messages and relative paths)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    file = path.name
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        root = yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else "?"
        problem = e.problem or e.context or "invalid YAML"
        raise ManifestError([f"{file}:{line} invalid YAML: {problem}"]) from None
    except YAMLError as e:
        raise ManifestError([f"{file}: invalid YAML: {e}"]) from None
    if not isinstance(root, dict):
        raise ManifestError(
            [f"{file}:1 the manifest must be a mapping with 'defaults' and 'pairs'"]
        )

    problems: list[tuple[int, str]] = []
    data = _plain(root)
    try:
        top = _TopLevel.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            if len(err["loc"]) <= 1 or err["loc"][0] != "pairs":
                problems.append(_format_error(err, root, (), _TopLevel, file))
        if any(len(err["loc"]) <= 1 for err in e.errors()):
            raise ManifestError([m for _, m in sorted(problems)]) from None
        top = None

    base = path.parent
    defaults_raw = data.get("defaults") or {}
    defaults: Settings | None = None
    try:
        defaults = Settings.model_validate(defaults_raw)
    except ValidationError as e:
        for err in e.errors():
            problems.append(_format_error(err, root, ("defaults",), Settings, file))

    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    raw_pairs = data.get("pairs") if isinstance(data.get("pairs"), list) else []
    if not raw_pairs and top is not None:
        problems.append(
            (
                _line_of(root, ("pairs",)) or 0,
                f"{file}:{_line_of(root, ('pairs',))} pairs: the manifest has no pairs",
            )
        )
    for i, raw in enumerate(raw_pairs):
        if not isinstance(raw, dict):
            line = _line_of(root, ("pairs", i))
            problems.append((line or 0, f"{file}:{line} pairs[{i}]: each pair must be a mapping"))
            continue
        line = _line_of(root, ("pairs", i))
        name = raw.get("name")
        if isinstance(name, str) and name in seen:
            nline = _line_of(root, ("pairs", i, "name"))
            problems.append(
                (
                    nline or 0,
                    f"{file}:{nline} pairs[{i}].name: duplicate pair name {name!r} "
                    f"(first used on line {seen[name]})",
                )
            )
        elif isinstance(name, str):
            seen[name] = _line_of(root, ("pairs", i, "name")) or 0
        try:
            spec = PairSpec.model_validate(raw)
        except ValidationError as e:
            for err in e.errors():
                problems.append(_format_error(err, root, ("pairs", i), PairSpec, file))
            continue
        if defaults is None or problems:
            continue
        try:
            settings = Settings.model_validate(_merge_overrides(defaults_raw, raw))
        except ValidationError as e:
            for err in e.errors():
                problems.append(_format_error(err, root, ("pairs", i), Settings, file))
            continue
        try:
            sft = parse_ref(spec.sft, base)
            aligned = parse_ref(spec.aligned, base)
        except ValueError as e:  # already checked syntactically; keep the message if not
            problems.append((line or 0, f"{file}:{line} pairs[{i}]: {e}"))
            continue
        pairs.append(
            Pair(
                spec=spec, settings=_absolutize(settings, base), sft=sft, aligned=aligned, line=line
            )
        )

    if problems:
        raise ManifestError([m for _, m in sorted(problems, key=lambda p: p[0])])
    assert defaults is not None and top is not None
    out = Path(top.output_dir or "outputs").expanduser()
    if not out.is_absolute():
        out = (base / out).resolve()
    return Manifest(
        path=path.resolve(),
        name=top.name,
        defaults=_absolutize(defaults, base),
        output_dir=out,
        pairs=tuple(pairs),
        defaults_lines={str(k): _line_of(root, ("defaults", k)) or 0 for k in defaults_raw},
    )


def load_manifest(path: str | Path) -> Manifest:
    """Load and validate a manifest file; every problem is reported at once."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"manifest not found: {path}", "give the path to a registry.yaml"
        ) from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a manifest file") from None
    except UnicodeDecodeError as e:
        raise ManifestError(
            [f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})"]
        ) from None
    return parse_manifest(text, path)


# ----------------------------------------------------------------------------------- selection


def select_pairs(pairs: tuple[Pair, ...] | list[Pair], only: list[str] | None) -> list[Pair]:
    """Pairs matching any of ``only`` (names, globs such as 'tulu2-*', or tags), in manifest order.

    Each pattern may also be a comma-separated list. A pattern that matches nothing is an error
    (with a did-you-mean), so a typo never silently runs nothing.
    """
    if not only:
        return list(pairs)
    patterns = [p.strip() for item in only for p in item.split(",") if p.strip()]
    chosen: set[str] = set()
    for pat in patterns:
        hits = {
            p.name
            for p in pairs
            if fnmatch.fnmatchcase(p.name, pat)
            or pat in p.spec.tags
            or (p.spec.family is not None and pat == p.spec.family)
            or (p.spec.algorithm is not None and pat.lower() == p.spec.algorithm.lower())
        }
        if not hits:
            vocab = [p.name for p in pairs] + sorted({t for p in pairs for t in p.spec.tags})
            close = difflib.get_close_matches(pat, vocab, n=3)
            raise UsageError(
                f"--only {pat!r} matches no pair name, glob or tag",
                f"did you mean {', '.join(repr(c) for c in close)}?"
                if close
                else "run `expo-batch validate MANIFEST` to list the pairs and their tags",
            )
        chosen |= hits
    return [p for p in pairs if p.name in chosen]

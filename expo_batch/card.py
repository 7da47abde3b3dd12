"""Model cards: README.md for a materialized ExPO checkpoint, built with huggingface_hub.

The card carries Hub metadata (base models with ``base_model_relation: merge``, tags, the license
inherited from the aligned model, the sweep's result as model-index eval results) and a body that
says what was built and how it was chosen: the formula with the chosen alpha, the sweep table and
plot, the evaluation protocol, provenance, how to reproduce, the paper's values and the citation.
Everything comes from the pair's artifacts (pair.json, sweep.json, model/expo_provenance.json).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expo_batch.errors import ExpoError
from expo_batch.io import atomic_write_text, read_json
from expo_batch.layout import PairLayout, alpha_label

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

BIBTEX = """\
@article{zheng2024extrapolation,
  title   = {Model Extrapolation Expedites Alignment},
  author  = {Zheng, Chujie and Wang, Ziqi and Ji, Heng and Huang, Minlie and Peng, Nanyun},
  journal = {arXiv preprint arXiv:2404.16792},
  year    = {2024},
  url     = {https://arxiv.org/abs/2404.16792}
}"""

TAGS = ["expo", "model-extrapolation", "merge"]


# ------------------------------------------------------------------------------------- helpers


def hub_id(model: dict[str, Any] | None) -> str | None:
    """The Hub repo id of a pair.json model entry (``org/x@rev`` -> ``org/x``); None if local."""
    if not model or model.get("local"):
        return None
    ref = str(model.get("ref") or "")
    if not ref or ref.startswith((".", "/", "~")):
        return None
    return ref.split("@", 1)[0]


def default_repo_name(info: dict[str, Any]) -> str:
    """``spec.publish_name``, else ``<aligned-repo-name>-ExPO`` (local folders: the folder name)."""
    spec = info.get("spec") or {}
    if spec.get("publish_name"):
        return str(spec["publish_name"])
    aligned = info.get("aligned") or {}
    ref = str(aligned.get("ref") or spec.get("aligned") or info.get("name") or "model")
    base = hub_id(aligned) or ref.split("@", 1)[0]
    return f"{Path(base.rstrip('/')).name}-ExPO"


def _front_matter(readme: Path) -> dict[str, Any] | None:
    from huggingface_hub import metadata_load

    try:
        return metadata_load(readme)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    except Exception:  # a malformed YAML block in someone else's card: no license, not a crash
        return None


def inherited_license(info: dict[str, Any]) -> dict[str, Any]:
    """License fields of the aligned model's own README.md front matter, if we can read it offline.

    Local aligned folder: its README.md. Hub model: the README.md in the local Hub cache at the
    resolved revision (never a network call). Returns {} when there is none; the card then omits
    the license rather than guess.
    """
    aligned = info.get("aligned") or {}
    readme: Path | None = None
    if aligned.get("local") or hub_id(aligned) is None:
        ref = aligned.get("ref")
        if ref and (Path(ref) / "README.md").is_file():
            readme = Path(ref) / "README.md"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            hub_id(aligned), "README.md", revision=aligned.get("sha") or None
        )
        if isinstance(cached, str):
            readme = Path(cached)
    meta = _front_matter(readme) if readme else None
    if not meta or not meta.get("license"):
        return {}
    out = {"license": meta["license"]}
    for key in ("license_name", "license_link"):
        if meta.get(key):
            out[key] = meta[key]
    return out


def _hub_link(model: dict[str, Any]) -> str:
    repo = hub_id(model)
    if repo is None:
        return f"`{model.get('ref')}` (local folder)"
    return f"[{repo}](https://huggingface.co/{repo})"


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    ).rstrip()


def _fmt(x: Any, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{float(x):+.{digits}f}" if sign else f"{float(x):.{digits}f}"


def sweep_table(sweep: dict[str, Any]) -> str:
    """Markdown table of every candidate: reward ± stderr, change vs alpha 0, length, truncation."""
    sel = sweep.get("selection") or {}
    cands = sorted(sweep.get("candidates") or [], key=lambda c: c["alpha"])
    base = next((c for c in cands if float(c["alpha"]) == 0.0), None)
    rejected = {float(r["alpha"]): r.get("reason") for r in sel.get("rejected") or []}
    chosen = sel.get("chosen_alpha")
    lines = [
        "| α | n | mean reward ± stderr | Δ vs α=0 | mean length | truncated | degenerate | |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cands:
        a = float(c["alpha"])
        if a == 0.0:
            note = "baseline (the aligned model)"
        elif chosen is not None and a == float(chosen):
            note = "**chosen**"
        elif a in rejected:
            note = f"rejected: {rejected[a]}"
        else:
            note = ""
        delta = (
            "–"
            if base is None or a == 0.0
            else _fmt(c["mean_reward"] - base["mean_reward"], sign=True)
        )
        label = f"**{alpha_label(a)}**" if note == "**chosen**" else alpha_label(a)
        lines.append(
            f"| {label} | {c.get('n', '–')} | {_fmt(c['mean_reward'])} ± {_fmt(c.get('stderr'))} "
            f"| {delta} | {_fmt(c.get('mean_length'), 1)} "
            f"| {100 * float(c.get('truncation_rate') or 0):.1f}% "
            f"| {100 * float(c.get('degenerate_rate') or 0):.1f}% | {note} |"
        )
    return "\n".join(lines)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        elif v is not None:
            out.append((f"{prefix}{k}", v))
    return out


def _eval_results(info: dict[str, Any], sweep: dict[str, Any]) -> list[Any]:
    from huggingface_hub import EvalResult

    sel = sweep.get("selection") or {}
    if sel.get("chosen_alpha") is None or sel.get("chosen_mean") is None:
        return []
    source = (info.get("prompts") or {}).get("source") or {}
    settings = info.get("settings") or {}
    rm = (info.get("scorer") or {}).get("ref") or (settings.get("scorer") or {}).get("model")
    if source.get("dataset"):
        ds_type, ds_name = str(source["dataset"]), str(source["dataset"])
        split, revision = source.get("split"), source.get("revision")
    else:
        path = str(source.get("path") or "prompts")
        ds_type, ds_name, split, revision = "json", Path(path).name, None, None
    common = dict(
        task_type="text-generation",
        task_name="Reward-model score (ExPO alpha selection)",
        dataset_type=ds_type,
        dataset_name=ds_name,
        dataset_split=split,
        dataset_revision=revision,
        metric_config=str(rm) if rm else None,
    )
    results = [
        EvalResult(
            metric_type="reward",
            metric_name=f"mean reward ({rm})",
            metric_value=round(float(sel["chosen_mean"]), 4),
            **common,
        ),
    ]
    if sel.get("gain") is not None:
        results.append(
            EvalResult(
                metric_type="reward_gain",
                metric_name="gain over the aligned model (α=0)",
                metric_value=round(float(sel["gain"]), 4),
                **common,
            )
        )
    return results


# ----------------------------------------------------------------------------------- the body


def _body(
    info: dict[str, Any],
    sweep: dict[str, Any],
    provenance: dict[str, Any],
    model_name: str,
    repo_id: str | None,
    plot: str | None,
) -> str:
    spec = info.get("spec") or {}
    settings = info.get("settings") or {}
    sel = sweep.get("selection") or {}
    alpha = float(sel["chosen_alpha"])
    a = alpha_label(alpha)
    one_plus = alpha_label(1 + alpha)
    sft, aligned = info.get("sft") or {}, info.get("aligned") or {}
    prompts = info.get("prompts") or {}
    source = prompts.get("source") or {}
    sampling = settings.get("sampling") or {}
    scorer_cfg = settings.get("scorer") or {}
    scorer = info.get("scorer") or {}
    versions = info.get("versions") or {}
    conf = sel.get("confidence")
    ci = ""
    if sel.get("ci_low") is not None and sel.get("ci_high") is not None:
        ci = (
            f" ({100 * float(conf or 0.95):.0f}% paired-bootstrap interval "
            f"[{_fmt(sel['ci_low'], sign=True)}, {_fmt(sel['ci_high'], sign=True)}])"
        )
    dtype = provenance.get("dtype") or settings.get("dtype") or "the aligned model's dtype"
    n = prompts.get("n")

    out: list[str] = [f"# {model_name}", ""]
    what = ", ".join(x for x in (spec.get("family"), spec.get("algorithm"), spec.get("size")) if x)
    out += [
        f"An **ExPO** (model extrapolation) version of {_hub_link(aligned)}"
        + (f" ({what})" if what else "")
        + f", extrapolated away from its SFT checkpoint {_hub_link(sft)} with **α = {a}**, the "
        f"value that maximised the mean reward-model score over {n} prompts. It needs no "
        "training: the weights are a fixed linear combination of the two checkpoints.",
        "",
        f"Reward at α = {a}: **{_fmt(sel.get('chosen_mean'))}**, against "
        f"{_fmt(sel.get('baseline_mean'))} for the aligned model itself: a gain of "
        f"**{_fmt(sel.get('gain'), sign=True)}**{ci}.",
        "",
        "## Method",
        "",
        "Alignment training (DPO, RLHF, ...) moves a model only a short way from its SFT "
        "checkpoint. ExPO ([Zheng et al., 2024](https://arxiv.org/abs/2404.16792)) follows "
        "that direction further: with θ₀ the SFT "
        "model and θ₁ the aligned model,",
        "",
        "$$\\theta_{\\text{ExPO}} = \\theta_1 + \\alpha\\,(\\theta_1 - \\theta_0)$$",
        "",
        f"Here, per tensor: `theta = {one_plus} * theta_aligned - {a} * theta_sft` "
        f"(θ₁ = {_hub_link(aligned)}, θ₀ = {_hub_link(sft)}).",
        "",
        f"The arithmetic is done in float32 and rounded once to the output dtype ({dtype}), "
        "unlike the authors' script, which computes in bf16; the weights can therefore differ "
        "from theirs in the last bit.",
        "",
        "## Sweep",
        "",
        f"Selection: {sel.get('reason') or '–'} (strategy: {sel.get('strategy') or 'grid'}).",
        "",
        sweep_table(sweep),
        "",
    ]
    if plot:
        out += [f"![Mean reward and answer length against α]({plot})", ""]
    out += [
        "Reward intervals per α are ± 1.96 standard errors of the mean; the gain's interval is "
        "a paired bootstrap over prompts. A reward-model score is a proxy: see *Evaluation "
        "protocol* and check the model on AlpacaEval 2.0 / MT-Bench before relying on it.",
        "",
        "## Evaluation protocol",
        "",
    ]
    if source.get("dataset"):
        ds = source["dataset"]
        out.append(
            f"- **Prompts**: [{ds}](https://huggingface.co/datasets/{ds}), split "
            f"`{source.get('split')}`, revision `{source.get('revision') or 'unpinned'}`, "
            f"{n} prompts (set hash `{prompts.get('hash')}`)"
        )
    else:
        out.append(
            f"- **Prompts**: local file `{source.get('path')}`, {n} prompts "
            f"(set hash `{prompts.get('hash')}`)"
        )
    if sampling:
        params = ", ".join(f"{k}={v}" for k, v in sampling.items())
        out.append(f"- **Sampling** ({settings.get('backend', 'transformers')} backend): {params}")
    rm_ref = scorer.get("ref") or scorer_cfg.get("model") or scorer_cfg.get("function")
    rm_sha = scorer.get("sha")
    out.append(
        f"- **Reward model**: `{rm_ref}`"
        + (f" at revision `{rm_sha}`" if rm_sha else "")
        + f", batch size {scorer_cfg.get('batch_size', '–')}, dtype {scorer_cfg.get('dtype', '–')}"
    )
    selection = settings.get("selection") or {}
    guards = [f"{k}={v}" for k, v in selection.items() if v is not None]
    if guards:
        out.append(
            "- **Selection rule**: highest mean reward above the baseline; " + ", ".join(guards)
        )
    out += ["", "## Provenance", ""]
    for label, m in (("SFT (θ₀)", sft), ("Aligned (θ₁)", aligned)):
        ref, sha = str(m.get("ref")), m.get("sha")
        pinned = sha and ref.endswith(f"@{sha}")
        out.append(f"- {label}: `{ref}`" + ("" if pinned or not sha else f", resolved `{sha}`"))
    out.append(f"- Sweep fingerprint: `{sweep.get('fingerprint')}`")
    if versions:
        out.append("- Software: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    extra = [(k, v) for k, v in provenance.items() if not isinstance(v, (dict, list))]
    if extra:
        out.append(
            "- Materialized checkpoint (`expo_provenance.json`): "
            + ", ".join(f"{k}=`{v}`" for k, v in extra)
        )
    out += [
        "",
        "## Reproduce",
        "",
        "The manifest entry of this pair:",
        "",
        "```yaml",
        (info.get("manifest_entry") or _yaml(spec)).rstrip(),
        "```",
        "",
        "and the command:",
        "",
        "```bash",
        f"expo-batch run registry.yaml --only {info.get('name') or spec.get('name')}",
        "```",
        "",
    ]
    if settings:
        out += [
            "<details><summary>Effective settings of this run</summary>",
            "",
            "```yaml",
            _yaml(settings),
            "```",
            "",
            "</details>",
            "",
        ]
    paper = {k: v for k, v in (spec.get("paper") or {}).items() if v is not None}
    out += ["## What the paper reports for this pair", ""]
    if paper:
        out += ["| paper field | value |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in _flatten(paper)]
        if paper.get("reward") is not None and paper.get("expo_reward") is not None:
            gain = float(paper["expo_reward"]) - float(paper["reward"])
            out.append(f"| reward gain (expo_reward − reward) | {gain:+.2f} |")
        if paper.get("optimal_alpha") is not None:
            out += [
                "",
                f"The paper's α for this pair: {alpha_label(paper['optimal_alpha'])}; "
                f"this sweep chose {a}.",
            ]
        out += [
            "",
            "The paper's rewards were measured on its own prompt set (UltraFeedback, "
            "1K prompts) and its AlpacaEval / MT-Bench scores with GPT-4 judges, so they are "
            "a reference, not a like-for-like comparison.",
            "",
        ]
    else:
        out += ["The manifest carries no paper values for this pair.", ""]
    model_ref = repo_id or "path/to/this/model"
    out += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{model_ref}")',
        f'model = AutoModelForCausalLM.from_pretrained("{model_ref}", dtype="auto")',
        "```",
        "",
        "The tokenizer, chat template and generation config are the aligned model's.",
        "",
        "## Citation",
        "",
        "```bibtex",
        BIBTEX,
        "```",
        "",
        "Built with expo-batch.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------- the card


def build_card(model_dir: Path, pair_dir: Path, *, repo_id: str | None = None) -> ModelCard:
    """The card of a pair's materialized model, as a huggingface_hub ``ModelCard`` (not saved).

    Raises:
        ExpoError: the pair has no sweep.json, or its selection chose no alpha.
    """
    from huggingface_hub import ModelCard, ModelCardData

    layout = PairLayout(Path(pair_dir))
    try:
        info = read_json(layout.pair_json)
        sweep = read_json(layout.sweep)
    except FileNotFoundError as e:
        raise ExpoError(
            f"cannot write a model card: {e.filename} is missing",
            "the pair's sweep has not finished; run it first",
        ) from None
    sel = sweep.get("selection") or {}
    if sel.get("chosen_alpha") is None:
        raise ExpoError(
            f"pair {info.get('name')!r} has no chosen alpha ({sel.get('reason')}): "
            "no model to describe"
        )
    prov_path = Path(model_dir) / "expo_provenance.json"
    provenance = read_json(prov_path) if prov_path.exists() else {}
    model_name = repo_id.split("/")[-1] if repo_id else default_repo_name(info)
    bases = [b for b in (hub_id(info.get("aligned")), hub_id(info.get("sft"))) if b]
    data = ModelCardData(
        base_model=bases or None,
        base_model_relation="merge" if bases else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(TAGS),
        model_name=model_name,
        eval_results=_eval_results(info, sweep) or None,
        **inherited_license(info),
    )
    plot = "sweep.png" if (Path(model_dir) / "sweep.png").exists() else None
    body = _body(info, sweep, provenance, model_name, repo_id, plot)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_card(model_dir: Path, pair_dir: Path, *, repo_id: str | None = None) -> Path:
    """Write README.md (and sweep.png, embedded in it) into the pair's model folder.

    The sweep plot is copied from the pair folder, or drawn if the pair has none yet.
    ``repo_id`` only fills the usage snippet and the model-index name (publish passes it).
    Returns the README.md path.
    """
    model_dir, pair_dir = Path(model_dir), Path(pair_dir)
    layout = PairLayout(pair_dir)
    if not model_dir.is_dir():
        raise ExpoError(f"model folder {model_dir} does not exist", "materialize the pair first")
    if layout.sweep.exists():
        if not layout.sweep_plot.exists():
            from expo_batch import plots

            paper = (
                ((read_json(layout.pair_json).get("spec") or {}).get("paper") or {})
                if layout.pair_json.exists()
                else {}
            )
            plots.plot_sweep(
                read_json(layout.sweep), layout.sweep_plot, paper_alpha=paper.get("optimal_alpha")
            )
        shutil.copyfile(layout.sweep_plot, model_dir / "sweep.png")
    card = build_card(model_dir, pair_dir, repo_id=repo_id)
    path = model_dir / "README.md"
    atomic_write_text(path, str(card))
    return path

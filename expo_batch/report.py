"""The cross-pair results table (the layout of the paper's Tables 5 and 6), from a run's artifacts.

:func:`collect` reads a run folder (run.json, each pair's pair.json and sweep.json, candidate
metrics for partial sweeps, and the ledger for each pair's state) into one :class:`Row` per pair;
:func:`render` turns rows into a terminal table, markdown, CSV, JSON or LaTeX; and
:func:`write_results` writes results.md/.csv/.json and the plots into the run folder. Reading
never changes a run, so a report of a run in progress is safe.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from expo_batch.errors import UsageError
from expo_batch.io import atomic_write_json, atomic_write_text, read_json
from expo_batch.layout import PairLayout, RunLayout, alpha_label
from expo_batch.ledger import STAGES, Unit, open_ledger_readonly

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

Format = Literal["table", "markdown", "csv", "json", "latex"]
FORMATS: tuple[str, ...] = ("table", "markdown", "csv", "json", "latex")


@dataclass
class Row:
    """One pair of one run. Numbers are None where the run has not produced them (yet)."""

    pair: str
    state: str
    """done | failed | pending."""
    run: str | None = None
    family: str | None = None
    algorithm: str | None = None
    size: str | None = None
    stage: str | None = None
    """For pending/failed pairs: the furthest stage reached (e.g. 'sweep 2/6')."""
    n: int | None = None
    baseline_mean: float | None = None
    baseline_stderr: float | None = None
    chosen_alpha: float | None = None
    chosen_mean: float | None = None
    chosen_stderr: float | None = None
    gain: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    baseline_length: float | None = None
    chosen_length: float | None = None
    baseline_truncation: float | None = None
    chosen_truncation: float | None = None
    paper_alpha: float | None = None
    paper_gain: float | None = None
    reason: str | None = None
    """The selection's reason (why this alpha, or why none)."""
    rejected: list[dict[str, Any]] | None = None
    error: str | None = None
    fingerprint: str | None = None

    @property
    def selected(self) -> bool:
        """True once the selection has run (whether or not it chose an alpha)."""
        return self.reason is not None


# ------------------------------------------------------------------------------------- reading


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        # A hand-edited or foreign file: report the pair as unreadable rather than crash the table.
        return None


def _candidate_metrics(pair: PairLayout) -> list[dict[str, Any]]:
    """Every scored candidate's metrics.json by alpha (a sweep in progress has no sweep.json)."""
    found = []
    for metrics in pair.root.glob("alpha-*/metrics.json"):
        m = _read(metrics)
        if isinstance(m, dict) and "alpha" in m:
            found.append(m)
    return sorted(found, key=lambda m: m["alpha"])


def _state(
    units: list[Unit], sweep: dict | None, pair: PairLayout, n_planned: int | None
) -> tuple[str, str | None, str | None]:
    """(state, stage, error) of a pair from its ledger units, per the artifact contract."""
    failed = [u for u in units if u.state == "failed"]
    if failed:
        u = failed[-1]
        return "failed", u.stage, f"{u.unit}: {u.error or 'failed'}"
    done = {u.unit for u in units if u.state == "done"}
    selection = (sweep or {}).get("selection") or {}
    chose_none = sweep is not None and selection.get("chosen_alpha") is None
    if "card" in done or ("select" in done and chose_none):
        return "done", None, None
    if not units and sweep is not None and (chose_none or (pair.model / "README.md").exists()):
        return "done", None, None  # a run folder without a ledger (copied results): trust artifacts
    reached = [u.stage for u in units]
    stage = max(reached, key=STAGES.index) if reached else None
    if stage == "sweep" and n_planned:
        scored = sum(1 for u in units if u.unit.startswith("score@") and u.state == "done")
        stage = f"sweep {scored}/{n_planned}"
    return "pending", stage, None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _pair_row(run: RunLayout, name: str, units: list[Unit]) -> Row:
    layout = run.pair(name)
    info = _read(layout.pair_json) or {}
    spec = info.get("spec") or {}
    settings = info.get("settings") or {}
    sweep = _read(layout.sweep)
    candidates = (sweep or {}).get("candidates") or _candidate_metrics(layout)
    alphas = spec.get("alphas") or settings.get("alphas")
    n_planned = len(alphas) + 1 if alphas else None
    state, stage, error = _state(units, sweep, layout, n_planned)
    paper = spec.get("paper") or {}
    reward, expo = _num(paper.get("reward")), _num(paper.get("expo_reward"))
    row = Row(
        pair=name,
        state=state,
        family=spec.get("family"),
        algorithm=spec.get("algorithm"),
        size=spec.get("size"),
        stage=stage,
        error=error,
        paper_alpha=_num(paper.get("optimal_alpha")),
        paper_gain=round(expo - reward, 6) if reward is not None and expo is not None else None,
        fingerprint=(sweep or {}).get("fingerprint"),
    )
    by_alpha = {float(c["alpha"]): c for c in candidates if "alpha" in c}
    base = by_alpha.get(0.0)
    if base:
        row.n = base.get("n")
        row.baseline_mean = _num(base.get("mean_reward"))
        row.baseline_stderr = _num(base.get("stderr"))
        row.baseline_length = _num(base.get("mean_length"))
        row.baseline_truncation = _num(base.get("truncation_rate"))
    sel = (sweep or {}).get("selection")
    if sel:
        row.reason = sel.get("reason")
        row.rejected = sel.get("rejected") or []
        row.confidence = _num(sel.get("confidence"))
        if sel.get("baseline_mean") is not None:
            row.baseline_mean = _num(sel["baseline_mean"])
        alpha = _num(sel.get("chosen_alpha"))
        if alpha is not None:
            row.chosen_alpha = alpha
            row.chosen_mean = _num(sel.get("chosen_mean"))
            row.gain = _num(sel.get("gain"))
            row.ci_low, row.ci_high = _num(sel.get("ci_low")), _num(sel.get("ci_high"))
            chosen = by_alpha.get(alpha)
            if chosen:
                if row.chosen_mean is None:
                    row.chosen_mean = _num(chosen.get("mean_reward"))
                row.chosen_stderr = _num(chosen.get("stderr"))
                row.chosen_length = _num(chosen.get("mean_length"))
                row.chosen_truncation = _num(chosen.get("truncation_rate"))
    return row


def run_name(run_dir: Path) -> str:
    meta = _read(Path(run_dir) / "run.json") or {}
    return str(meta.get("name") or Path(run_dir).name)


def collect(run_dir: Path) -> list[Row]:
    """One :class:`Row` per pair of the run, in run order (run.json's ``pairs``), then any others.

    Raises:
        UsageError: ``run_dir`` is not a run folder.
    """
    run = RunLayout(Path(run_dir))
    meta = _read(run.root / "run.json")
    if meta is None and not run.ledger.exists():
        raise UsageError(
            f"{run.root} is not a run folder (no run.json or ledger.sqlite)",
            "give a folder under outputs/, e.g. outputs/registry",
        )
    names = list((meta or {}).get("pairs") or [])
    led = open_ledger_readonly(run.ledger)
    try:
        units = led.units() if led else []
    finally:
        if led:
            led.close()
    by_pair: dict[str, list[Unit]] = {}
    for u in units:
        by_pair.setdefault(u.pair, []).append(u)
    on_disk = sorted(p.name for p in (run.root / "pairs").glob("*") if p.is_dir())
    for extra in [*by_pair, *on_disk]:
        if extra not in names:
            names.append(extra)
    return [_pair_row(run, name, by_pair.get(name, [])) for name in names]


def collect_many(run_dirs: list[Path]) -> list[Row]:
    """Rows of several runs, each tagged with its run's name (the ``run`` column)."""
    rows: list[Row] = []
    for d in run_dirs:
        name = run_name(d)
        for row in collect(d):
            row.run = name
            rows.append(row)
    return rows


def latest_run(outputs: Path = Path("outputs")) -> Path:
    """The most recently modified run folder under ``outputs`` (``expo-batch report``'s default)."""
    runs = [
        d
        for d in Path(outputs).glob("*")
        if d.is_dir() and ((d / "run.json").exists() or (d / "ledger.sqlite").exists())
    ]
    if not runs:
        raise UsageError(
            f"no run folder under {Path(outputs).resolve()}",
            "run `expo-batch run MANIFEST` first, or name the run: expo-batch report RUN_DIR",
        )

    def mtime(d: Path) -> float:
        return max(
            p.stat().st_mtime for p in (d, d / "run.json", d / "ledger.sqlite") if p.exists()
        )

    return max(runs, key=mtime)


# ------------------------------------------------------------------------------------ cells


def _f(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _alpha(x: float | None) -> str:
    return "–" if x is None else alpha_label(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _before_after(before: str, after: str) -> str:
    return before if after == "–" else f"{before} → {after}"


def _state_cell(row: Row) -> str:
    if row.state == "failed":
        return f"failed ({row.stage})" if row.stage else "failed"
    if row.state == "pending":
        return f"pending ({row.stage})" if row.stage else "pending"
    return "done"


def _chosen_cell(row: Row) -> str:
    if row.chosen_alpha is not None:
        return alpha_label(row.chosen_alpha)
    return "none" if row.selected else "–"


def _gain_cell(row: Row, latex: bool = False) -> str:
    if row.gain is None:
        return "–"
    ci = ""
    if row.ci_low is not None and row.ci_high is not None:
        ci = f"[{_f(row.ci_low, sign=True)}, {_f(row.ci_high, sign=True)}]"
        ci = f" {{\\scriptsize {ci}}}" if latex else f" {ci}"
    return _f(row.gain, sign=True) + ci


def _confidence_label(rows: list[Row]) -> str:
    levels = {r.confidence for r in rows if r.confidence is not None}
    return f"{100 * levels.pop():.0f}% CI" if len(levels) == 1 else "CI"


def _columns(rows: list[Row], latex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the human-readable table (terminal, markdown, LaTeX)."""
    a = "$\\alpha$" if latex else "α"
    head = [
        "Pair",
        "Family",
        "Algorithm",
        "Size",
        f"Reward {a}=0",
        f"Chosen {a}",
        "Reward (chosen)",
        f"Gain ({_confidence_label(rows)})",
        "Length",
        "Truncated",
        f"Paper {a}",
        "Paper gain",
        "State",
    ]
    multi = any(r.run for r in rows)
    if multi:
        head.insert(0, "Run")
    body = []
    for r in rows:
        cells = [
            r.pair,
            r.family or "–",
            r.algorithm or "–",
            r.size or "–",
            _f(r.baseline_mean),
            _chosen_cell(r),
            _f(r.chosen_mean),
            _gain_cell(r, latex),
            _before_after(_f(r.baseline_length, 0), _f(r.chosen_length, 0)),
            _before_after(_pct(r.baseline_truncation), _pct(r.chosen_truncation)),
            _alpha(r.paper_alpha),
            _f(r.paper_gain, 2, sign=True),
            _state_cell(r),
        ]
        if multi:
            cells.insert(0, r.run or "–")
        body.append(cells)
    return head, body


def notes(rows: list[Row]) -> list[str]:
    """Plain-text notes under a table: failures, selections that chose none, rejected alphas."""
    out: list[str] = []
    for r in rows:
        who = f"{r.run}/{r.pair}" if r.run else r.pair
        if r.state == "failed":
            out.append(f"{who}: failed at {r.error or r.stage}")
        elif r.selected and r.chosen_alpha is None:
            out.append(f"{who}: no alpha chosen ({r.reason})")
        for rej in r.rejected or []:
            out.append(f"{who}: alpha {alpha_label(rej['alpha'])} rejected ({rej.get('reason')})")
    return out


# ---------------------------------------------------------------------------------- renderers


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list[Row], *, with_notes: bool = True) -> str:
    head, body = _columns(rows)
    numeric = {
        i for i, h in enumerate(head) if h not in ("Run", "Pair", "Family", "Algorithm", "State")
    }
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if i in numeric else "---" for i in range(len(head))) + "|",
    ]
    lines += ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in body]
    text = "\n".join(lines) + "\n"
    if with_notes and (ns := notes(rows)):
        text += "\n" + "\n".join(f"- {_md_escape(n)}" for n in ns) + "\n"
    return text


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(rows: list[Row]) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); paste into the paper's Table 6 layout."""
    head, body = _columns(rows, latex=True)

    def cell(c: str, header: bool) -> str:
        if header:
            return c if "$" in c else _latex_escape(c)
        if c == "–":
            return "--"
        if "\\scriptsize" in c:  # the gain cell: numbers and brackets only, already LaTeX
            return c
        return _latex_escape(c).replace("→", "$\\to$")

    align = "".join(
        "l" if h in ("Run", "Pair", "Family", "Algorithm", "State") else "r" for h in head
    )
    lines = [
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(cell(h, True) for h in head) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(cell(c, False) for c in cells) + " \\\\" for cells in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _plain(row: Row) -> dict[str, Any]:
    d = asdict(row)
    return d


def render_csv(rows: list[Row]) -> str:
    """Every field, raw numbers (full precision); rejected alphas as JSON text."""
    buf = io.StringIO()
    names = [f.name for f in fields(Row)]
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = _plain(r)
        d["rejected"] = json.dumps(d["rejected"]) if d["rejected"] else ""
        w.writerow({k: "" if v is None else v for k, v in d.items()})
    return buf.getvalue()


def render_json(rows: list[Row]) -> str:
    return json.dumps([_plain(r) for r in rows], indent=2) + "\n"


def build_table(rows: list[Row], title: str | None = None) -> Table:
    from rich.table import Table

    head, body = _columns(rows)
    # A terminal is narrow: leave out columns with nothing in them (e.g. no paper values).
    keep = [
        i for i, h in enumerate(head) if h == "Pair" or any(c[i] not in ("", "–") for c in body)
    ]
    table = Table(title=title, show_lines=False, header_style="bold")
    for i in keep:
        h = head[i]
        right = h not in ("Run", "Pair", "Family", "Algorithm", "State")
        table.add_column(
            h, justify="right" if right else "left", overflow="fold", no_wrap=h in ("Run", "Pair")
        )
    style = {"failed": "red", "pending": "yellow"}
    for r, cells in zip(rows, body, strict=True):
        table.add_row(*(cells[i] for i in keep), style=style.get(r.state))
    return table


def print_table(rows: list[Row], console: Console, title: str | None = None) -> None:
    """The terminal table with its notes, on ``console``."""
    console.print(build_table(rows, title))
    for n in notes(rows):
        console.print(f"  {n}", highlight=False, markup=False)


def render(rows: list[Row], fmt: Format = "table") -> str:
    """Rows as text in one of :data:`FORMATS` (``table`` is the rich terminal table, as text)."""
    if fmt == "markdown":
        return render_markdown(rows)
    if fmt == "csv":
        return render_csv(rows)
    if fmt == "json":
        return render_json(rows)
    if fmt == "latex":
        return render_latex(rows)
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
        print_table(rows, console)
        return console.file.getvalue()  # type: ignore[attr-defined]
    raise UsageError(f"unknown format {fmt!r}", f"use one of: {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------------- writing


def _summary_line(rows: list[Row]) -> str:
    counts = {s: sum(r.state == s for r in rows) for s in ("done", "failed", "pending")}
    chosen = sum(r.chosen_alpha is not None for r in rows)
    parts = [f"{len(rows)} pairs: {counts['done']} done ({chosen} with a chosen alpha)"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    if counts["pending"]:
        parts.append(f"{counts['pending']} pending")
    return ", ".join(parts)


def results_markdown(run_dir: Path, rows: list[Row], *, summary_png: str | None = None) -> str:
    """The text of results.md: header, table, notes, summary plot and per-pair sweep plots."""
    run = RunLayout(Path(run_dir))
    meta = _read(run.root / "run.json") or {}
    lines = [f"# ExPO results: {run_name(run.root)}", ""]
    facts = []
    if meta.get("manifest"):
        facts.append(f"manifest `{meta['manifest']}`")
    if meta.get("started"):
        facts.append(f"started {meta['started']}")
    facts.append(f"finished {meta['finished']}" if meta.get("finished") else "not finished")
    if meta.get("tool_version"):
        facts.append(f"expo-batch {meta['tool_version']}")
    lines += [" · ".join(facts), "", _summary_line(rows) + ".", ""]
    lines += [
        "Reward: mean reward-model score over the evaluation prompts; α=0 is the aligned model "
        "itself. Gain: chosen minus baseline, with a paired bootstrap interval. "
        "Length: mean answer "
        "tokens; Truncated: share of answers that hit max_tokens (before → after). Paper values "
        "come from the manifest (`paper:`) and were measured on the paper's own prompt set.",
        "",
        render_markdown(rows),
    ]
    if summary_png:
        lines += [f"![Reward gain per pair]({summary_png})", ""]
    plotted = [r for r in rows if (run.pair(r.pair).sweep_plot).exists()]
    if plotted:
        lines += ["## Sweeps", ""]
        for r in plotted:
            rel = run.pair(r.pair).sweep_plot.relative_to(run.root).as_posix()
            what = (
                f"chosen α = {alpha_label(r.chosen_alpha)}"
                if r.chosen_alpha is not None
                else (r.reason or r.state)
            )
            lines += [
                f"### {r.pair}",
                "",
                f"{what}.",
                "",
                f"![{r.pair}: reward against alpha]({rel})",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def write_results(run_dir: Path) -> list[Path]:
    """Write results.md, results.csv, results.json, summary.png and each pair's sweep.png.

    Called by the pipeline at the end of every run (and safe to call on a partial run).
    Returns the paths written.
    """
    from expo_batch import plots

    run = RunLayout(Path(run_dir))
    rows = collect(run.root)
    written: list[Path] = []
    for r in rows:
        layout = run.pair(r.pair)
        sweep = _read(layout.sweep)
        if sweep and sweep.get("candidates"):
            plots.plot_sweep(sweep, layout.sweep_plot, paper_alpha=r.paper_alpha)
            written.append(layout.sweep_plot)
    plots.plot_summary(rows, run.summary_plot, title=run_name(run.root))
    written.append(run.summary_plot)
    atomic_write_text(run.results("csv"), render_csv(rows))
    atomic_write_json(run.results("json"), [_plain(r) for r in rows])
    atomic_write_text(
        run.results("md"), results_markdown(run.root, rows, summary_png=run.summary_plot.name)
    )
    written += [run.results("md"), run.results("csv"), run.results("json")]
    return written

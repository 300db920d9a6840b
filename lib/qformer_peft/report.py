"""The published report: every executed notebook as an HTML section, and reports/index.html on top.

    qformer-peft report [--runs DIR] [--notebooks DIR] [--out reports/]

index.html carries the summary, built from run folders only: the scale statement, the claim ledger,
Table 1, Figure 2 and the AdaLoRA heatmaps, what adapting costs on held-in VQA (when runs measured
it), the connector study (Q-Former, DeCo's pooling, projector, Bottleneck Adapter) and a section per
open question (multi-task AdaLoRA, scaling, rank sensitivity, seeds), each with its charts and
claims, then links to the notebook sections and the grid's failures.
This module computes the numbers (frames, claims, charts as inline SVG); the words and the markup are Jinja2
templates in report_templates/, rendered with autoescape (charts and pandas tables go in as Markup).
Everything is self-contained and offline: charts are inline SVG (vl-convert), sections come from
nbconvert's lab template with its CDN scripts (require.js, MathJax, mermaid) removed, and no page
loads a script or stylesheet from the network. Code cells are hidden in sections; a button shows them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jinja2 import DictLoader, Environment, FileSystemLoader
from markupsafe import Markup

from . import claim_ledger
from . import claims as claims_mod
from . import results, runs
from .readme_results import README_BLOCK, write_readme_results
from . import verdicts

TEMPLATES = Path(__file__).with_name("report_templates")


@functools.lru_cache(maxsize=None)
def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True)
    env.globals.update({k: getattr(verdicts, k) for k in ("VERDICTS", "HOLDS", "FAILS", "NOT_RESOLVABLE",
                                                            "NOT_COMPARABLE", "COMPARABLE_TOL", "CORRECTION")},
                       verdict_counts=results.counts, mark_positions=mark_positions)
    return env


def _render(template: str, **context: Any) -> Markup:
    return Markup(_env().get_template(template).render(**context))


def _macros() -> Any:
    return _env().get_template("macros.html.j2").module


# --- sections --------------------------------------------------------------------------------------------
def render_section(notebook: str | Path, out: str | Path) -> Path:
    """One executed notebook -> a self-contained HTML page (code hidden until asked for)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    # only this one template beside nbconvert's own, so none of the page's templates can shadow one of theirs
    section = DictLoader({"qfp_section.html.j2": (TEMPLATES / "section.html.j2").read_text(encoding="utf-8")})
    exporter = HTMLExporter(extra_loaders=[section], template_file="qfp_section.html.j2", embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook_title(nb, Path(notebook).stem)}})
    out = Path(out)
    runs.atomic_write(out, body)
    return out


def notebook_title(nb: Any, default: str) -> str:
    """The first markdown heading of a notebook."""
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("# ").strip()
    return default


# --- the summary ------------------------------------------------------------------------------------------
def _svg(make: Callable[[], Any], frame: Any = None) -> Markup | None:
    """A chart as inline SVG for a template's figure, or None (the template's empty line) when frame has no rows."""
    from .report_charts import to_svg

    return Markup(to_svg(make())) if frame is None or len(frame) else None


def _frame_html(frame: Any) -> Markup:
    return Markup(frame.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="–", border=0)
                  if len(frame) else "")


def mark_positions(rec: Mapping[str, Any]) -> dict[str, float | None] | None:
    """Where a claim's forest mark (120 px wide) draws its margin, estimate and 95% interval; None without an
    estimate or a margin."""
    est, (lo, hi), margin = rec.get("estimate"), rec.get("ci95") or [None, None], rec.get("margin")
    if est is None or margin is None:
        return None
    pts = [v for v in (est, lo, hi, margin) if v is not None]
    span = max(max(pts) - min(pts), 1e-9) * 1.2
    left = min(pts) - 0.1 * span
    x = lambda v: 4 + 112 * (v - left) / span  # noqa: E731
    both = lo is not None and hi is not None
    return {"margin": x(margin), "est": x(est), "lo": x(lo) if both else None, "hi": x(hi) if both else None}


def _record(c: Any) -> Mapping[str, Any]:
    return c if isinstance(c, Mapping) else c.record()


def ledger_html(claims: Sequence[Any], note: bool = True, runs_href: str = "") -> str:
    """The claim ledger (claims.json records or claims.Claim), one line per claim; note: the paragraph on how
    verdicts are reached."""
    return str(_macros().ledger([_record(c) for c in claims], note, runs_href))


def _scale(df: Any) -> dict[str, Any]:
    scale = claims_mod.scale_of(df)
    states = df["state"].fillna("not started").value_counts().to_dict() if len(df) else {}
    return {"name": scale, "statement": claims_mod.scale_statement(scale), "states": sorted(states.items())}


def scale_html(df: Any) -> str:
    """The scale the runs were measured at, stated plainly, and how many runs are in which state."""
    return str(_macros().scale(**_scale(df)))


def summary_html(runs_dir: str | Path, *, full_size: Any = None, cache_dir: str | Path | None = None,
                 results_dir: str | Path | None = None, root: str | Path | None = None) -> str:
    """The summary from run folders: scale, claim ledger, Table 1, Figure 2, AdaLoRA heatmaps and the sections
    after them. With results_dir, claims.json and table1.csv are written there first (run folders relative to
    root, default the folder above results_dir) and the ledger is read back from them."""
    from . import report_charts as rc

    df = rc.runs_frame(runs_dir)
    if df.empty:
        return str(_render("summary.html.j2", runs_missing=str(runs_dir)))
    all_ranks = rc.ranks_frame(df)
    ledger = claim_ledger.ledger(df, all_ranks, full_size, cache_dir)
    ranks = rc.ranks_frame(rc.paper_runs(df))
    records, href, table1_rows = [c.record() for c in ledger], "", None
    if results_dir is not None:
        root = Path(results_dir).parent if root is None else Path(root)
    pilot = results.rate_pilot(df, root)
    if results_dir is not None:
        results.write_results(ledger, results.table1_rows(df, root), results_dir, root, pilot)
        stored, rows = results.read_results(results_dir)
        records, table1_rows = stored["claims"], _frame_html(rows.drop(columns=["runs"]))
        href = os.path.relpath(root, results_dir).rstrip("/") + "/"
    own = pilot[pilot["profile_rate"]] if not pilot.empty else None
    t1 = rc.table1(df)
    heldin = rc.heldin_cost_table(df)
    return str(_render(
        "summary.html.j2", scale=_scale(df), records=records, runs_href=href, written=results_dir is not None,
        pilot=None if own is None else {"off": own[~own["chosen"]].to_dict("records"),
                                        "table": _frame_html(pilot.drop(columns=["run"]))},
        table1=Markup(rc.table1_html(t1)), table1_rows=table1_rows,
        charts={"figure2": _svg(lambda: rc.figure2(t1)) if not t1.empty and t1["trainable"].notna().any() else None,
                "heatmaps": _svg(lambda: rc.heatmap(rc.heatmap_values(rc.final_ranks(ranks))), ranks)},
        heldin=None if heldin.empty else _frame_html(heldin),
        cn=connectors_context(df, ledger), oq=open_questions_context(df, all_ranks, ledger)))


def open_questions_context(df: Any, ranks: Any, ledger: Sequence[claims_mod.Claim]) -> dict[str, Any]:
    """What open_questions.html.j2 shows: each question's charts (None: no runs), the seeds' table, the model
    sizes measured (ascending parameter count; empty below two sizes) and each question's claims."""
    from . import open_charts as oc
    from . import open_questions as oq
    from . import seed_variance as sv

    acc, diff, shares = oq.multitask_accuracy(df), oq.allocation_difference(ranks), oq.allocation_shares(ranks)
    data_f, model_f = oq.scaling_axes(oq.scaling_frame(df))   # one chart pair per axis: never mixed on one x
    gaps, model_gaps = oq.scaling_gaps(data_f), oq.scaling_gaps(model_f)
    rank_f, cells, pairs = oq.rank_frame(df), sv.seed_cells(df), sv.orderings(df)
    sizes = model_f["model_size"].nunique() if len(model_f) else 0
    models = list(model_f.drop_duplicates("model_size").sort_values("model_size")["model"]) if sizes > 1 else []
    model_charts = len(model_gaps) and sizes > 1
    return {
        "models": models, "cells": _frame_html(cells.drop(columns=["setup", "targets", "rank"], errors="ignore")),
        "claims": {q: [c.record() for c in ledger if oq.OPEN_CLAIMS.get(c.id, ("", ""))[1] == q]
                   for q in ("multitask", "scaling", "ranks", "seeds")},
        "charts": {
            "mt_tradeoff": _svg(lambda: oc.multitask_tradeoff(acc), acc),
            "mt_difference": _svg(lambda: oc.allocation_difference(diff), diff),
            "mt_shares": _svg(lambda: oc.sublayer_shares(shares), shares),
            "sc_accuracy": _svg(lambda: oc.scaling_accuracy(data_f), data_f),
            "sc_gap": _svg(lambda: oc.scaling_gap(gaps, data_f), gaps),
            "sc_model_accuracy": _svg(lambda: oc.scaling_accuracy(model_f)) if model_charts else None,
            "sc_model_gap": _svg(lambda: oc.scaling_gap(model_gaps, model_f)) if model_charts else None,
            "rk": _svg(lambda: oc.rank_sensitivity(rank_f), rank_f),
            "sd_spread": _svg(lambda: oc.seed_spread(cells, df[df["study"] == "paper"]), cells),
            "sd_orderings": _svg(lambda: oc.ordering_fractions(pairs), pairs)}}


def connectors_context(df: Any, ledger: Sequence[claims_mod.Claim]) -> dict[str, Any]:
    """What connectors.html.j2 shows of the connector study (notebook 30): whether it ran, what ran, its table,
    charts (None: no runs) and claims."""
    from . import connector_charts as cc
    from . import connector_study as cs

    if not len(df) or not cs.is_study_run(df).any():
        return {"run": False, "tag": cs.STUDY_TAG}
    frame = cs.connector_frame(df)
    study = df[cs.is_study_run(df)]
    done = study[study["state"] == "done"]
    conv, align = cs.convergence_frame(df), cs.alignment_frame(df)
    finished = bool(len(frame))
    return {
        "run": True, "study": len(study), "done": len(done), "finished": finished,
        "connectors": list(dict.fromkeys(frame["connector"])) if finished else [],
        "benchmarks": sorted(set(frame["benchmark"])) if finished else [],
        "llms": sorted(set(frame["llm"])) if finished else [],
        "seeds": sorted(set(frame["seed"])) if finished else [],
        "steps": sorted({int(s) for s in done["align_steps"].dropna()}) if "align_steps" in done else [],
        "table": _frame_html(_connector_table(cs.summary_table(frame))),
        "charts": {"tokens": _svg(lambda: cc.accuracy_vs_tokens(frame), frame[frame["acc"].notna()]),
                   "alignment": _svg(lambda: cc.alignment_chart(align), align),
                   "convergence": _svg(lambda: cc.convergence_chart(conv), conv),
                   "cost": _svg(lambda: cc.cost_chart(frame), frame[frame["samples_per_s"].notna()])},
        "claims": [c.record() for c in ledger if c.id in cs.CLAIMS]}


def _connector_table(t: Any) -> Any:
    """summary_table for the page: counts as integers, the held-in loss with its 3 digits."""
    import pandas as pd

    if not len(t):
        return t
    t = t.copy()
    for col in ("tokens", "trainable", "seeds"):
        t[col] = pd.to_numeric(t[col], errors="coerce").round().astype("Int64")
    t["align_loss"] = [f"{v:.3f}" if pd.notna(v) else "–" for v in t["align_loss"]]
    return t


def grid_status_html(notebooks_dir: Path, out: Path) -> str:
    """The grid's failed notebooks (with links to their logs from out/) and the cells an optional input was absent
    for (the paper scale's larger checkpoints), from notebooks_dir/grid.json."""
    f = notebooks_dir / "grid.json"
    if not f.exists():
        return ""
    cells = runs.read_json(f).get("cells", {})
    failed = [(k, str(v.get("error"))) for k, v in cells.items() if v.get("state") == "failed"]
    not_run = [(k, str(v.get("error"))) for k, v in cells.items() if v.get("state") == "not run"]
    return str(_macros().grid_status(failed, not_run, Path(os.path.relpath(notebooks_dir, out)).as_posix()))


def _notebooks(notebooks_dir: Path | None) -> list[Path]:
    """Executed notebooks to render: the last grid's cells when its manifest is there, else all."""
    if notebooks_dir is None or not notebooks_dir.exists():
        return []
    manifest = notebooks_dir / "grid.json"
    if manifest.exists():
        grid_json = runs.read_json(manifest)
        names = grid_json.get("order") or list(grid_json.get("cells", {}))
        return [notebooks_dir / f"{n}.ipynb" for n in names if (notebooks_dir / f"{n}.ipynb").exists()]
    return sorted(notebooks_dir.glob("*.ipynb"))


def build_report(runs_dir: str | Path, *, notebooks_dir: str | Path | None = None, out: str | Path = "reports",
                 title: str = "Q-Former PEFT study", full_size: Any = None, cache_dir: str | Path | None = None,
                 log=print) -> Path:
    """Render the sections and write out/index.html; returns its path.

    full_size: the full-size parameter ledger per LLM (None: computed, cached in cache_dir)."""
    import nbformat

    out = Path(out)
    sections_dir = out / "sections"
    sections_dir.mkdir(parents=True, exist_ok=True)
    for stale in sections_dir.glob("*.html"):
        stale.unlink()
    nb_dir = Path(notebooks_dir) if notebooks_dir else None
    links = []
    for nb_path in _notebooks(nb_dir):
        target = sections_dir / f"{nb_path.stem}.html"
        try:
            render_section(nb_path, target)
        except Exception as err:  # noqa: BLE001 - one unreadable notebook must not sink the report
            log(f"[report] could not render {nb_path}: {type(err).__name__}: {err}")
            continue
        links.append({"file": target.name, "stem": nb_path.stem,
                      "title": notebook_title(nbformat.read(str(nb_path), as_version=4), nb_path.stem),
                      "failed": (nb_dir / f"{nb_path.stem}.failed.json").exists()})
    page = _render("index.html.j2", title=title, runs_dir=str(runs_dir), links=links,
                   when=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   summary=Markup(summary_html(runs_dir, full_size=full_size, cache_dir=cache_dir, results_dir=out)),
                   grid_status=Markup(grid_status_html(nb_dir, out) if nb_dir else ""))
    index = out / "index.html"
    runs.atomic_write(index, page)
    return index


EXTERNAL_RESOURCE = re.compile(
    r"""<script[^>]*\bsrc\s*=\s*["']?\s*(https?:)?//|<link[^>]*\bhref\s*=\s*["']?\s*(https?:)?//"""
    r"""|@import\s+(url\()?\s*["']?\s*(https?:)?//|\bimport\s*\(\s*["'](https?:)?//|url\(\s*["']?(https?:)?//""",
    re.IGNORECASE)


def external_references(page: str) -> list[str]:
    """Scripts, stylesheets, modules or CSS urls a page would fetch from the network."""
    return [m.group(0) for m in EXTERNAL_RESOURCE.finditer(page)]


# --- command line ---------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="render run folders into reports/index.html",
                              description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="mini", help="whose runs: runs/<profile> under the study root (default mini)")
    p.add_argument("--root", default=".", help="study root (default: .)")
    p.add_argument("--runs", help="run folders (default: ROOT/runs/PROFILE)")
    p.add_argument("--notebooks", help="executed notebooks (default: ROOT/reports/notebooks)")
    p.add_argument("--out", help="report folder (default: ROOT/reports)")
    p.add_argument("--readme", metavar="FILE", help="only rewrite FILE's results block from the report folder's "
                   "claims.json, table1.csv and study_timings.json (no rendering)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from .grid_cells import Layout

    layout = Layout(Path(args.root).resolve())
    runs_dir = Path(args.runs) if args.runs else layout.runs(args.profile)
    nb_dir = Path(args.notebooks) if args.notebooks else layout.notebooks_out
    out = Path(args.out) if args.out else layout.reports
    if args.readme:
        if not (out / "claims.json").is_file():
            print(f"qformer-peft report: {out / 'claims.json'} not found: run the study (or `qformer-peft report`) "
                  f"first", file=sys.stderr)
            return 1
        if not write_readme_results(args.readme, out):
            print(f"qformer-peft report: {args.readme} has no results block: add the lines {README_BLOCK[0]} and "
                  f"{README_BLOCK[1]} where the summary goes", file=sys.stderr)
            return 1
        print(f"[report] {args.readme}: results block rewritten from {out}")
        return 0
    if not runs.iter_runs(runs_dir) and not _notebooks(nb_dir):
        print(f"qformer-peft report: nothing to report: no run folders in {runs_dir} and no executed notebooks "
              f"in {nb_dir}", file=sys.stderr)
        return 1
    # the full-size ledger's cache: the study root's cache/, or beside the report when only --runs/--out are given
    cache_dir = layout.root / "cache" if not (args.runs or args.out) or args.root != "." else out / ".cache"
    index = build_report(runs_dir, notebooks_dir=nb_dir, out=out, cache_dir=cache_dir,
                         title=f"Q-Former PEFT study ({runs_dir.name})")
    print(f"[report] {index}")
    return 0

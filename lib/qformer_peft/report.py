"""The published report: every executed notebook as an HTML section, and reports/index.html on top.

    qformer-peft report [--runs DIR] [--notebooks DIR] [--out reports/]

index.html carries the summary, built from run folders only: the scale statement, the claim ledger,
Table 1, Figure 2 and the AdaLoRA heatmaps, what adapting costs on held-in VQA (when runs measured
it), the connector study (Q-Former, DeCo's pooling, projector, Bottleneck Adapter) and a section per
open question (multi-task AdaLoRA, scaling, rank sensitivity, seeds), each with its charts and
claims, then links to the notebook sections and the grid's failures.
Everything is self-contained and offline: charts are inline SVG (vl-convert), sections come from
nbconvert's lab template with its CDN scripts (require.js, MathJax, mermaid) removed, and no page
loads a script or stylesheet from the network. Code cells are hidden in sections; a button shows them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import html
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import claim_ledger
from . import claims as claims_mod
from .paper import CLAIM_ROWS
from . import results, runs
from .verdicts import VERDICTS

# nbconvert's lab template minus every network reference, plus the code toggle and a link home.
SECTION_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{% block extra_css %}
<style type="text/css">
body:not(.show-code) .jp-CodeCell .jp-Cell-inputWrapper { display: none; }
.qfp-bar { position: sticky; top: 0; z-index: 10; background: #f6f8fa; border-bottom: 1px solid #ddd;
           padding: 6px 12px; font-family: sans-serif; font-size: 14px; }
.qfp-bar button { margin-left: 1em; }
</style>
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
<div class="qfp-bar"><a href="../index.html">&larr; report index</a>
<button type="button" onclick="document.body.classList.toggle('show-code');
 this.textContent = document.body.classList.contains('show-code') ? 'Hide code' : 'Show code';">Show code</button></div>
{%- endblock body_header -%}
"""

PAGE_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1300px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.scale { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6em 1em; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; }
th { background: #f3f3f3; }
td.holds { background: #e5f5e0; } td.does-not-hold { background: #fde0dd; } td.inconclusive { background: #f0f0f0; }
td.not-resolvable-at-this-scale { background: #fff3cd; } td.not-comparable-at-this-width { background: #eef; }
p.counts { font-size: 15px; }
.ledger td.evidence { font-size: 12px; max-width: 720px; }
figure.chart { margin: 1em 0; display: inline-block; } figure.chart figcaption { font-size: 13px; color: #555; }
.note, .empty { font-size: 13px; color: #555; }
.failed { color: #b00020; }
"""


# --- sections --------------------------------------------------------------------------------------------
def render_section(notebook: str | Path, out: str | Path) -> Path:
    """One executed notebook -> a self-contained HTML page (code hidden until asked for)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(extra_loaders=[DictLoader({"qfp_section.html.j2": SECTION_TEMPLATE})],
                            template_file="qfp_section.html.j2", embed_images=True)
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
def _figure(chart: Any, fid: str, caption: str) -> str:
    from .report_charts import to_svg

    return f"<figure class='chart' id='{fid}'>{to_svg(chart)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _mark(rec: Mapping[str, Any]) -> str:
    """A small forest-plot mark: the 95% interval and estimate against the claim's margin (dashed)."""
    est, (lo, hi), margin = rec.get("estimate"), rec.get("ci95") or [None, None], rec.get("margin")
    if est is None or margin is None:
        return ""
    pts = [v for v in (est, lo, hi, margin) if v is not None]
    span = max(max(pts) - min(pts), 1e-9) * 1.2
    left = min(pts) - 0.1 * span
    x = lambda v: 4 + 112 * (v - left) / span  # noqa: E731
    colour = {claims_mod.HOLDS: "#2a7d2a", claims_mod.FAILS: "#b22", claims_mod.NOT_RESOLVABLE: "#999"}.get(
        rec["verdict"], "#555")
    bar = (f"<line x1='{x(lo):.1f}' x2='{x(hi):.1f}' y1='8' y2='8' stroke='{colour}' stroke-width='2'/>"
           if lo is not None and hi is not None else "")
    return (f"<svg class='mark' width='120' height='16' role='img' aria-label='estimate {est:.2f}, 95% interval, margin {margin:g}'>"
            f"<line x1='{x(margin):.1f}' x2='{x(margin):.1f}' y1='1' y2='15' stroke='#333' stroke-dasharray='2,2'/>"
            f"{bar}<circle cx='{x(est):.1f}' cy='8' r='3' fill='{colour}'/></svg>")


def _record(c: Any) -> Mapping[str, Any]:
    return c if isinstance(c, Mapping) else c.record()


def ledger_counts_html(records: Sequence[Mapping[str, Any]]) -> str:
    """The ledger's header: how many claims got each answer, and what would resolve the unresolved ones."""
    n = results.counts(records)
    line = ", ".join(f"<b>{n[v]}</b> {v}" for v in VERDICTS)
    figures = n.get(claims_mod.NOT_COMPARABLE, 0)
    todo = [r for r in records if r["verdict"] == claims_mod.NOT_RESOLVABLE]
    hints = "".join(f"<li>{html.escape(r['id'])}: {html.escape(r.get('resolve') or 'runs that move from their base')}"
                    + (f" (here: {r['n_seeds']} seed(s) x {r['n_items']} test items, minimum detectable effect "
                       f"{r['mde']:.2f})" if r.get("mde") is not None and r.get("n_items") else "") + "</li>"
                    for r in todo)
    return (f"<p class='counts'>Claims: {line}" + (f"; plus {figures} parameter share(s) shown as figures, "
            f"{claims_mod.NOT_COMPARABLE}" if figures else "") + ".</p>"
            + (f"<details><summary>What would resolve the {len(todo)} unresolved claim(s)</summary><ul>{hints}</ul>"
               "</details>" if todo else ""))


def ledger_html(claims: Sequence[Any], note: bool = True, runs_href: str = "") -> str:
    """One line per claim (claims.json records or claims.Claim): verdict, estimate and 95% interval with a
    forest mark against its margin; the per-part evidence and the run folders folded away."""
    records = [_record(c) for c in claims]

    def row(r: Mapping[str, Any]) -> str:
        lo, hi = (r.get("ci95") or [None, None])
        est = r.get("estimate")
        value = (f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]" if est is not None and lo is not None and hi is not None
                 else f"{est:+.2f}" if est is not None else "–")
        mde = f"MDE {r['mde']:.2f}" if r.get("mde") is not None else ""
        folders = "".join(f"<li><a href='{html.escape(runs_href + p)}'>{html.escape(p)}</a></li>"
                          for p in r.get("runs", []))
        return (f"<tr><td>{r['id']}</td><td>{html.escape(r['statement'])}<br><small>{html.escape(r['source'])}; "
                f"{html.escape(r['scale'])}</small></td><td class='{r['verdict'].replace(' ', '-')}'>{r['verdict']}</td>"
                f"<td>{value}<br><small>{mde}{'; ' + html.escape(r['correction']) if r.get('correction') else ''}"
                f"</small></td><td>{_mark(r)}</td><td class='evidence'><details><summary>evidence</summary>"
                f"{html.escape(r['evidence'])}" + (f"<ul>{folders}</ul>" if folders else "") + "</details></td></tr>")

    return (ledger_counts_html(records) + "<table class='ledger'><thead><tr><th>claim</th><th>statement</th>"
            "<th>verdict</th><th>estimate [95% interval]</th><th>vs margin</th><th>evidence</th></tr></thead><tbody>"
            + "".join(row(r) for r in records) + "</tbody></table>" + (
            "<p class='note'>Each part of a claim is a statistic that is positive where the claim holds, with a 95% "
            "interval: accuracy from a paired hierarchical bootstrap over seeds and test items (predictions.jsonl), "
            "allocations from t intervals over seeds against null runs trained on shuffled answers. Above the "
            "margin: holds; below: does not hold; across it: inconclusive. A part whose cells did not move from "
            "their base (no setup beats the base's zero-shot score and chance on the same items) is not resolvable "
            f"at this scale. “Comparable” means at most {claims_mod.COMPARABLE_TOL:g} accuracy point below. A "
            f"composite claim does not hold when {claims_mod.CORRECTION}'s procedure rejects a part, and holds when "
            "every part holds. The estimate shown is the part nearest its margin; MDE: the effect detected with 80% "
            "power at this design. Configurations are chosen on validation accuracy and judged on test. Claims of "
            "the open questions (MT, SC, RK, SD) are hypotheses of this study; those of the connector study "
            "(DeCo-*, BA-*) come from the DeCo and Bottleneck Adapter papers.</p>" if note else ""))


def rate_pilot_html(pilot: Any) -> str:
    """The learning-rate pilot's table, and whether each rate the study used was the pilot's choice."""
    if pilot.empty:
        return ""
    own = pilot[pilot["profile_rate"]]
    off = own[~own["chosen"]]
    verdict = ("Every rate the study used was the pilot's choice." if off.empty else
               "Not the pilot's choice: " + "; ".join(f"{r.llm} {r.rate_class} ({r.learning_rate:g})"
                                                    for r in off.itertuples())
               + ". The study's runs keep the profile's rates; read the claims that use them with this in mind.")
    return ("<h2 id='rates'>Learning rates: the validation pilot</h2><p>The embedded models train at rates chosen "
            "for their scale (the paper's 2e-5 and 5e-4 move them little). The pilot trains the baseline and QF "
            "LoRA at a quarter and four times each rate, one seed, and compares validation accuracy (never test). "
            + html.escape(verdict) + "</p>" + _frame_html(pilot.drop(columns=["run"])))


def scale_html(df: Any) -> str:
    """The scale the runs were measured at, stated plainly, and how many runs are in which state."""
    scale = claims_mod.scale_of(df)
    states = df["state"].fillna("not started").value_counts().to_dict() if len(df) else {}
    return (f"<p class='scale'><b>Scale: {html.escape(scale)}.</b> {html.escape(claims_mod.scale_statement(scale))}</p>"
            "<p>Runs: " + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none") + "</p>")


def summary_html(runs_dir: str | Path, *, full_size: Any = None, cache_dir: str | Path | None = None,
                 results_dir: str | Path | None = None, root: str | Path | None = None) -> str:
    """The summary from run folders: scale, claim ledger, Table 1, Figure 2, AdaLoRA heatmaps. With
    results_dir, claims.json and table1.csv are written there first (run folders relative to root, default
    the folder above results_dir) and the ledger is read back from them."""
    from . import report_charts as rc

    df = rc.runs_frame(runs_dir)
    if df.empty:
        return f"<p class='empty'>No run folders in {html.escape(str(runs_dir))}.</p>"
    all_ranks = rc.ranks_frame(df)
    ledger = claim_ledger.ledger(df, all_ranks, full_size, cache_dir)
    ranks = rc.ranks_frame(rc.paper_runs(df))
    records, href = [c.record() for c in ledger], ""
    if results_dir is not None:
        root = Path(results_dir).parent if root is None else Path(root)
    pilot = results.rate_pilot(df, root)
    if results_dir is not None:
        results.write_results(ledger, results.table1_rows(df, root), results_dir, root, pilot)
        records = results.read_results(results_dir)[0]["claims"]
        href = os.path.relpath(root, results_dir).rstrip("/") + "/"
    parts = [scale_html(df), "<h2 id='claims'>Claim ledger</h2>", ledger_html(records, runs_href=href),
             "<p class='note'>Machine-readable: <a href='claims.json'>claims.json</a> (every claim's estimate, "
             "interval, parts and run folders) and <a href='table1.csv'>table1.csv</a>.</p>" if results_dir else ""]
    parts.append(rate_pilot_html(pilot))
    t1 = rc.table1(df)
    parts += ["<h2 id='table1'>Table 1: accuracy and trainable parameters of every cell</h2>", rc.table1_html(t1)]
    if results_dir is not None:
        rows = results.read_results(results_dir)[1].drop(columns=["runs"])
        parts.append("<details><summary>Per cell, from <a href='table1.csv'>table1.csv</a>: 95% interval, the base's "
                     "zero-shot score and chance on the same test items, whether the cell moved, whether validation "
                     "chose it</summary>" + _frame_html(rows) + "</details>")
    parts.append("<h2 id='figure2'>Figure 2: accuracy against trainable parameters</h2>")
    parts.append(_figure(rc.figure2(t1), "chart-figure2", "Mean test accuracy of each cell against its trainable "
                         "parameters (log scale), one line per sublayer/target set, colour = setup.")
                 if not t1.empty and t1["trainable"].notna().any() else
                 "<p class='empty'>No finished LoRA runs with parameter counts yet.</p>")
    parts.append("<h2 id='adalora'>AdaLoRA: where the rank goes</h2>")
    if ranks.empty:
        parts.append("<p class='empty'>No finished AdaLoRA runs yet.</p>")
    else:
        values = rc.heatmap_values(rc.final_ranks(ranks))
        parts.append(_figure(rc.heatmap(values), "chart-heatmaps", "Final AdaLoRA rank averaged over each "
                             "sublayer's modules per layer (and over seeds); cross-attention exists on odd layers "
                             "only. Benchmarks side by side, one row per LLM. The allocation is the one at the end "
                             "of training (the last epoch); the test scores are those of the best-validation "
                             "epoch's weights."))
    parts.append(heldin_cost_html(df))
    parts.append(connectors_html(df, ledger))
    parts.append(open_questions_html(df, all_ranks, ledger))
    return "\n".join(p for p in parts if p)


def _chart_or_empty(make: Any, frame: Any, fid: str, caption: str, empty: str) -> str:
    return _figure(make(), fid, caption) if len(frame) else f"<p class='empty'>{html.escape(empty)}</p>"


def _frame_html(frame: Any) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="–", border=0) if len(frame) else ""


def open_questions_html(df: Any, ranks: Any, ledger: Sequence[claims_mod.Claim]) -> str:
    """One section per open question: what was run, its charts, its claims."""
    from . import open_charts as oc
    from . import open_questions as oq

    def claims_of(q: str) -> str:
        return ledger_html([c for c in ledger if oq.OPEN_CLAIMS.get(c.id, ("", ""))[1] == q], note=False)

    acc, diff, shares = oq.multitask_accuracy(df), oq.allocation_difference(ranks), oq.allocation_shares(ranks)
    data_f, model_f = oq.scaling_axes(oq.scaling_frame(df))   # one chart pair per axis: never mixed on one x
    gaps, model_gaps = oq.scaling_gaps(data_f), oq.scaling_gaps(model_f)
    rank_f, cells, pairs = oq.rank_frame(df), oq.seed_cells(df), oq.orderings(df)
    none = ("no runs of this question in this study: mini's default leaves it out to keep its budget (./run_all.sh "
            "--extended adds it), or its notebook has not run")
    by_size = model_f.drop_duplicates("model_size").sort_values("model_size")["model"] if len(model_f) else []
    widths = ("Model width/depth: " + ("measured on " + ", ".join(by_size) + " (ascending parameter count), at "
                                       "the profile's own training-set size."
              if len(model_f) and model_f["model_size"].nunique() > 1 else
              "not measured at this scale. It needs base models of other sizes, each with its own staged build; "
              "they do not fit the mini profile's budget, so it is an opt-in: ./run_all.sh "
              "--model-scaling (or qformer-peft study --profile mini --model-scaling) builds T5 base models twice "
              "as deep and twice as wide on the same frozen encoder and adds their runs to this study. The paper "
              "profile runs the width/depth axis on the next InstructBLIP checkpoint of each LLM (Flan-T5-XXL, "
              "Vicuna-13B; same Q-Former)."))
    parts = [
        "<h2 id='oq-multitask'>Open question: one AdaLoRA budget over ScienceQA + IconQA</h2>",
        "<p>AdaLoRA on every Q-Former target with the same budget as a single-task run (initial rank 12, average "
        "target 8 over the same modules), trained on both tasks together (each with the profile's number of "
        "training items; validation picks the epoch by the mean accuracy over tasks), and tested on each task "
        "alone. Compared with the single-task AdaLoRA runs of the analysis above, seed by seed.</p>",
        _chart_or_empty(lambda: oc.multitask_tradeoff(acc), acc, "chart-mt-tradeoff",
                        "Test accuracy of each task trained alone and jointly (points: seeds; line: mean).", none),
        _chart_or_empty(lambda: oc.allocation_difference(diff), diff, "chart-mt-difference",
                        "Joint minus single-task final rank per layer and sublayer (seed means): red, the joint "
                        "budget gives that sublayer more rank.", "no joint and single-task AdaLoRA runs to compare"),
        _chart_or_empty(lambda: oc.sublayer_shares(shares), shares, "chart-mt-shares",
                        "Each sublayer's share of the final total rank (bars: mean; points: seeds).", none),
        claims_of("multitask"),
        "<h2 id='oq-scaling'>Open question: does the gap between Q-Former LoRA and full fine-tuning change "
        "with scale?</h2>",
        f"<p>Baseline (full Q-Former fine-tuning) and Q-Former LoRA on all sublayers at the grid's largest rank, "
        f"trained on fewer items than the profile's own (same epochs, so fewer steps), same validation and test "
        f"sets. {html.escape(widths)}</p>",
        _chart_or_empty(lambda: oc.scaling_accuracy(data_f), data_f, "chart-sc-accuracy",
                        "Test accuracy against the training-set size (points: seeds; line: mean).", none),
        _chart_or_empty(lambda: oc.scaling_gap(gaps, data_f), gaps, "chart-sc-gap",
                        "The gap QF LoRA − baseline (mean ± sd over seeds); above zero, LoRA is ahead.", none),
        *([_figure(oc.scaling_accuracy(model_f), "chart-sc-model-accuracy",
                   "Test accuracy against the model, by ascending parameter count (points: seeds; line: mean)."),
           _figure(oc.scaling_gap(model_gaps, model_f), "chart-sc-model-gap",
                   "The gap QF LoRA − baseline per model (mean ± sd over seeds); above zero, LoRA is ahead.")]
          if len(model_gaps) and model_f["model_size"].nunique() > 1 else []),
        claims_of("scaling"),
        "<h2 id='oq-ranks'>Open question: rank sensitivity past the paper's grid</h2>",
        "<p>The paper's ranks come from its grid (r ≤ 8); r = 16 and 32 are trained here, for Q-Former LoRA and "
        "Q-Former LoRA + LLM LoRA on all targets, with the same seeds.</p>",
        _chart_or_empty(lambda: oc.rank_sensitivity(rank_f), rank_f, "chart-rk",
                        "Test accuracy against the rank (log 2; points: seeds; line: mean).", none),
        claims_of("ranks"),
        "<h2 id='oq-seeds'>Open question: do Table 1's orderings survive other seeds?</h2>",
        "<p>The paper reports single runs. Every Table-1 cell run with several seeds: its mean and spread, and, "
        "for every pair of such cells, how often the seeds agree with the order the single run (the first seed, "
        "42) shows. Verdicts judge the order on the other seeds, paired.</p>",
        _frame_html(cells.drop(columns=["setup", "targets", "rank"], errors="ignore")),
        _chart_or_empty(lambda: oc.seed_spread(cells, df[df["study"] == "paper"]), cells, "chart-sd-spread",
                        "Each multi-seed cell: every seed (points), mean (tick) ± sd (bar).",
                        "no cell with several seeds"),
        _chart_or_empty(lambda: oc.ordering_fractions(pairs), pairs, "chart-sd-orderings",
                        "Share of seed pairs agreeing with the single run's order, for every pair of multi-seed "
                        "cells (row: the cell the single run put above).", "no two cells with several seeds"),
        claims_of("seeds"),
    ]
    return "\n".join(p for p in parts if p)


def connectors_html(df: Any, ledger: Sequence[claims_mod.Claim]) -> str:
    """The connector study (notebook 30): what was run, its charts, its claims; a plain line when
    this profile did not run it."""
    from . import connector_study as cs

    head = "<h2 id='connectors'>Connectors: Q-Former, DeCo's pooling, projector, Bottleneck Adapter</h2>"
    if not len(df) or not cs.is_study_run(df).any():
        return head + "<p class='empty'>Connector study: not run in this study (no run tagged " \
                      f"{html.escape(cs.STUDY_TAG)} in the runs folder; mini's default leaves it out to keep its " \
                      "budget: ./run_all.sh --extended adds it).</p>"
    frame = cs.connector_frame(df)
    study = df[cs.is_study_run(df)]
    done = study[study["state"] == "done"]
    steps = sorted({int(s) for s in done["align_steps"].dropna()}) if "align_steps" in done else []
    what = (f"{len(done)} of {len(study)} study runs done: " + ", ".join(dict.fromkeys(frame["connector"])) +
            f" on {', '.join(sorted(set(frame['benchmark'])))} with {', '.join(sorted(set(frame['llm'])))}, "
            f"seeds {', '.join(str(s) for s in sorted(set(frame['seed'])))}" +
            (f", after {', '.join(map(str, steps))} alignment steps on the held-in tasks" if steps else "") + "."
            if len(frame) else f"{len(study)} study runs, none finished yet.")
    none = "no finished runs of the connector study"
    conv, align = cs.convergence_frame(df), cs.alignment_frame(df)
    ids = set(cs.CLAIMS)
    parts = [
        head,
        "<p>The same frozen ViT and LLM joined by each connector: every connector aligned on the held-in tasks for "
        "the same number of steps (the study's Q-Former starts from scratch like the others; the base model's "
        "pretrained Q-Former is a reference row), then fine-tuned on the benchmark with the paper's baseline setup "
        f"(connector trained, LLM frozen). {html.escape(what)}</p>",
        _frame_html(_connector_table(cs.summary_table(frame))),
        _chart_or_empty(lambda: cs.accuracy_vs_tokens(frame), frame[frame["acc"].notna()], "chart-cn-tokens",
                        "Test accuracy against the image tokens fed to the LLM (points: seeds; tick: mean; grey: "
                        "one connector kind's budgets; dashed: a uniform guess).", none),
        _chart_or_empty(lambda: cs.alignment_chart(align), align, "chart-cn-alignment",
                        "Held-in validation loss along the shared alignment budget (mean over seeds).",
                        "no alignment curves"),
        _chart_or_empty(lambda: cs.convergence_chart(conv), conv, "chart-cn-convergence",
                        "Validation accuracy against the fine-tuning step (mean over seeds).", none),
        _chart_or_empty(lambda: cs.cost_chart(frame), frame[frame["samples_per_s"].notna()], "chart-cn-cost",
                        "Training samples per second (cached ViT features) against the image tokens.",
                        "no training throughput recorded"),
        ledger_html([c for c in ledger if c.id in ids], note=False),
    ]
    return "\n".join(p for p in parts if p)


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


def heldin_cost_html(df: Any) -> str:
    """What adapting costs on held-in VQA, per setup: only when some run measured it (heldin_limit)."""
    from . import report_charts as rc

    t = rc.heldin_cost_table(df)
    if t.empty:
        return ""
    return ("<h2 id='heldin-cost'>What adapting costs on held-in VQA</h2>"
            "<p>Held-in validation VQA exact match (%) after training, mean over the runs that measured it "
            "(config heldin_limit: the first N held-in val task lines, 2 of every 3 are VQA; the grid measures it "
            "on each cell's first seed): the adapted model, "
            "and the same model with its LoRA switched off (what every setup trains besides LoRA stays adapted; "
            "a setup without LoRA has no such figure). base: the base model's own figure from its build report "
            "(build_report.json, measured on the build's own number of held-in lines).</p>" + _frame_html(t))


def grid_status_html(notebooks_dir: Path, out: Path) -> str:
    f = notebooks_dir / "grid.json"
    if not f.exists():
        return ""
    cells = runs.read_json(f).get("cells", {})
    failed = {k: v for k, v in cells.items() if v.get("state") == "failed"}
    # cells an optional input was absent for (the paper scale's larger checkpoints): their reason, no log
    not_run = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v.get('error')))}</li>"
                      for k, v in cells.items() if v.get("state") == "not run")
    not_run = f"<h2>Not run</h2><ul>{not_run}</ul>" if not_run else ""
    if not failed:
        return not_run
    rel = Path(os.path.relpath(notebooks_dir, out)).as_posix()
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v.get('error')))} "
                    f"(<a href='{html.escape(rel)}/{html.escape(k)}.log'>log</a>)</li>" for k, v in failed.items())
    return f"<h2 class='failed'>Failed notebooks ({len(failed)})</h2><ul class='failed'>{items}</ul>" + not_run


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
        failed = (nb_dir / f"{nb_path.stem}.failed.json").exists()
        name = notebook_title(nbformat.read(str(nb_path), as_version=4), nb_path.stem)
        links.append(f"<li><a href='sections/{target.name}'>{html.escape(nb_path.stem)}</a> — {html.escape(name)}"
                     + (" <span class='failed'>(failed)</span>" if failed else "") + "</li>")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='note'>Generated {when} from {html.escape(str(runs_dir))}.</p>"
            + summary_html(runs_dir, full_size=full_size, cache_dir=cache_dir, results_dir=out)
            + (grid_status_html(nb_dir, out) if nb_dir else "")
            + "<h2 id='sections'>Notebooks</h2>"
            + (f"<ul>{''.join(links)}</ul>" if links else "<p class='empty'>No executed notebooks.</p>")
            + "</body></html>")
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


# --- the README's summary, from the files a study writes -------------------------------------------------
README_BLOCK = ("<!-- results: begin -->", "<!-- results: end -->")


def results_markdown(reports_dir: str | Path) -> str:
    """A short Markdown summary of a study from reports/claims.json, reports/table1.csv and
    reports/study_timings.json: verdict counts, the claim rows of Table 1 (accuracy, 95% interval, the base's
    zero-shot score, moved or not), the learning-rate pilot's choice, and the study's time."""
    import pandas as pd

    reports_dir = Path(reports_dir)
    data, table = results.read_results(reports_dir)
    counts = data["counts"]
    decided = [k for k in (claims_mod.HOLDS, claims_mod.FAILS) if counts.get(k)]
    lines = ["Verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + "."
             + "".join(f" {k.capitalize()}: " + ", ".join(c["id"] for c in data["claims"] if c["verdict"] == k) + "."
                       for k in decided)]
    rows = table[table["setup"].isin([r[0] for r in CLAIM_ROWS]) & (table["n_seeds"] > 1)]
    if not rows.empty:
        lines += ["", f"Claim rows, {rows['n_seeds'].min()}+ seeds × {rows['n_test_items'].min()}+ test items each "
                  "(test accuracy, 95% CI; the base's zero-shot score on the same items; moved beyond it and chance):",
                  "", "| LLM | benchmark | setup | accuracy [95% CI] | zero-shot | moved |", "|---|---|---|---|---|---|"]
        for r in rows.itertuples():
            moved = {True: "yes", False: "no"}.get(r.moved, "–") if not pd.isna(r.moved) else "–"
            zs = "–" if pd.isna(r.zero_shot) else f"{r.zero_shot:.1f}"
            lines.append(f"| {r.llm} | {r.benchmark} | {r.setup} | "
                         f"{r.acc_mean:.1f} [{r.acc_ci95_lo:.1f}, {r.acc_ci95_hi:.1f}] | {zs} | {moved} |")
    pilot = pd.DataFrame(data.get("rate_pilot") or [])
    if not pilot.empty:
        own = pilot[pilot["profile_rate"]]
        lines += ["", "Learning-rate pilot (validation): " + "; ".join(
            f"{r.llm} {r.rate_class} {r.learning_rate:g} " + ("chosen" if r.chosen else "not chosen")
            for r in own.itertuples()) + "."]
    timings = reports_dir / "study_timings.json"
    if timings.is_file():
        t = runs.read_json(timings)
        lines += ["", f"Study time: {t['total_s'] / 60:.1f} min ("
                  + ", ".join(f"{k} {v / 60:.1f}" for k, v in t["stages_s"].items()) + f" min), {t['jobs']} workers."]
    return "\n".join(lines) + "\n"


def write_readme_results(readme: str | Path, reports_dir: str | Path) -> bool:
    """Replace the README's results block (README_BLOCK markers) with results_markdown; False when the README
    has no such block."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    begin, end = README_BLOCK
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    runs.atomic_write(readme, f"{head}{begin}\n{results_markdown(reports_dir)}{end}{tail}")
    return True


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

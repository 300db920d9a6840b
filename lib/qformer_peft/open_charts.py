"""Altair charts of the open questions (the frames of open_questions.py and seed_variance.py), shared by
notebooks 40-43 and the report.

Like report_charts, every chart renders offline (report_charts.enable_offline / to_svg).
"""
from __future__ import annotations

import altair as alt
import pandas as pd

from .report_charts import LLM_LABELS, SETUP_LABELS, SUBLAYER_LABELS, SUBLAYERS
from .seed_variance import cell_label

TASK_ORDER = ["scienceqa", "iconqa", "joint"]


def _llm(d: pd.DataFrame) -> pd.DataFrame:
    return d.assign(llm_label=d["llm"].map(lambda x: LLM_LABELS.get(x, x)))


# --- multi-task AdaLoRA ---------------------------------------------------------------------------------
def multitask_tradeoff(acc: pd.DataFrame) -> alt.FacetChart:
    """Each task's test accuracy trained alone and jointly: every seed (points) and the mean (line)."""
    d = _llm(acc)
    base = alt.Chart(d).encode(x=alt.X("mode:N", sort=["alone", "joint"], title=None, axis=alt.Axis(labelAngle=0)))
    points = base.mark_point(filled=True, opacity=0.6).encode(
        y=alt.Y("acc:Q", title="test accuracy %", scale=alt.Scale(zero=False)), color=alt.Color("seed:N"))
    mean = base.mark_line(color="black").encode(y="mean(acc):Q")
    return (alt.layer(points, mean, data=d).properties(width=140, height=180)
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("task:N", title=None)))


def allocation_difference(diff: pd.DataFrame) -> alt.FacetChart:
    """Joint minus single-task AdaLoRA heatmap (seed-mean rank), layers x sublayers; red: more rank jointly."""
    d = _llm(diff).assign(sublayer_label=diff["sublayer"].map(SUBLAYER_LABELS))
    order = [SUBLAYER_LABELS[s] for s in SUBLAYERS]
    lim = max(1e-9, float(d["diff"].abs().max())) if len(d) else 1.0
    base = alt.Chart(d).encode(x=alt.X("sublayer_label:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
                               y=alt.Y("layer:O", title="layer"))
    rect = base.mark_rect().encode(color=alt.Color("diff:Q", title="rank difference",
                                                   scale=alt.Scale(scheme="redblue", reverse=True, domain=[-lim, lim])))
    text = base.mark_text(fontSize=9).encode(text=alt.Text("diff:Q", format="+.1f"))
    return (alt.layer(rect, text, data=d).properties(width=150, height=16 * max(1, d["layer"].nunique()))
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("versus:N", title=None)))


def sublayer_shares(shares: pd.DataFrame) -> alt.FacetChart:
    """Each sublayer's share of the final total rank: ScienceQA alone, IconQA alone, joint (mean bar, seeds
    as points)."""
    d = _llm(shares).assign(sublayer_label=shares["sublayer"].map(SUBLAYER_LABELS))
    order = [SUBLAYER_LABELS[s] for s in SUBLAYERS]
    base = alt.Chart(d).encode(x=alt.X("sublayer_label:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
                               xOffset=alt.XOffset("benchmark:N", sort=TASK_ORDER),
                               color=alt.Color("benchmark:N", sort=TASK_ORDER, title="trained on"))
    bars = base.mark_bar(opacity=0.7).encode(y=alt.Y("mean(share):Q", title="share of the total rank",
                                                      axis=alt.Axis(format="%")))
    points = base.mark_point(color="black", size=12).encode(y="share:Q")
    return (alt.layer(bars, points, data=d).properties(width=260, height=180)
            .facet(row=alt.Row("llm_label:N", title=None)))


# --- scaling -----------------------------------------------------------------------------------------------
def _axis(frame: pd.DataFrame) -> tuple[str, alt.X]:
    """Model size when the frame has several, else training-set size (log)."""
    if frame["model_size"].nunique() > 1:
        return "model", alt.X("model:N", title="model", sort=alt.SortField("model_size"))
    sizes = sorted(frame["train_n"].dropna().unique().tolist())
    return "train_n", alt.X("train_n:Q", title="training items (log)", scale=alt.Scale(type="log", nice=False),
                            axis=alt.Axis(values=sizes))


def scaling_accuracy(frame: pd.DataFrame) -> alt.FacetChart:
    """Baseline and QF LoRA test accuracy against training-set (or model) size: seeds and their mean."""
    d = _llm(frame).assign(setup_label=frame["setup"].map(SETUP_LABELS))
    _, x = _axis(frame)
    base = alt.Chart(d).encode(x=x, color=alt.Color("setup_label:N", title="setup"))
    points = base.mark_point(opacity=0.5).encode(y=alt.Y("acc:Q", title="test accuracy %", scale=alt.Scale(zero=False)))
    mean = base.mark_line(point=True).encode(y="mean(acc):Q")
    return (alt.layer(points, mean, data=d).properties(width=260, height=180)
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("benchmark:N", title=None)))


def scaling_gap(gaps: pd.DataFrame, frame: pd.DataFrame) -> alt.FacetChart:
    """The gap acc(QF LoRA) − acc(baseline): mean ± sd over seeds, zero marked."""
    d = _llm(gaps)
    _, x = _axis(frame)
    base = alt.Chart(d).encode(x=x)
    band = base.mark_errorbar(extent="stdev").encode(y=alt.Y("gap:Q", title="QF LoRA − baseline (points)"))
    mean = base.mark_line(point=True).encode(y="mean(gap):Q")
    zero = alt.Chart(d).mark_rule(strokeDash=[4, 3], color="gray").encode(y=alt.datum(0))
    return (alt.layer(band, mean, zero, data=d).properties(width=260, height=180)
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("benchmark:N", title=None)))


# --- ranks -------------------------------------------------------------------------------------------------
def rank_sensitivity(frame: pd.DataFrame) -> alt.FacetChart:
    """Test accuracy against the rank (log 2) for both rank rows; seeds as points, mean as line; the
    extra ranks (16, 32) are the points right of the paper's grid."""
    d = _llm(frame).assign(setup_label=frame["setup"].map(SETUP_LABELS))
    ranks = sorted(d["rank"].unique().tolist())
    base = alt.Chart(d).encode(x=alt.X("rank:Q", title="LoRA rank (log 2)", scale=alt.Scale(type="log", base=2),
                                       axis=alt.Axis(values=ranks)),
                               color=alt.Color("setup_label:N", title="setup"))
    points = base.mark_point(opacity=0.5).encode(y=alt.Y("acc:Q", title="test accuracy %", scale=alt.Scale(zero=False)))
    mean = base.mark_line(point=True).encode(y="mean(acc):Q")
    return (alt.layer(points, mean, data=d).properties(width=260, height=180)
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("benchmark:N", title=None)))


# --- seeds -------------------------------------------------------------------------------------------------
def seed_spread(cells: pd.DataFrame, runs: pd.DataFrame) -> alt.FacetChart:
    """Every multi-seed Table-1 cell (seed_variance.seed_cells) from its runs: each seed's accuracy
    (points, coloured by seed: the first is the single run), mean (tick) ± sd (bar)."""
    keys = ["llm", "benchmark", "setup", "targets", "rank"]
    r = runs.assign(rank=runs["rank"].astype("Float64"))
    r = r.merge(cells[keys + ["cell"]].assign(rank=cells["rank"].astype("Float64")), on=keys)
    r = _llm(r)
    order = [cell_label(s, t, k) for s, t, k in cells[["setup", "targets", "rank"]].drop_duplicates().values]
    x = alt.X("cell:N", sort=order, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=260))
    base = alt.Chart(r).encode(x=x)
    y = alt.Y("acc:Q", title="test accuracy %", scale=alt.Scale(zero=False))
    bar = base.mark_errorbar(extent="stdev").encode(y=y)
    mean = base.mark_tick(color="black", thickness=2).encode(y="mean(acc):Q")
    points = base.mark_point(filled=True, opacity=0.6).encode(y="acc:Q", color=alt.Color("seed:N"))
    return (alt.layer(bar, mean, points, data=r).properties(width=22 * max(1, len(order)), height=200)
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("benchmark:N", title=None)))


def ordering_fractions(pairs: pd.DataFrame) -> alt.FacetChart:
    """For every pair of multi-seed cells: the share of seed pairs that agree with the single run's order
    (row = the cell the single run put higher). 100%: the order never flips; 50%: a coin toss."""
    d = _llm(pairs)
    base = alt.Chart(d).encode(x=alt.X("lower:N", title="single run: below"),
                               y=alt.Y("higher:N", title="single run: above"))
    rect = base.mark_rect().encode(color=alt.Color("fraction:Q", title="seed pairs agreeing",
                                                   scale=alt.Scale(domain=[0.5, 1], scheme="greens", clamp=True)))
    text = base.mark_text(fontSize=9).encode(text=alt.Text("fraction:Q", format=".0%"))
    n = max(1, d["higher"].nunique())
    return (alt.layer(rect, text, data=d).properties(width=40 * max(1, d["lower"].nunique()), height=20 * n)
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("benchmark:N", title=None)))

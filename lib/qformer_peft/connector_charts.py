"""Altair charts of the connector study (connector_study.py's frames), shared by notebook 30 and the report.

Like report_charts, every chart renders offline (report_charts.enable_offline / to_svg).
"""
from __future__ import annotations

import altair as alt
import pandas as pd

TOKENS_AXIS = alt.X("tokens:Q", title="image tokens fed to the LLM (log scale)", scale=alt.Scale(type="log", base=2),
                    axis=alt.Axis(values=[1, 2, 4, 8, 16, 32, 64, 128, 256]))


def accuracy_vs_tokens(frame: pd.DataFrame) -> alt.FacetChart:
    """Test accuracy against the image tokens fed to the LLM: every seed (points), the mean over seeds (a tick),
    each connector kind's budgets joined by a line, and a uniform guess (dashed)."""
    d = frame[frame["acc"].notna()]
    base = alt.Chart(d).encode(x=TOKENS_AXIS)
    layer = (base.mark_point(filled=True, opacity=0.5).encode(
                 y=alt.Y("acc:Q", title="test accuracy (%)", scale=alt.Scale(zero=False)),
                 color=alt.Color("connector:N"), tooltip=["connector", "seed", "acc"])
             + base.mark_tick(thickness=2, size=14, orient="horizontal").encode(y="mean(acc):Q", color="connector:N")
             + base.mark_line(opacity=0.4).encode(y="mean(acc):Q", detail="kind:N", color=alt.value("gray"))
             + alt.Chart(d).mark_rule(strokeDash=[4, 3], color="gray").encode(y="mean(chance):Q"))
    return layer.properties(width=260, height=180).facet(column=alt.Column("benchmark:N", title=None),
                                                         row=alt.Row("llm:N", title=None))


def convergence_chart(conv: pd.DataFrame) -> alt.FacetChart:
    """Validation accuracy against the optimizer step, mean over seeds, one line per connector."""
    return (alt.Chart(conv).mark_line(point=True).encode(
        x=alt.X("step:Q", title="optimizer step (fine-tuning)"),
        y=alt.Y("mean(val_score):Q", title="validation accuracy (%)", scale=alt.Scale(zero=False)),
        color=alt.Color("connector:N")).properties(width=260, height=180)
        .facet(column=alt.Column("benchmark:N", title=None), row=alt.Row("llm:N", title=None)))


def alignment_chart(al: pd.DataFrame) -> alt.FacetChart:
    """Held-in validation loss against the alignment step, mean over seeds, one line per connector."""
    return (alt.Chart(al).mark_line(point=True).encode(
        x=alt.X("step:Q", title="alignment step (held-in tasks)"),
        y=alt.Y("mean(val_loss):Q", title="held-in validation loss", scale=alt.Scale(zero=False)),
        color=alt.Color("connector:N")).properties(width=300, height=200)
        .facet(column=alt.Column("llm:N", title=None)))


def cost_chart(frame: pd.DataFrame) -> alt.FacetChart:
    """Training throughput (samples/s, cached ViT features) against the image tokens, per connector."""
    d = frame[frame["samples_per_s"].notna()]
    return (alt.Chart(d).mark_point(filled=True, size=60).encode(
        x=TOKENS_AXIS, y=alt.Y("mean(samples_per_s):Q", title="training samples / s"),
        color=alt.Color("connector:N"), tooltip=["connector", "mean(samples_per_s)"]).properties(width=260, height=180)
        .facet(column=alt.Column("benchmark:N", title=None), row=alt.Row("llm:N", title=None)))

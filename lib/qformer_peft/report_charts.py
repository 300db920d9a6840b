"""Tidy tables and Altair charts built from run folders only: Table 1, Figure 2, AdaLoRA heatmaps.

The notebooks and the HTML report call the same functions, so what a notebook shows is what the report
shows. Charts render offline: `enable_offline()` makes notebook outputs inline SVG (vl-convert, no CDN),
and `to_svg(chart)` gives the SVG text the report embeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import altair as alt
import numpy as np
import pandas as pd

from . import runs
from .config import SETUPS

SUBLAYERS = ("self_attn", "cross_attn", "ffn")
SUBLAYER_LABELS = {"self_attn": "self-attention", "cross_attn": "cross-attention", "ffn": "FFN"}
SETUP_LABELS = {"baseline": "baseline (QF full FT)", "qf-fft+llm-lora": "QF full FT + LLM LoRA",
                "qf-lora": "QF LoRA", "qf-lora+llm-lora": "QF LoRA + LLM LoRA"}
LLM_LABELS = {"t5": "T5-style (Flan-T5)", "llama": "LLaMA-style (Vicuna)"}
# result.json as the engine writes it: test accuracy in percent under test.accuracy (test_score is the
# benchmark's primary metric: accuracy, vqa_acc or cider), trainable parameters by group.
ACC_COLUMNS = ("result.test.accuracy", "result.test_acc")
TRAINABLE_PREFIX = "result.trainable_params."
CELL_KEYS = ["llm", "benchmark", "setup", "qf_sublayers", "llm_targets", "rank"]
# result.json's heldin_vqa_em (engine.heldin_cost) -> runs_frame's columns
HELDIN_COLUMNS = {"result.heldin_vqa_em.adapted": "heldin_adapted",
                  "result.heldin_vqa_em.adapter_off": "heldin_adapter_off"}


# --- run folders -> frames ------------------------------------------------------------------------------
def runs_frame(runs_dir: str | Path, configs: Iterable[Any] | None = None) -> pd.DataFrame:
    """load_runs plus derived columns: acc (test accuracy %), score (the benchmark's primary test
    metric), trainable (sum over groups), targets, scale, profile, study ('paper' for the paper's grid,
    else the open question or side study its tag study:<name> names), config_hash, heldin_adapted and
    heldin_adapter_off (held-in VQA exact match after training, with the LoRA switched off: runs with
    heldin_limit > 0; NaN elsewhere).

    With configs (ExperimentConfig objects), only the runs of those configs, in their order.
    """
    df = runs.load_runs(runs_dir)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "path", "state", "config_hash", *CELL_KEYS, "seed", "acc",
                                     "trainable", "targets", "scale", "profile", "study", "method",
                                     *HELDIN_COLUMNS.values()])
    df["config_hash"] = [runs.config_hash(runs.read_json(Path(p) / "config.json")) for p in df["path"]]
    found = [c for c in ACC_COLUMNS if c in df]
    df["acc"] = pd.to_numeric(df[found[0]], errors="coerce") if found else np.nan
    df["score"] = pd.to_numeric(df["result.test_score"], errors="coerce") if "result.test_score" in df else df["acc"]
    groups = [c for c in df.columns if c.startswith(TRAINABLE_PREFIX)]
    df["trainable"] = df[groups].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=1) if groups else np.nan
    df["targets"] = [targets_label(r.setup, r.qf_sublayers, r.llm_targets) for r in df.itertuples()]
    tags = df["tags"] if "tags" in df else [[]] * len(df)
    df["scale"] = [tag_value(t, "scale") or _guess_scale(m) for t, m in zip(tags, df["model"])]
    df["profile"] = [tag_value(t, "profile") for t in tags]
    df["study"] = [tag_value(t, "study") or "paper" for t in tags]
    df["null"] = df["shuffle_answers"].fillna(False).astype(bool) if "shuffle_answers" in df else False
    for key, col in HELDIN_COLUMNS.items():
        df[col] = pd.to_numeric(df[key], errors="coerce") if key in df else np.nan
    if configs is not None:
        order = {c.hash: i for i, c in enumerate(configs)}
        df = df[df["config_hash"].isin(order)].copy()
        df["_order"] = df["config_hash"].map(order)
        df = df.sort_values("_order").drop(columns="_order")
    return df.reset_index(drop=True)


def heldin_cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """What adapting costs on held-in VQA, per llm x study x setup x method (mean over the finished runs that
    measured it): runs, heldin_limit (lines scored), adapted, adapter_off (NaN: no LoRA to switch off) and base
    (the base checkpoint's held-in VQA exact match from its build report, where readable). Empty when no run
    has the measurement."""
    cols = ["llm", "study", "setup", "method", "runs", "heldin_limit", "adapted", "adapter_off", "base"]
    if df.empty or "heldin_adapted" not in df or df["heldin_adapted"].isna().all():
        return pd.DataFrame(columns=cols)
    d = df[(df["state"] == "done") & df["heldin_adapted"].notna()].copy()
    d["heldin_limit"] = d["heldin_limit"] if "heldin_limit" in d else np.nan
    d["base"] = d["model"].map({m: base_heldin_vqa(m) for m in d["model"].unique()})  # one report per base
    t = d.groupby(["llm", "study", "setup", "method"], sort=False, dropna=False).agg(
        runs=("run_id", "nunique"), heldin_limit=("heldin_limit", "max"), adapted=("heldin_adapted", "mean"),
        adapter_off=("heldin_adapter_off", "mean"), base=("base", "mean")).reset_index()
    t["heldin_limit"] = t["heldin_limit"].astype("Int64")
    t["_s"] = t["setup"].map({s: i for i, s in enumerate(SETUPS)})
    return t.sort_values(["llm", "study", "_s", "method"]).drop(columns="_s").reset_index(drop=True)[cols]


def base_heldin_vqa(model: Any) -> float:
    """Held-in val VQA exact match of a base checkpoint directory, from its build_report.json
    (quality.heldin.vqa_em); NaN for a preset, a hub id or an unreadable report."""
    path = Path(str(model)) / "build_report.json" if isinstance(model, str) and model else None
    if path is None or not path.is_file():
        return np.nan
    try:
        v = runs.read_json(path).get("quality", {}).get("heldin", {}).get("vqa_em")
    except (OSError, ValueError, AttributeError):
        return np.nan
    return float(v) if isinstance(v, (int, float)) else np.nan


def targets_label(setup: str, qf: str | None, llm: str | None) -> str:
    parts = [f"QF {qf}" if _present(qf) else None, f"LLM {llm}" if _present(llm) else None]
    return " + ".join(p for p in parts if p) or "full Q-Former"


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v))


def paper_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs of the paper's grid (Table 1, Figure 2, the AdaLoRA analysis, the paper's claims): not
    those an open question or side study trained under its own study:<name> tag, null runs, nor those a
    finished rerun at a lowered rate replaces (runs.counted)."""
    df = runs.counted(df)
    keep = df["study"] == "paper" if "study" in df else pd.Series(True, index=df.index)
    return df[keep & ~df["null"].astype(bool)] if "null" in df else df[keep]


def null_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The null runs (config.shuffle_answers): the allocation claims' reference."""
    return df[df["null"].astype(bool)] if "null" in df else df.iloc[:0]


def tag_value(tags: Any, key: str) -> str | None:
    """The value of the first tag 'key:value' in a run's tags, or None."""
    for t in tags if isinstance(tags, (list, tuple)) else []:
        if isinstance(t, str) and t.startswith(key + ":"):
            return t.split(":", 1)[1]
    return None


def _guess_scale(model: Any) -> str:
    return "embedded" if str(model) in ("tiny", "mini") or "mini-" in Path(str(model)).name else "unknown"


def run_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One line per run: rank, seed, state, test score, accuracy, parameters, epochs, time; where a run was
    rerun at a lowered rate (reruns.RerunRule), its rate, why, and which runs a rerun replaces."""
    cols = ["run_id", "rank", "seed", "state", "result.metric", "score", "acc", "trainable", "result.best_epoch",
            "result.epochs", "result.train_time_s", "result.splits.test"]  # splits.test: the split scored
    if "rerun_of" in df and df["rerun_of"].notna().any():
        cols += ["result.learning_rate", "rerun_reason", "superseded"]
    return df[[c for c in cols if c in df]].rename(columns=lambda c: c.removeprefix("result."))


def metrics_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation rows (metrics.jsonl, split 'val') of the given runs, with their cell keys,
    seed, and val_score = the benchmark's primary metric (result.json's `metric`)."""
    rows = []
    for r in df.to_dict("records"):
        metric = r.get("result.metric") if isinstance(r.get("result.metric"), str) else "accuracy"
        for m in runs.RunDir(r["path"]).metrics():
            if m.get("split", "val") != "val":
                continue
            rows.append({"run_id": r["run_id"], "setup": r["setup"], "targets": r["targets"], "rank": r["rank"],
                         "seed": r["seed"], "benchmark": r["benchmark"], "llm": r["llm"], "metric": metric,
                         "epoch": m.get("epoch"), "train_loss": m.get("train_loss"), "val_score": m.get(metric)})
    return pd.DataFrame(rows, columns=["run_id", "setup", "targets", "rank", "seed", "benchmark", "llm", "metric",
                                       "epoch", "train_loss", "val_score"])


def ranks_frame(df: pd.DataFrame, *, null: bool = False) -> pd.DataFrame:
    """AdaLoRA rank history (adalora_ranks.jsonl) of the AdaLoRA runs in df, with llm/benchmark/seed:
    the runs trained on the true answers, or (null=True) only the null runs (shuffled answers).

    Layers are reported 1-based (`layer`), as in the paper's heatmaps; rows written 0-based (the
    module names' numbering, detected by a layer 0 being present) are shifted.
    """
    rows = []
    sub = df[(df["method"] == "adalora") & (df["state"] == "done")] if not df.empty else df
    if len(sub):
        sub = sub[(sub["null"] if "null" in sub else pd.Series(False, index=sub.index)) == null]
    for r in sub.itertuples():
        hist = runs.RunDir(r.path).ranks()
        if not hist:
            continue
        base = 0 if min(h["layer"] for h in hist) == 0 else 1
        for h in hist:
            rows.append({**h, "layer": int(h["layer"]) - base + 1, "run_id": r.run_id, "llm": r.llm,
                         "benchmark": r.benchmark, "seed": r.seed})
    cols = ["run_id", "llm", "benchmark", "seed", "layer", "sublayer", "branch", "module", "rank", "step"]
    return pd.DataFrame(rows, columns=None if rows else cols)


def final_ranks(ranks: pd.DataFrame) -> pd.DataFrame:
    """Each run's final rank per module: its rows of phase 'final' when recorded, else those at its
    largest step."""
    if ranks.empty:
        return ranks
    if "phase" in ranks:
        has_final = ranks.groupby("run_id")["phase"].transform(lambda p: (p == "final").any())
        ranks = ranks[~has_final | (ranks["phase"] == "final")]
    last = ranks.groupby("run_id")["step"].transform("max")
    return ranks[ranks["step"] == last].reset_index(drop=True)


def sublayer_means(final: pd.DataFrame) -> pd.DataFrame:
    """Heatmap values per run: mean rank of each sublayer's modules in each layer (both FFN branches
    and their intermediate/output together, as the paper averages them)."""
    keys = ["llm", "benchmark", "seed", "run_id", "layer", "sublayer"]
    if final.empty:
        return pd.DataFrame(columns=[*keys, "mean_rank"])
    return final.groupby(keys, as_index=False)["rank"].mean().rename(columns={"rank": "mean_rank"})


def heatmap_values(final: pd.DataFrame) -> pd.DataFrame:
    """Seed-averaged heatmap: (llm, benchmark, layer, sublayer) -> mean rank, sd over seeds, seeds."""
    per_run = sublayer_means(final)
    keys = ["llm", "benchmark", "layer", "sublayer"]
    if per_run.empty:
        return pd.DataFrame(columns=[*keys, "mean_rank", "sd", "n_seeds"])
    out = per_run.groupby(keys, as_index=False).agg(mean_rank=("mean_rank", "mean"), sd=("mean_rank", "std"),
                                                    n_seeds=("seed", "nunique"))
    out["sublayer_label"] = out["sublayer"].map(SUBLAYER_LABELS)
    return out


# --- Table 1 --------------------------------------------------------------------------------------------
def table1(df: pd.DataFrame) -> pd.DataFrame:
    """One row per grid cell (llm, benchmark, setup, targets, rank): accuracy over seeds, parameters,
    and the paper's marks: best rank of the row (bold) and best of the setup (underlined)."""
    cols = [*CELL_KEYS, "targets", "acc_mean", "acc_sd", "n_seeds", "trainable", "best_in_row", "best_in_setup"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = paper_runs(df)
    d = d[(d["state"] == "done") & (d["method"] == "lora") & d["acc"].notna()]
    if "connector" in d:
        d = d[d["connector"] == "qformer"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    d = d.assign(rank=d["rank"].astype("Float64")).drop_duplicates([*CELL_KEYS, "seed"], keep="last")
    keys = [*CELL_KEYS, "targets"]
    t = d.groupby(keys, dropna=False, as_index=False).agg(
        acc_mean=("acc", "mean"), acc_sd=("acc", "std"), n_seeds=("seed", "nunique"), trainable=("trainable", "max"))
    row = ["llm", "benchmark", "setup", "targets"]
    t["best_in_row"] = t["acc_mean"] == t.groupby(row, dropna=False)["acc_mean"].transform("max")
    t["best_in_setup"] = t["acc_mean"] == t.groupby(row[:3], dropna=False)["acc_mean"].transform("max")
    t["_s"] = t["setup"].map({s: i for i, s in enumerate(SETUPS)})
    return t.sort_values(["llm", "benchmark", "_s", "targets", "rank"]).drop(columns="_s").reset_index(drop=True)


def table1_html(t: pd.DataFrame) -> str:
    """Table 1 as HTML: rows setup x targets x rank, columns LLM x benchmark (accuracy, parameters)."""
    if t.empty:
        return "<p class='empty'>No finished LoRA runs yet.</p>"
    pairs = t[["llm", "benchmark"]].drop_duplicates().sort_values(["llm", "benchmark"]).values.tolist()
    head = "".join(f"<th colspan='2'>{LLM_LABELS.get(l, l)}<br>{b}</th>" for l, b in pairs)
    sub = "<th>accuracy %</th><th>trainable</th>" * len(pairs)
    body = []
    order = t.assign(_s=t["setup"].map({s: i for i, s in enumerate(SETUPS)})).sort_values(["_s", "targets", "rank"])
    for (_, setup, targets, rank), g in order.groupby(["_s", "setup", "targets", "rank"], dropna=False, sort=False):
        cells = []
        for l, b in pairs:
            m = g[(g["llm"] == l) & (g["benchmark"] == b)]
            if m.empty:
                cells.append("<td>–</td><td>–</td>")
                continue
            r = m.iloc[0]
            acc = f"{r.acc_mean:.1f}" + (f" ± {r.acc_sd:.1f}" if r.n_seeds > 1 else "")
            acc = f"<b>{acc}</b>" if r.best_in_row else acc
            acc = f"<u>{acc}</u> ★" if r.best_in_setup else acc
            n = f" <small>(n={int(r.n_seeds)})</small>" if r.n_seeds > 1 else ""
            cells.append(f"<td>{acc}{n}</td><td>{_fmt_params(r.trainable)}</td>")
        rank_s = "full" if pd.isna(rank) else f"r={int(rank)}"
        body.append(f"<tr><td>{SETUP_LABELS.get(setup, setup)}</td><td>{targets}</td><td>{rank_s}</td>"
                    + "".join(cells) + "</tr>")
    return ("<table class='table1'><thead><tr><th rowspan='2'>setup</th><th rowspan='2'>LoRA on</th>"
            f"<th rowspan='2'>rank</th>{head}</tr><tr>{sub}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p class='note'>Mean test accuracy over seeds (± sd where there are several). <b>Bold</b>: best "
            "rank of the row; <u>underlined</u> ★: best of the setup, as marked in the paper's Table 1.</p>")


def _fmt_params(n: Any) -> str:
    if n is None or pd.isna(n):
        return "?"
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


# --- charts ---------------------------------------------------------------------------------------------
def enable_offline() -> None:
    """Notebook outputs as inline SVG (no vega scripts from a CDN); no 5000-row cap on chart data."""
    alt.renderers.enable("svg")
    alt.data_transformers.disable_max_rows()


def to_svg(chart: alt.TopLevelMixin) -> str:
    """The chart as standalone SVG text (vl-convert, offline)."""
    import vl_convert as vlc

    version = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]
    svg = vlc.vegalite_to_svg(chart.to_dict(), vl_version=version)
    return svg[svg.index("<svg"):] if "<svg" in svg else svg


def figure2(t: pd.DataFrame) -> alt.FacetChart:
    """Accuracy against trainable parameters (log x) per setup, one panel per LLM x benchmark."""
    d = t.assign(acc=t["acc_mean"].astype(float), setup_label=t["setup"].map(SETUP_LABELS),
                 llm_label=t["llm"].map(lambda x: LLM_LABELS.get(x, x)), trainable=t["trainable"].astype(float))
    d = d[d["trainable"] > 0]
    order = [SETUP_LABELS[s] for s in SETUPS]
    color = alt.Color("setup_label:N", title="setup", sort=order)
    x = alt.X("trainable:Q", scale=alt.Scale(type="log"), title="trainable parameters (log)")
    y = alt.Y("acc:Q", title="test accuracy %", scale=alt.Scale(zero=False))
    base = alt.Chart(d).encode(x=x, y=y, color=color)
    lines = base.mark_line(opacity=0.5).encode(detail="targets:N")
    points = base.mark_point(filled=True, size=50)
    return (alt.layer(lines, points, data=d).properties(width=260, height=200)
            .facet(row=alt.Row("llm_label:N", title=None), column=alt.Column("benchmark:N", title=None)))


def heatmap(values: pd.DataFrame, *, title: str = "mean AdaLoRA rank") -> alt.FacetChart:
    """Layers x {self-attention, cross-attention, FFN}; one panel per benchmark (columns) and LLM (rows).
    Cross-attention cells exist only on odd (1-based) layers; the others stay empty."""
    d = values.assign(llm_label=values["llm"].map(lambda x: LLM_LABELS.get(x, x)),
                      sublayer_label=values["sublayer"].map(SUBLAYER_LABELS))
    order = [SUBLAYER_LABELS[s] for s in SUBLAYERS]
    base = alt.Chart(d).encode(x=alt.X("sublayer_label:N", sort=order, title=None),
                               y=alt.Y("layer:O", title="layer"))
    rect = base.mark_rect().encode(color=alt.Color("mean_rank:Q", title=title, scale=alt.Scale(scheme="viridis")))
    mid = float(d["mean_rank"].mean()) if len(d) else 0.0  # viridis: dark below the middle, light above
    text = base.mark_text(fontSize=9).encode(text=alt.Text("mean_rank:Q", format=".1f"),
                                             color=alt.condition(alt.datum.mean_rank > mid, alt.value("black"),
                                                                 alt.value("white")))
    return (alt.layer(rect, text, data=d).properties(width=150, height=16 * max(1, d["layer"].nunique()))
            # row labels horizontal, above each row: rotated, they are longer than a 4-layer panel is high and
            # the two LLMs' labels ran into each other
            .facet(row=alt.Row("llm_label:N", title=None,
                               header=alt.Header(labelAngle=0, labelOrient="top", labelAnchor="start",
                                                 labelFontWeight="bold")),
                   column=alt.Column("benchmark:N", title=None, sort=["iconqa", "scienceqa", "flickr30k", "vizwiz"])))


def module_heatmap(final: pd.DataFrame) -> alt.FacetChart:
    """Per-module detail: final rank of every adapted module (seed mean), layers x module."""
    branch = final["branch"].astype(object).where(final["branch"].notna(), None)
    labels = [" · ".join(p for p in (SUBLAYER_LABELS.get(s, s), b, m) if p)
              for s, b, m in zip(final["sublayer"], branch, final["module"].astype(str))]
    d = final.assign(module_label=labels, _s=final["sublayer"].map({s: i for i, s in enumerate(SUBLAYERS)}))
    order = d.sort_values(["_s", "module_label"])["module_label"].unique().tolist()
    d = d.groupby(["llm", "benchmark", "layer", "module_label"], as_index=False)["rank"].mean()
    return (alt.Chart(d).mark_rect().encode(
        x=alt.X("module_label:N", title=None, sort=order), y=alt.Y("layer:O", title="layer"),
        color=alt.Color("rank:Q", title="final rank", scale=alt.Scale(scheme="viridis")))
        .properties(width=22 * max(1, d["module_label"].nunique()), height=16 * max(1, d["layer"].nunique()))
        .facet(row=alt.Row("llm:N", title=None), column=alt.Column("benchmark:N", title=None)))


def rank_trajectory(ranks: pd.DataFrame) -> alt.FacetChart:
    """Mean rank of each sublayer during training (over modules and seeds)."""
    d = ranks.groupby(["llm", "benchmark", "step", "sublayer"], as_index=False)["rank"].mean()
    d["sublayer_label"] = d["sublayer"].map(SUBLAYER_LABELS)
    return (alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step"), y=alt.Y("rank:Q", title="mean rank"),
        color=alt.Color("sublayer_label:N", title="sublayer"))
        .properties(width=260, height=160)
        .facet(row=alt.Row("llm:N", title=None), column=alt.Column("benchmark:N", title=None)))


def learning_curves(metrics: pd.DataFrame) -> alt.HConcatChart:
    """Training loss and the validation metric per epoch, one line per rank (and seed)."""
    m = metrics.assign(rank_label=metrics["rank"].map(lambda r: "full" if pd.isna(r) else f"r={int(r)}"))
    metric = m["metric"].iloc[0] if len(m) else "accuracy"
    panels = []
    for col, title in (("train_loss", "training loss"), ("val_score", f"validation {metric}")):
        if m[col].notna().any():
            panels.append(alt.Chart(m).mark_line(point=True).encode(
                x=alt.X("epoch:Q"), y=alt.Y(f"{col}:Q", title=title, scale=alt.Scale(zero=False)),
                color=alt.Color("rank_label:N", title="rank"), detail="seed:N").properties(width=260, height=180))
    return alt.hconcat(*panels)


def accuracy_by_rank(df: pd.DataFrame) -> alt.LayerChart:
    """Test accuracy of every seed (points) and their mean (line) against the rank."""
    d = df[df["score"].notna()].assign(rank_label=df["rank"].map(lambda r: "full" if pd.isna(r) else f"r={int(r)}"))
    metric = d["result.metric"].iloc[0] if "result.metric" in d and len(d) else "accuracy"
    base = alt.Chart(d).encode(x=alt.X("rank_label:O", title="rank"))
    return (base.mark_point(filled=True).encode(y=alt.Y("score:Q", title=f"test {metric}", scale=alt.Scale(zero=False)))
            + base.mark_line().encode(y="mean(score):Q")).properties(width=260, height=180)


def category_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-category test accuracy (%) by rank, mean over seeds (ScienceQA: NAT, SOC, ... G7-12)."""
    prefix = "result.test.categories."
    cats = [c for c in df.columns if c.startswith(prefix)]
    if not cats:
        return pd.DataFrame()
    t = df.groupby("rank", dropna=False)[cats].mean()
    t.columns = [c.removeprefix(prefix) for c in cats]
    return t.round(1)


def trainable_table(df: pd.DataFrame) -> pd.DataFrame:
    """Trainable parameters by group (result.json's trainable_params) and their total, for each rank."""
    cols = [c for c in df.columns if c.startswith(TRAINABLE_PREFIX)]
    if not cols:
        return pd.DataFrame()
    t = df.groupby("rank", dropna=False)[[*cols, "trainable"]].first()
    t.columns = [c.removeprefix(TRAINABLE_PREFIX) for c in cols] + ["total"]
    return t.loc[:, (t != 0).any(axis=0)]


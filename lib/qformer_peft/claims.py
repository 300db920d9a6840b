"""The claim ledger: every claim of the paper, the evidence measured here, a verdict and its scale.

Each claim is reduced to per-seed statistics whose sign is the claim's direction (e.g. accuracy of
Q-Former LoRA minus the baseline's, seed by seed). The verdict reads mean ± 2 standard errors over
seeds: entirely on the claim's side -> "holds", entirely on the other side -> "does not hold",
straddling (or fewer than 2 seeds, so no spread to judge by) -> "inconclusive". A claim stated for
several LLMs or benchmarks holds only where it holds for each of them.

Claims (PROTOCOL §2 headline, §6 claims 1-5), judged on the paper grid's runs (report_charts.paper_runs):
  H1  Q-Former PEFT is comparable to full fine-tuning (accuracy) ... with < 2% of the trainable parameters
  H2  Q-Former + LLM PEFT beats the baseline (accuracy) ... with < 12% of the trainable parameters
  C1-C5  the AdaLoRA rank allocation (see CLAIMS below)
then the connector study's (issue 7 §1, connector_study.CLAIMS: DeCo-*, BA-*, claims of DeCo and of the
Bottleneck Adapter paper) and the open questions' (issue 7 §2, open_questions.OPEN_CLAIMS: MT, SC, RK, SD),
judged the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import runs
from .report_charts import SUBLAYERS, final_ranks, paper_runs, sublayer_means

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
Z = 2.0                     # standard errors a difference must clear
COMPARABLE_TOL = 1.0        # "comparable": at most 1 accuracy point (accuracy is in percent) below
LLM_FULL_SIZE = {"t5": "flan-t5-xl", "llama": "vicuna-7b"}

CLAIMS = {
    "H1-acc": ("Q-Former LoRA is comparable to full Q-Former fine-tuning (test accuracy at most "
               f"{COMPARABLE_TOL:g} point below the baseline)", "PROTOCOL §2 / paper §3.1"),
    "H1-params": ("... using under 2% of the trainable parameters of full fine-tuning", "PROTOCOL §2 / paper abstract"),
    "H2-acc": ("Q-Former LoRA + LLM LoRA beats the baseline (full Q-Former fine-tuning, LLM frozen)",
               "PROTOCOL §2 / paper §3.1"),
    "H2-params": ("... with under 12% of the trainable parameters", "PROTOCOL §2 / paper §1"),
    "C1": ("IconQA: self-attention gets the most AdaLoRA rank, cross-attention the second most", "PROTOCOL §6 (1)"),
    "C2": ("ScienceQA: allocation more balanced than IconQA, self-attention noticeably less, FFN relatively more",
           "PROTOCOL §6 (2)"),
    "C3": ("FFNs after a cross-attention layer (odd layers, 1-based) get more rank than the others", "PROTOCOL §6 (3)"),
    "C4": ("The last layer's FFN gets the least rank of all FFNs", "PROTOCOL §6 (4)"),
    "C5": ("Flickr30k's allocation resembles IconQA's; VizWiz's resembles ScienceQA's", "PROTOCOL §6 (5)"),
}


@dataclass
class Verdict:
    verdict: str
    evidence: str


@dataclass
class Claim:
    id: str
    statement: str
    source: str
    scale: str
    verdict: str
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return self.__dict__.copy()


# --- the statistics ---------------------------------------------------------------------------------------
def judge(samples: Sequence[float], margin: float = 0.0) -> str:
    """holds if mean - Z*se > margin, does not hold if mean + Z*se < margin, else inconclusive.

    samples are per-seed values of a statistic that is positive where the claim holds.
    """
    v = np.asarray([s for s in samples if s is not None and np.isfinite(s)], dtype=float)
    if len(v) < 2:
        return INCONCLUSIVE
    m, se = v.mean(), v.std(ddof=1) / np.sqrt(len(v))
    if m - Z * se > margin:
        return HOLDS
    if m + Z * se < margin:
        return FAILS
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim stated for every LLM/benchmark: fails if any part fails, holds if all hold."""
    if not verdicts:
        return INCONCLUSIVE
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def paired(a: Mapping[Any, float], b: Mapping[Any, float]) -> list[float]:
    """a - b seed by seed, on the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def _fmt(samples: Sequence[float], scale: float = 1.0, unit: str = "") -> str:
    v = np.asarray(samples, dtype=float) * scale
    if len(v) == 0:
        return "no data"
    if len(v) == 1:
        return f"{v[0]:+.2f}{unit} (1 seed: no spread)"
    return f"{v.mean():+.2f}{unit} ± {v.std(ddof=1):.2f} sd (n={len(v)})"


# --- headline claims (Table 1 / Figure 2) ------------------------------------------------------------------
def best_config(df: pd.DataFrame, setup: str) -> pd.DataFrame:
    """The runs of the setup's best configuration (sublayers, targets, rank) by mean accuracy, chosen
    among its most-replicated configurations so that a single lucky seed cannot win."""
    d = df[(df["setup"] == setup) & (df["state"] == "done") & (df["method"] == "lora") & df["acc"].notna()]
    if d.empty:
        return d
    keys = ["qf_sublayers", "llm_targets", "rank"]
    g = d.groupby(keys, dropna=False).agg(n=("seed", "nunique"), acc=("acc", "mean")).reset_index()
    g = g[g["n"] == g["n"].max()].sort_values("acc", ascending=False)
    top = g.iloc[0]
    mask = np.ones(len(d), dtype=bool)
    for k in keys:
        mask &= (d[k].isna() & pd.isna(top[k])).to_numpy() | (d[k] == top[k]).fillna(False).to_numpy()
    return d[mask]


def _by_seed(d: pd.DataFrame, col: str = "acc") -> dict[Any, float]:
    return {int(s): float(v) for s, v in d.groupby("seed")[col].mean().items()}


def _config_label(d: pd.DataFrame) -> str:
    r = d.iloc[0]
    rank = "" if pd.isna(r["rank"]) else f", r={int(r['rank'])}"
    return f"{r['targets']}{rank}"


def _against_baseline(df: pd.DataFrame, setup: str, parts: list[str], verdicts: list[str]):
    """(llm, benchmark, best config of `setup`, best baseline) per LLM x benchmark; a pair with either side
    missing is recorded in parts/verdicts as inconclusive and not yielded."""
    for (llm, bench), d in df.groupby(["llm", "benchmark"]):
        a, b = best_config(d, setup), best_config(d, "baseline")
        if a.empty or b.empty:
            parts.append(f"{llm}/{bench}: missing {'baseline' if b.empty else setup} runs")
            verdicts.append(INCONCLUSIVE)
            continue
        yield llm, bench, a, b


def accuracy_claim(df: pd.DataFrame, setup: str, *, tolerance: float) -> Verdict:
    """Best configuration of `setup` against the baseline, per LLM x benchmark; the statistic is
    acc(setup) - acc(baseline) + tolerance per seed (tolerance 0: must beat; > 0: comparable)."""
    parts, verdicts = [], []
    for llm, bench, a, b in _against_baseline(df, setup, parts, verdicts):
        diff = paired(_by_seed(a), _by_seed(b))
        v = judge(diff, margin=-tolerance)
        verdicts.append(v)
        parts.append(f"{llm}/{bench}: {_config_label(a)} {a['acc'].mean():.1f}% vs baseline "
                     f"{b['acc'].mean():.1f}%, difference {_fmt(diff, 1, ' pt')} → {v}")
    if not parts:
        return Verdict(INCONCLUSIVE, "no finished runs")
    return Verdict(combine(verdicts), "; ".join(parts))


DENOMINATORS = {
    "baseline": "share of all trainable parameters of the baseline (Q-Former + query tokens + projection + LayerNorm)",
    "qformer": "LoRA parameters as a share of the Q-Former's parameters",
}


def _lora(d: pd.DataFrame) -> float:
    cols = [f"result.trainable_params.{g}" for g in ("qformer_lora", "llm_lora")]
    return float(sum(d[c].max() for c in cols if c in d)) if any(c in d for c in cols) else np.nan


def params_claim_measured(df: pd.DataFrame, setup: str, limit_pct: float, denominator: str = "baseline") -> Verdict:
    """Trainable parameters of the setup's best configuration against the baseline, measured on the
    models that were trained (a property of the architecture: no spread over seeds). denominator:
    'baseline' (all its trainable parameters) or 'qformer' (LoRA parameters / full Q-Former)."""
    parts, verdicts = [], []
    for llm, bench, a, b in _against_baseline(df, setup, parts, verdicts):
        if denominator == "baseline":
            num, den, what = a["trainable"].max(), b["trainable"].max(), "trainable"
        else:
            qf = "result.trainable_params.qformer_full"
            num, den, what = _lora(a), (b[qf].max() if qf in b else np.nan), "LoRA parameters"
        if not (np.isfinite(num) and np.isfinite(den) and den > 0):
            parts.append(f"{llm}/{bench}: trainable-parameter counts missing")
            verdicts.append(INCONCLUSIVE)
            continue
        pct = 100 * float(num) / float(den)
        v = HOLDS if pct < limit_pct else FAILS
        verdicts.append(v)
        parts.append(f"{llm}/{bench}: {_config_label(a)}: {int(num):,} {what} / {int(den):,} = {pct:.2f}% → {v}")
    if not parts:
        return Verdict(INCONCLUSIVE, "no finished runs")
    return Verdict(combine(verdicts), "; ".join(parts))


def params_claim_full_size(ledger_rows: Sequence[Mapping[str, Any]], setup: str, limit_pct: float,
                           denominator: str = "baseline") -> Verdict:
    """The same share at full size (Flan-T5-XL / Vicuna-7B, derived from the architectures) for the
    largest rank of the paper's grid with every target: the most parameters the setup ever trains."""
    rows = [r for r in ledger_rows if r.get("setup") == setup and r.get("rank") == 8
            and r.get("qf_sublayers") in (None, "all") and r.get("llm_targets") in (None, "all")]
    key = {"baseline": "pct_of_baseline", "qformer": "pct_of_qformer"}[denominator]
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return Verdict(INCONCLUSIVE, "full-size parameter ledger not available")
    parts, verdicts = [], []
    for r in rows:
        v = HOLDS if r[key] < limit_pct else FAILS
        verdicts.append(v)
        num = int(r["total"]) if denominator == "baseline" else int(r["qformer_lora"] or 0) + int(r["llm_lora"] or 0)
        parts.append(f"{r['llm']}, r=8: {num:,} {'trainable' if denominator == 'baseline' else 'LoRA'} = "
                     f"{r[key]:.2f}% → {v}")
    return Verdict(combine(verdicts), "; ".join(parts))


# --- AdaLoRA claims --------------------------------------------------------------------------------------
def _maps(ranks: pd.DataFrame) -> pd.DataFrame:
    """Per-run heatmap values (llm, benchmark, seed, layer, sublayer, mean_rank)."""
    return sublayer_means(final_ranks(ranks))


def _sublayer_totals(maps: pd.DataFrame) -> pd.DataFrame:
    """Per run: mean over layers of each sublayer's heatmap value, and each sublayer's share of the three."""
    t = maps.groupby(["llm", "benchmark", "seed", "sublayer"])["mean_rank"].mean().unstack("sublayer")
    for s in SUBLAYERS:
        if s not in t:
            t[s] = np.nan
    shares = t[list(SUBLAYERS)].div(t[list(SUBLAYERS)].sum(axis=1), axis=0)
    return t[list(SUBLAYERS)].join(shares.add_suffix("_share")).reset_index()


def _per_llm(maps: pd.DataFrame, needed: Sequence[str], fn) -> Verdict:
    parts, verdicts = [], []
    llms = sorted(maps["llm"].unique()) if not maps.empty else []
    for llm in llms:
        m = maps[maps["llm"] == llm]
        missing = [b for b in needed if b not in set(m["benchmark"])]
        if missing:
            parts.append(f"{llm}: no AdaLoRA runs on {', '.join(missing)}")
            verdicts.append(INCONCLUSIVE)
            continue
        v, text = fn(m)
        verdicts.append(v)
        parts.append(f"{llm}: {text} → {v}")
    if not parts:
        return Verdict(INCONCLUSIVE, "no AdaLoRA runs")
    return Verdict(combine(verdicts), "; ".join(parts))


def _claim1(m: pd.DataFrame) -> tuple[str, str]:
    t = _sublayer_totals(m[m["benchmark"] == "iconqa"]).set_index("seed")
    a = (t["self_attn"] - t["cross_attn"]).tolist()
    b = (t["cross_attn"] - t["ffn"]).tolist()
    v = combine([judge(a), judge(b)])
    means = ", ".join(f"{s} {t[s].mean():.2f}" for s in SUBLAYERS)
    return v, f"IconQA mean rank {means}; self − cross {_fmt(a)}, cross − FFN {_fmt(b)}"


def _claim2(m: pd.DataFrame) -> tuple[str, str]:
    t = _sublayer_totals(m[m["benchmark"].isin(["iconqa", "scienceqa"])])
    sh = [f"{s}_share" for s in SUBLAYERS]
    icon = t[t["benchmark"] == "iconqa"].set_index("seed")
    sqa = t[t["benchmark"] == "scienceqa"].set_index("seed")
    spread_i = icon[sh].std(axis=1, ddof=0).to_dict()
    spread_s = sqa[sh].std(axis=1, ddof=0).to_dict()
    balanced = paired(spread_i, spread_s)                                     # IconQA less balanced
    self_less = paired(icon["self_attn_share"].to_dict(), sqa["self_attn_share"].to_dict())
    ffn_more = paired(sqa["ffn_share"].to_dict(), icon["ffn_share"].to_dict())
    v = combine([judge(balanced), judge(self_less), judge(ffn_more)])
    return v, (f"share spread IconQA − ScienceQA {_fmt(balanced)}; self-attention share IconQA − ScienceQA "
               f"{_fmt(self_less)}; FFN share ScienceQA − IconQA {_fmt(ffn_more)}")


def _claim3(m: pd.DataFrame) -> tuple[str, str]:
    ffn = m[m["sublayer"] == "ffn"]
    vs, texts = [], []
    for bench, d in ffn.groupby("benchmark"):
        odd = d[d["layer"] % 2 == 1].groupby("seed")["mean_rank"].mean().to_dict()
        even = d[d["layer"] % 2 == 0].groupby("seed")["mean_rank"].mean().to_dict()
        diff = paired(odd, even)
        vs.append(judge(diff))
        texts.append(f"{bench} odd − even {_fmt(diff)}")
    return combine(vs), "FFN mean rank " + ", ".join(texts)


def _claim4(m: pd.DataFrame) -> tuple[str, str]:
    ffn = m[m["sublayer"] == "ffn"]
    vs, texts = [], []
    for bench, d in ffn.groupby("benchmark"):
        last = d["layer"].max()
        stat = {}
        for seed, s in d.groupby("seed"):
            others = s[s["layer"] != last]["mean_rank"]
            stat[seed] = float(others.min() - s[s["layer"] == last]["mean_rank"].mean())
        vals = list(stat.values())
        vs.append(judge(vals))
        texts.append(f"{bench} lowest other FFN − layer {last} FFN {_fmt(vals)}")
    return combine(vs), "; ".join(texts)


def _distance(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Mean absolute difference of two heatmaps, each normalised to its total rank (shape, not scale)."""
    ka = a.set_index(["layer", "sublayer"])["mean_rank"]
    kb = b.set_index(["layer", "sublayer"])["mean_rank"]
    ka, kb = ka / ka.sum(), kb / kb.sum()
    j = pd.concat([ka, kb], axis=1, join="inner")
    return float((j.iloc[:, 0] - j.iloc[:, 1]).abs().mean())


def _claim5(m: pd.DataFrame) -> tuple[str, str]:
    def per_seed(x: str, near: str, far: str) -> list[float]:
        out = []
        for seed in sorted(set(m["seed"])):
            g = {b: m[(m["benchmark"] == b) & (m["seed"] == seed)] for b in (x, near, far)}
            if all(len(v) for v in g.values()):
                out.append(_distance(g[x], g[far]) - _distance(g[x], g[near]))
        return out

    f = per_seed("flickr30k", "iconqa", "scienceqa")
    v = per_seed("vizwiz", "scienceqa", "iconqa")
    return (combine([judge(f), judge(v)]),
            f"d(Flickr30k, ScienceQA) − d(Flickr30k, IconQA) {_fmt(f, 100)}; "
            f"d(VizWiz, IconQA) − d(VizWiz, ScienceQA) {_fmt(v, 100)} (heatmap distances ×100)")


# --- the ledger -----------------------------------------------------------------------------------------
def scale_of(df: pd.DataFrame) -> str:
    scales = sorted(set(df["scale"].dropna())) if "scale" in df and not df.empty else []
    return ", ".join(scales) or "unknown"


def ledger(df: pd.DataFrame, ranks: pd.DataFrame | None = None,
           full_size: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
           cache_dir: str | Path | None = None) -> list[Claim]:
    """Every claim with its evidence and verdict: the paper's, then the connector study's
    (connector_study.ledger_claims, on its runs: tagged study:connectors), then the open questions'.

    df: runs_frame(...) of the LoRA and AdaLoRA runs; ranks: ranks_frame(df); full_size: the full-size
    parameter ledger rows per LLM (qformer_peft.ledger), or None to compute them here (cached in
    cache_dir when given: building the full-size models on the meta device takes a while).
    """
    from .connector_study import ledger_claims as connector_claims  # both build on this module
    from .open_questions import open_claims

    every, every_ranks = df, ranks
    df = paper_runs(df)
    if ranks is not None and not ranks.empty:
        ranks = ranks[ranks["run_id"].isin(set(df["run_id"]))]
    scale = scale_of(df)
    lora = df[df["method"] == "lora"] if not df.empty else df
    maps = _maps(ranks) if ranks is not None and not ranks.empty else pd.DataFrame(
        columns=["llm", "benchmark", "seed", "run_id", "layer", "sublayer", "mean_rank"])
    if full_size is None:
        full_size = full_size_ledger(sorted(set(df["llm"])) if not df.empty else [], cache_dir)
    rows = [r for rs in full_size.values() for r in rs]

    out = []

    def add(cid: str, v: Verdict, at: str = scale, note: str = "") -> None:
        out.append(Claim(cid, CLAIMS[cid][0] + note, CLAIMS[cid][1], at, v.verdict, v.evidence))

    for cid, setup, limit, tol in (("H1", "qf-lora", 2.0, COMPARABLE_TOL), ("H2", "qf-lora+llm-lora", 12.0, 0.0)):
        add(f"{cid}-acc", accuracy_claim(lora, setup, tolerance=tol))
        for den, what in DENOMINATORS.items():
            add(f"{cid}-params", params_claim_measured(lora, setup, limit, den), note=f" [{what}]")
            add(f"{cid}-params", params_claim_full_size(rows, setup, limit, den), "full size (derived)", f" [{what}]")
    add("C1", _per_llm(maps, ["iconqa"], _claim1))
    add("C2", _per_llm(maps, ["iconqa", "scienceqa"], _claim2))
    add("C3", _per_llm(maps, [], _claim3))
    add("C4", _per_llm(maps, [], _claim4))
    add("C5", _per_llm(maps, ["flickr30k", "iconqa", "scienceqa", "vizwiz"], _claim5))
    return out + connector_claims(every) + open_claims(every, every_ranks)


def full_size_ledger(llms: Sequence[str], cache_dir: str | Path | None = None) -> dict[str, list[dict]]:
    """The full-size parameter ledger rows of each LLM ({} when the ledger module is not built).

    Cached under cache_dir (full_size_cache_file), keyed by the source of the modules that determine
    the counts: building the full-size models on the meta device takes a while.
    """
    try:
        from . import ledger as ledger_mod
    except ImportError:
        return {}
    names = [LLM_FULL_SIZE[llm] for llm in llms if llm in LLM_FULL_SIZE]
    cache = full_size_cache_file(cache_dir) if cache_dir is not None else None
    stored = runs.read_json(cache) if cache is not None and cache.exists() else {}
    if all(n in stored for n in names):
        return {n: stored[n] for n in names}
    out = {n: [dict(r) for r in ledger_mod.ledger(n)] for n in names}
    if cache is not None:
        runs.write_json(cache, {**stored, **out})
    return out


def full_size_cache_file(cache_dir: str | Path) -> Path:
    pkg = Path(__file__).parent
    sources = [pkg / "ledger.py", pkg / "peft_setup.py", *sorted((pkg / "models").glob("*.py"))]
    key = runs.config_hash({str(p.relative_to(pkg)): p.read_text() for p in sources if p.exists()})
    return Path(cache_dir) / f"full-size-ledger-{key}.json"


def ledger_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    return pd.DataFrame([c.as_dict() for c in claims])


def scale_statement(scale: str) -> str:
    """What the numbers are, in one plain paragraph."""
    if "embedded" in scale:
        return ("Synthetic-scale replication: these runs use small InstructBLIP-architecture models pretrained "
                "here on a synthetic visual world, and synthetic benchmarks written in the real datasets' "
                "formats. They test whether the paper's claims hold in shape at this scale; they do not "
                "reproduce its numbers. Parameter shares are shown both as measured on these models and at "
                "full size (Flan-T5-XL / Vicuna-7B, derived from the architectures).")
    if "paper" in scale:
        return ("Paper scale: real InstructBLIP checkpoints and the real benchmarks, with the paper's "
                "hyperparameters.")
    return "Scale unknown: the runs carry no scale tag."

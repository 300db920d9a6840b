"""The paper's claims: each with the evidence measured here, a verdict and its scale (claim_ledger adds the
connector study's and the open questions').

Each claim is reduced to parts (one per LLM x benchmark, or per statistic) judged by qformer_peft.verdicts:
a 95% interval against the claim's margin, four answers (holds / does not hold / inconclusive / not
resolvable at this scale), Holm's correction across a composite claim's parts, and the minimum detectable
effect. Accuracy claims read the test items of each run's predictions.jsonl (paired hierarchical bootstrap);
a setup's configuration (sublayers or targets, rank) is chosen on validation accuracy, then judged on test.
A cell (LLM x benchmark) "moved" when the chosen configuration of some setup beats both the base model's
zero-shot score on the same items (recorded by the baseline and null runs) and chance, by a paired 95%
interval (scores.movement); a part on a cell that did not move is not resolvable. Parameter shares measured on the embedded
models depend on their width (a LoRA share scales like 2r / width): they are figures, not verdicts.

Claims (the paper's headline and its AdaLoRA claims 1-5, Figure 3 / Appendix E), judged on the paper grid's runs:
  H1  Q-Former PEFT is comparable to full fine-tuning (accuracy) ... with < 2% of the trainable parameters
  H2  Q-Former + LLM PEFT beats the baseline (accuracy) ... with < 12% of the trainable parameters
  C1-C5  the AdaLoRA rank allocation, each statistic against null runs trained on shuffled answers
then the connector study's (connector_study.CLAIMS) and the open questions' (open_questions.OPEN_CLAIMS).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import runs
from .claim import Claim, Verdict, heatmap_shares, rank_maps, scale_of, share_distance
from .report_charts import SUBLAYERS, null_runs, paper_runs, ranks_frame
from .scores import adalora_movement, best_config, cells_of, config_label, movement, scores_of
from .verdicts import (COMPARABLE_TOL, FAILS, HOLDS, INCONCLUSIVE, NOT_COMPARABLE, NOT_RESOLVABLE, Judged,  # noqa: F401
                       combine, paired, paired_bootstrap, welch_interval)  # (the verdicts are read as claims.HOLDS, ...)

LLM_FULL_SIZE = {"t5": "flan-t5-xl", "llama": "vicuna-7b"}

CLAIMS = {
    "H1-acc": ("Q-Former LoRA is comparable to full Q-Former fine-tuning (test accuracy at most "
               f"{COMPARABLE_TOL:g} point below the baseline)", "paper §3.1 (headline)"),
    "H1-params": ("... using under 2% of the trainable parameters of full fine-tuning", "paper abstract"),
    "H2-acc": ("Q-Former LoRA + LLM LoRA beats the baseline (full Q-Former fine-tuning, LLM frozen)",
               "paper §3.1 (headline)"),
    "H2-params": ("... with under 12% of the trainable parameters", "paper §1"),
    "C1": ("IconQA: self-attention gets the most AdaLoRA rank, cross-attention the second most", "paper Figure 3 / Appendix E, claim (1)"),
    "C2": ("ScienceQA: allocation more balanced than IconQA, self-attention noticeably less, FFN relatively more",
           "paper Figure 3 / Appendix E, claim (2)"),
    "C3": ("ScienceQA and IconQA: FFNs after a cross-attention layer (odd layers, 1-based) get more rank than the "
           "others", "paper Figure 3 / Appendix E, claim (3)"),
    "C4": ("The last layer's FFN gets the least rank of all FFNs (judged on the query branch, the only one whose "
           "outputs reach the LLM)", "paper Figure 3 / Appendix E, claim (4)"),
    "C5": ("Flan-T5: Flickr30k's allocation resembles IconQA's; VizWiz's resembles ScienceQA's", "paper Figure 3 / Appendix E, claim (5)"),
}
# what each claim needs to move, said in the ledger when it is not resolvable here
RESOLVE_HINT = {
    "acc": "runs that train long enough (epochs, items) for a setup to beat the base's zero-shot score on the "
           "same test items: the paper scale, or the embedded scale with more training",
    "alloc": "AdaLoRA runs that move from their base (beat its zero-shot score) on several seeds, with null runs to "
             "compare (the embedded profiles: --extended, though in docs/power.md's reference study the embedded "
             "AdaLoRA runs did not move with it either)",
    # the seeds and null runs are there, the runs did not move: more of the same does not help at this scale
    "alloc_trained": "AdaLoRA runs that move from their base, which more seeds or null runs do not give: a base "
                     "and depth where AdaLoRA learns the task (at the embedded scale it stays a few points above "
                     "zero-shot with twice the epochs or four times the rate: docs/power.md, \"AdaLoRA with more "
                     "room\")",
}


# --- headline claims (Table 1 / Figure 2) ------------------------------------------------------------------
def accuracy_claim(df: pd.DataFrame, setup: str, *, tolerance: float) -> Verdict:
    """The validation-chosen configuration of `setup` against the baseline's, per LLM x benchmark, on the
    same test items: 100 * (acc(setup) - acc(baseline)) against -tolerance (0: must beat; > 0: comparable)."""
    parts, texts, read = [], [], []
    for (llm, bench), cell in cells_of(df):
        a, b = best_config(cell, setup), best_config(cell, "baseline")
        where = f"{llm}/{bench}"
        if a.empty or b.empty:
            texts.append(f"{where}: missing {'baseline' if b.empty else setup} runs")
            parts.append(Judged(float("nan"), float("nan"), float("nan"), label=where, note="missing runs"))
            continue
        part = paired_bootstrap(scores_of(a), scores_of(b), margin=-tolerance, label=where)
        mv = movement(cell)
        if not mv.moved:
            part = part.unresolved(f"the cell did not move from its base ({mv.text})")
        read += list(a.get("path", [])) + list(b.get("path", []))
        parts.append(part)
        texts.append(f"{where}: {config_label(a)} {a['acc'].mean():.1f}% vs baseline {b['acc'].mean():.1f}%, "
                     f"difference {part.interval_text(unit=' pt')} (MDE {part.mde:.1f} pt, {part.n_seeds} seed(s) x "
                     f"{part.n_items} items) → {part}" + (f" [{part.note}]" if part.note else ""))
    if not parts:
        return Verdict(NOT_RESOLVABLE, "no finished runs", resolve=RESOLVE_HINT["acc"])
    return Verdict(combine(parts), "; ".join(texts), parts, read, RESOLVE_HINT["acc"], "pt")


DENOMINATORS = {
    "baseline": "share of all trainable parameters of the baseline (Q-Former + query tokens + projection + LayerNorm)",
    "qformer": "LoRA parameters as a share of the Q-Former's parameters",
}


def _lora(d: pd.DataFrame) -> float:
    cols = [f"result.trainable_params.{g}" for g in ("qformer_lora", "llm_lora")]
    return float(sum(d[c].max() for c in cols if c in d)) if any(c in d for c in cols) else np.nan


def _share_part(pct: float, limit_pct: float, label: str) -> Judged:
    """A parameter share is exact (no spread): limit - share, its own interval."""
    x = limit_pct - pct
    return Judged(x, x, x, p_hold=0.0 if x > 0 else 1.0, p_fail=1.0 if x > 0 else 0.0, mde=0.0, label=label)


def params_claim_measured(df: pd.DataFrame, setup: str, limit_pct: float, denominator: str = "baseline") -> Verdict:
    """Trainable parameters of the setup's validation-chosen configuration against the baseline, measured on
    the models that were trained. At the embedded scale a LoRA share scales like 2r / width, so the figure
    is shown, marked not comparable at this width, and is not a verdict."""
    parts, texts, read = [], [], []
    for (llm, bench), cell in cells_of(df):
        a, b = best_config(cell, setup), best_config(cell, "baseline")
        if a.empty or b.empty:
            texts.append(f"{llm}/{bench}: missing {'baseline' if b.empty else setup} runs")
            continue
        if denominator == "baseline":
            num, den, what = a["trainable"].max(), b["trainable"].max(), "trainable"
        else:
            qf = "result.trainable_params.qformer_full"
            num, den, what = _lora(a), (b[qf].max() if qf in b else np.nan), "LoRA parameters"
        if not (np.isfinite(num) and np.isfinite(den) and den > 0):
            texts.append(f"{llm}/{bench}: trainable-parameter counts missing")
            continue
        pct = 100 * float(num) / float(den)
        parts.append(_share_part(pct, limit_pct, f"{llm}/{bench}"))
        read += list(a.get("path", [])) + list(b.get("path", []))
        texts.append(f"{llm}/{bench}: {config_label(a)}: {int(num):,} {what} / {int(den):,} = {pct:.2f}%")
    if not texts:
        return Verdict(INCONCLUSIVE, "no finished runs")
    scale = set(df["scale"].dropna()) if "scale" in df else set()
    verdict = NOT_COMPARABLE if scale and scale <= {"embedded"} else (combine(parts) if parts else INCONCLUSIVE)
    return Verdict(verdict, "; ".join(texts), parts, read, unit="% below the limit")


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
    parts, texts = [], []
    for r in rows:
        part = _share_part(r[key], limit_pct, f"{r['llm']}, r=8")
        parts.append(part)
        num = int(r["total"]) if denominator == "baseline" else int(r["qformer_lora"] or 0) + int(r["llm_lora"] or 0)
        texts.append(f"{r['llm']}, r=8: {num:,} {'trainable' if denominator == 'baseline' else 'LoRA'} = "
                     f"{r[key]:.2f}% → {part}")
    return Verdict(combine(parts), "; ".join(texts), parts, unit="% below the limit")


# --- AdaLoRA claims: each statistic against null runs ---------------------------------------------------------
C3_SCOPE = ("scienceqa", "iconqa")   # the paper states claim 3 for these two
C5_SCOPE = ("t5",)                   # and shows claim 5 with Flan-T5 only


def _sublayer_totals(maps: pd.DataFrame) -> pd.DataFrame:
    """Per run: mean over layers of each sublayer's heatmap value, and each sublayer's share of the three."""
    t = maps.groupby(["llm", "benchmark", "seed", "sublayer"])["mean_rank"].mean().unstack("sublayer")
    for s in SUBLAYERS:
        if s not in t:
            t[s] = np.nan
    shares = t[list(SUBLAYERS)].div(t[list(SUBLAYERS)].sum(axis=1), axis=0)
    return t[list(SUBLAYERS)].join(shares.add_suffix("_share")).reset_index()


def _stats1(m: pd.DataFrame) -> dict[str, dict]:
    t = _sublayer_totals(m[m["benchmark"] == "iconqa"]).set_index("seed")
    return {"IconQA self − cross": (t["self_attn"] - t["cross_attn"]).to_dict(),
            "IconQA cross − FFN": (t["cross_attn"] - t["ffn"]).to_dict()}


def _stats2(m: pd.DataFrame) -> dict[str, dict]:
    t = _sublayer_totals(m[m["benchmark"].isin(["iconqa", "scienceqa"])])
    sh = [f"{s}_share" for s in SUBLAYERS]
    icon = t[t["benchmark"] == "iconqa"].set_index("seed")
    sqa = t[t["benchmark"] == "scienceqa"].set_index("seed")
    return {"share spread IconQA − ScienceQA": dict(zip(*_pair(icon[sh].std(axis=1, ddof=0), sqa[sh].std(axis=1, ddof=0)))),
            "self-attention share IconQA − ScienceQA": dict(zip(*_pair(icon["self_attn_share"], sqa["self_attn_share"]))),
            "FFN share ScienceQA − IconQA": dict(zip(*_pair(sqa["ffn_share"], icon["ffn_share"])))}


def _pair(a: pd.Series, b: pd.Series) -> tuple[list, list]:
    seeds = sorted(set(a.index) & set(b.index))
    return seeds, paired(a.to_dict(), b.to_dict())


def _stats3(m: pd.DataFrame, benches: Sequence[str]) -> dict[str, dict]:
    ffn = m[(m["sublayer"] == "ffn") & m["benchmark"].isin(benches)]
    out = {}
    for bench, d in ffn.groupby("benchmark"):
        odd = d[d["layer"] % 2 == 1].groupby("seed")["mean_rank"].mean().to_dict()
        even = d[d["layer"] % 2 == 0].groupby("seed")["mean_rank"].mean().to_dict()
        out[f"{bench} FFN odd − even"] = {s: odd[s] - even[s] for s in set(odd) & set(even)}
    return out


def _stats4(m: pd.DataFrame) -> dict[str, dict]:
    ffn = m[m["sublayer"] == "ffn"]
    out = {}
    for bench, d in ffn.groupby("benchmark"):
        last = d["layer"].max()
        out[f"{bench} lowest other FFN − layer {last} FFN"] = {
            seed: float(s[s["layer"] != last]["mean_rank"].min() - s[s["layer"] == last]["mean_rank"].mean())
            for seed, s in d.groupby("seed")}
    return out


def _stats5(m: pd.DataFrame) -> dict[str, dict]:
    def per_seed(x: str, near: str, far: str) -> dict:
        out = {}
        for seed in sorted(set(m["seed"])):
            g = {b: m[(m["benchmark"] == b) & (m["seed"] == seed)] for b in (x, near, far)}
            if all(len(v) for v in g.values()):
                out[seed] = 100 * (share_distance(heatmap_shares(g[x]), heatmap_shares(g[far]))
                               - share_distance(heatmap_shares(g[x]), heatmap_shares(g[near])))
        return out

    return {"d(Flickr30k, ScienceQA) − d(Flickr30k, IconQA) ×100": per_seed("flickr30k", "iconqa", "scienceqa"),
            "d(VizWiz, IconQA) − d(VizWiz, ScienceQA) ×100": per_seed("vizwiz", "scienceqa", "iconqa")}


def allocation_claim(df: pd.DataFrame, real: pd.DataFrame, null: pd.DataFrame, stats, needed: Sequence[str],
                     llms: Sequence[str] | None = None, explore: Sequence[str] = ()) -> Verdict:
    """Each statistic of `stats` (maps -> {name: {seed: value}}, positive where the claim holds) for each LLM
    in scope: the real runs' seeds against the null runs' (Welch t interval of the difference of means). A part
    whose benchmarks did not move from their base is not resolvable; LLMs in `explore` are shown, not judged."""
    parts, texts, read = [], [], []
    unpowered = False  # a judged part lacks seeds or null runs: what resolves it is more runs, not more training
    present = sorted(set(real["llm"])) if len(real) else []
    for llm in sorted(set(present) | set(llms or [])):
        if llms is not None and llm not in llms and llm not in explore:
            continue
        m, n = real[real["llm"] == llm], null[null["llm"] == llm] if len(null) else null
        missing = [b for b in needed if b not in set(m["benchmark"])]
        judged = llms is None or llm in llms
        if missing:
            if judged:
                unpowered = True
                texts.append(f"{llm}: no AdaLoRA runs on {', '.join(missing)}")
                parts.append(Judged(float("nan"), float("nan"), float("nan"), label=llm, note="missing runs"))
            continue
        moves = {b: adalora_movement(df, llm, b) for b in sorted(set(needed) or set(m["benchmark"]))} if judged else {}
        real_stats, null_stats = stats(m), stats(n) if len(n) else {}
        for name, values in real_stats.items():
            ref = list(null_stats.get(name, {}).values())
            part = welch_interval(list(values.values()), ref, label=f"{llm} {name}")
            if not ref:  # the real runs' mean, with nothing to judge it against
                mean = float(np.mean(list(values.values()))) if values else float("nan")
                part = Judged(mean, float("nan"), float("nan"), n_seeds=len(values), label=part.label,
                              resolvable=False, note="no null runs to judge against")
            uses = [b for b in moves if b in name.lower()] or list(moves)
            still = [b for b in uses if not moves[b][0]]
            if still:
                part = part.unresolved(f"did not move from the base on {', '.join(still)}")
            null_text = f"null {np.mean(ref):+.2f} over {len(ref)} seed(s)" if ref else "no null runs"
            line = (f"{llm}: {name} real {np.mean(list(values.values())):+.2f} over {len(values)} seed(s), "
                    f"{null_text}; real − null {part.interval_text()}")
            if judged:
                unpowered = unpowered or not ref or len(values) < 2
                parts.append(part)
                texts.append(f"{line} → {part}" + (f" [{part.note}]" if part.note else ""))
            else:
                texts.append(f"exploration, not a verdict: {line}")
        if judged:
            read += list(df[(df["llm"] == llm) & (df["method"] == "adalora")].get("path", [])) if len(df) else []
            texts += [f"{llm}/{b} movement: {t}" for b, (_, t) in moves.items()]
    if not parts:
        return Verdict(NOT_RESOLVABLE, "; ".join(texts) or "no AdaLoRA runs", resolve=RESOLVE_HINT["alloc"])
    return Verdict(combine(parts), "; ".join(texts), parts, read,
                   RESOLVE_HINT["alloc" if unpowered else "alloc_trained"])


# --- the ledger -----------------------------------------------------------------------------------------
def paper_claims(df: pd.DataFrame, ranks: pd.DataFrame | None = None,
                 full_size: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 cache_dir: str | Path | None = None) -> list[Claim]:
    """The paper's claims with their evidence and verdicts (claim_ledger.ledger adds the other studies').

    df: runs_frame(...) of the LoRA and AdaLoRA runs; ranks: ranks_frame(df) (the null runs' ranks are read
    from df); full_size: the full-size parameter ledger rows per LLM (params.parameter_ledger), or None to
    compute them here (cached in cache_dir when given: building the full-size models on the meta device
    takes a while).
    """
    nulls = null_runs(df)
    df = paper_runs(df)
    if ranks is not None and not ranks.empty:
        ranks = ranks[ranks["run_id"].isin(set(df["run_id"]))]
    null_ranks = ranks_frame(nulls, null=True) if len(nulls) else None
    scale = scale_of(df)
    lora = df[df["method"] == "lora"] if not df.empty else df
    refs = pd.concat([df, nulls]) if len(nulls) else df
    maps, null_maps = rank_maps(ranks), rank_maps(null_ranks)
    qmaps, null_qmaps = rank_maps(ranks, query_ffn=True), rank_maps(null_ranks, query_ffn=True)
    if full_size is None:
        full_size = full_size_ledger(sorted(set(df["llm"])) if not df.empty else [], cache_dir)
    rows = [r for rs in full_size.values() for r in rs]

    out = []

    def add(cid: str, v: Verdict, at: str = scale, note: str = "", row_id: str | None = None) -> None:
        """row_id: the ledger row's own id where one claim has several rows (denominators, scales)."""
        out.append(Claim(row_id or cid, CLAIMS[cid][0] + note, CLAIMS[cid][1], at, v.verdict, v.evidence, v.parts,
                         v.runs, v.resolve if v.verdict == NOT_RESOLVABLE else "", v.unit))

    for cid, setup, limit, tol in (("H1", "qf-lora", 2.0, COMPARABLE_TOL), ("H2", "qf-lora+llm-lora", 12.0, 0.0)):
        add(f"{cid}-acc", accuracy_claim(lora, setup, tolerance=tol))
        for den, what in DENOMINATORS.items():
            add(f"{cid}-params", params_claim_measured(lora, setup, limit, den), note=f" [{what}]",
                row_id=f"{cid}-params-{den}")
            add(f"{cid}-params", params_claim_full_size(rows, setup, limit, den), "full size (derived)", f" [{what}]",
                row_id=f"{cid}-params-{den}-full-size")
    add("C1", allocation_claim(refs, maps, null_maps, _stats1, ["iconqa"]))
    add("C2", allocation_claim(refs, maps, null_maps, _stats2, ["iconqa", "scienceqa"]))
    add("C3", allocation_claim(refs, maps, null_maps, lambda m: _stats3(m, C3_SCOPE), list(C3_SCOPE)))
    c3_wider = sorted(set(maps["benchmark"]) - set(C3_SCOPE)) if len(maps) else []
    if c3_wider:  # the wider scope: shown, not judged
        wide = allocation_claim(refs, maps, null_maps, lambda m: _stats3(m, c3_wider), [], llms=[],
                                explore=sorted(set(maps["llm"])))
        out[-1].evidence += "; " + wide.evidence
    add("C4", allocation_claim(refs, qmaps, null_qmaps, _stats4, []))
    add("C5", allocation_claim(refs, maps, null_maps, _stats5, ["flickr30k", "iconqa", "scienceqa", "vizwiz"],
                               llms=list(C5_SCOPE), explore=[l for l in LLM_FULL_SIZE if l not in C5_SCOPE]))
    return out


def full_size_ledger(llms: Sequence[str], cache_dir: str | Path | None = None) -> dict[str, list[dict]]:
    """The full-size parameter ledger rows of each LLM (params.parameter_ledger).

    Cached under cache_dir (full_size_cache_file), keyed by the source of the modules that determine
    the counts: building the full-size models on the meta device takes a while.
    """
    from . import params  # torch and transformers: only when the ledger has no cached counts
    names = [LLM_FULL_SIZE[llm] for llm in llms if llm in LLM_FULL_SIZE]
    cache = full_size_cache_file(cache_dir) if cache_dir is not None else None
    stored = runs.read_json(cache) if cache is not None and cache.exists() else {}
    if all(n in stored for n in names):
        return {n: stored[n] for n in names}
    out = {n: [dict(r) for r in params.parameter_ledger(n)] for n in names}
    if cache is not None:
        runs.write_json(cache, {**stored, **out})
    return out


def full_size_cache_file(cache_dir: str | Path) -> Path:
    pkg = Path(__file__).parent
    sources = [pkg / "params.py", pkg / "paper.py", pkg / "peft_setup.py", *sorted((pkg / "models").glob("*.py"))]
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

"""The seeds question: the spread of every Table-1 cell run with several seeds, and whether the orderings a
single run shows (between setups, and the best rank of a row) survive the other seeds (notebook 43).

It trains nothing: it reads the paper grid's runs. Its claims use the ledger's rule (verdicts.judge on the
held-out seeds, paired); open_questions.open_claims gathers them with the other open questions'.
"""
from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import claim as C
from . import verdicts as V
from .config import setup_defaults
from .report_charts import targets_label


# --- frames ---------------------------------------------------------------------------------------------
def _paper_lora(df: pd.DataFrame) -> pd.DataFrame:
    d = C.of_study(C.counted_runs(df), "paper")
    d = d[(d["method"] == "lora") & d["acc"].notna()] if len(d) else d
    if "connector" in d:
        d = d[d["connector"].fillna("qformer") == "qformer"]
    return d


def seed_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Every Table-1 cell with several seeds: mean, sd, min, max, n, and the single run (the first seed)."""
    keys = ["llm", "benchmark", "setup", "targets", "rank"]
    cols = [*keys, "cell", "n", "mean", "sd", "min", "max", "single_run", "single_seed"]
    d = _paper_lora(df)
    if d.empty:
        return pd.DataFrame(columns=cols)
    d = d.assign(rank=d["rank"].astype("Float64"))
    g = d.groupby(keys, dropna=False)
    t = g.agg(n=("seed", "nunique"), mean=("acc", "mean"), sd=("acc", "std"), min=("acc", "min"),
              max=("acc", "max"), single_seed=("seed", "min")).reset_index()
    first = d.sort_values("seed").drop_duplicates(keys)[[*keys, "acc"]].rename(columns={"acc": "single_run"})
    t = t.merge(first, on=keys, how="left")
    t = t[t["n"] >= 2]
    t["cell"] = [cell_label(s, tg, r) for s, tg, r in zip(t["setup"], t["targets"], t["rank"])]
    return t[cols].reset_index(drop=True)


def cell_label(setup: str, targets: str, rank: Any) -> str:
    """A short name of a Table-1 cell: 'baseline', 'qf-lora r=8', 'qf-lora [QF ffn] r=2' (the targets only
    when they are not the setup's usual 'all')."""
    usual = targets_label(setup, *(setup_defaults(setup).get(k) for k in ("qf_sublayers", "llm_targets")))
    r = "" if pd.isna(rank) else f" r={int(rank)}"
    return f"{setup}{'' if targets == usual else f' [{targets}]'}{r}"


def _seed_map(df: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """(llm, benchmark, setup, targets, rank) -> {seed: acc} for the multi-seed cells."""
    d = _paper_lora(df)
    out: dict[tuple, dict[int, float]] = {}
    if d.empty:
        return out
    d = d.assign(rank=d["rank"].astype("Float64"))
    for key, g in d.groupby(["llm", "benchmark", "setup", "targets", "rank"], dropna=False):
        s = C.by_seed(g)
        if len(s) >= 2:
            out[tuple(None if pd.isna(k) else k for k in key)] = s
    return out


def single_run_order(a: Mapping[int, float], b: Mapping[int, float]) -> bool:
    """Does the single run (the first seed both cells have; the paper's seed 42) put a at or above b?"""
    first = min(set(a) & set(b))
    return a[first] >= b[first]


def seed_pair_fraction(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """The fraction of all seed pairs (sa, sb) with a above b (ties count half)."""
    return float(np.mean([1.0 if x > y else 0.5 if x == y else 0.0 for x in a.values() for y in b.values()]))


def held_out(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """a − b seed by seed on the seeds other than the single run's (all common seeds when fewer than two
    others remain): the single run chose the order, the other seeds test it."""
    seeds = sorted(set(a) & set(b))
    seeds = seeds[1:] if len(seeds) >= 3 else seeds
    return [a[s] - b[s] for s in seeds]


def orderings(df: pd.DataFrame) -> pd.DataFrame:
    """Every pair of multi-seed cells of one LLM x benchmark: the single-run order and how often the
    seeds agree with it (fraction of seed pairs), and the held-out verdict."""
    cols = ["llm", "benchmark", "higher", "lower", "fraction", "held_out_mean", "verdict"]
    m = _seed_map(df)
    rows = []
    for ka, kb in itertools.combinations(m, 2):
        if ka[:2] != kb[:2] or not set(m[ka]) & set(m[kb]):
            continue
        hi, lo = (ka, kb) if single_run_order(m[ka], m[kb]) else (kb, ka)
        held = held_out(m[hi], m[lo])
        rows.append({"llm": ka[0], "benchmark": ka[1], "higher": cell_label(*hi[2:]), "lower": cell_label(*lo[2:]),
                     "fraction": seed_pair_fraction(m[hi], m[lo]), "held_out_mean": float(np.mean(held)),
                     "verdict": V.judge(held)})
    return pd.DataFrame(rows, columns=cols)



# --- claims ---------------------------------------------------------------------------------------------
def seeds_setup_claim(df: pd.DataFrame) -> C.Verdict:
    m = _seed_map(df)
    parts, verdicts = [], []
    for lb in sorted({k[:2] for k in m}):
        best = {}
        for k, s in m.items():  # each setup's best cell by the single run (the first seed)
            if k[:2] == lb and (k[2] not in best or s[min(s)] > m[best[k[2]]][min(m[best[k[2]]])]):
                best[k[2]] = k
        for sa, sb in itertools.combinations(sorted(best), 2):
            if not set(m[best[sa]]) & set(m[best[sb]]):
                continue
            hi, lo = (sa, sb) if single_run_order(m[best[sa]], m[best[sb]]) else (sb, sa)
            held = held_out(m[best[hi]], m[best[lo]])
            v = V.judge(held)
            verdicts.append(v)
            parts.append(f"{lb[0]}/{lb[1]}: {hi} > {lo} in the single run; "
                         f"{100 * seed_pair_fraction(m[best[hi]], m[best[lo]]):.0f}% of seed pairs agree; "
                         f"held-out seeds {V.fmt(held, 1, ' pt')} → {v}")
    return C.verdict_of(parts, verdicts, "no two setups with several seeds")


def seeds_best_rank_claim(df: pd.DataFrame) -> C.Verdict:
    m = _seed_map(df)
    parts, verdicts = [], []
    rows: dict[tuple, list[tuple]] = {}
    for k in m:
        if k[4] is not None:
            rows.setdefault(k[:4], []).append(k)
    for row, keys in sorted(rows.items(), key=str):
        if len(keys) < 2:
            continue
        best = max(keys, key=lambda k: m[k][min(m[k])])
        v = V.combine([V.judge(held_out(m[best], m[k])) for k in keys if k != best and set(m[k]) & set(m[best])])
        verdicts.append(v)
        means = {int(k[4]): np.mean(list(m[k].values())) for k in keys}
        parts.append(f"{row[0]}/{row[1]} {row[2]} · {row[3]}: single-run best r={int(best[4])}, best mean over seeds "
                     f"r={max(means, key=means.get)} → {v}")
    return C.verdict_of(parts, verdicts, "no Table-1 row with several seeds at several ranks")

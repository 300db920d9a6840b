"""What a run's predictions say: per-item scores, the validation-chosen configuration of a setup, and whether a
cell's runs moved from their base (beat its zero-shot score and chance on the same test items).

The claims (claims, claim_ledger) and the files a study writes (results) read the runs through these.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import runs
from .verdicts import HOLDS, Scores, paired_bootstrap, scores_from_predictions, welch_interval


# --- predictions -> scores ---------------------------------------------------------------------------------
_ROWS: dict = {}   # (run folder, file) -> rows; a finished run's predictions never change, a missing file may appear


def _rows(path: str, name: str) -> tuple:
    key = (path, name)
    if key not in _ROWS:
        rows = tuple(runs.read_jsonl(Path(path) / name))
        if not rows:
            return rows
        _ROWS[key] = rows
    return _ROWS[key]


def scores_of(d: pd.DataFrame, key: str = "correct") -> Scores:
    """Per-item scores of the runs in d (one configuration), one row per seed, from predictions.jsonl."""
    d = d.drop_duplicates("seed", keep="last")
    if "path" not in d:
        return scores_from_predictions({})
    per_seed = {int(r.seed): _rows(str(r.path), "predictions.jsonl") for r in d.itertuples()}
    per_seed = {s: rows for s, rows in per_seed.items() if rows}
    return scores_from_predictions(per_seed, key, runs=[str(p) for p in d["path"]])


def zero_shot_of(d: pd.DataFrame) -> Scores | None:
    """The base model's zero-shot scores on the test items, from the first run in d that recorded them."""
    for r in d.itertuples() if "path" in d else []:
        rows = _rows(str(r.path), runs.ZERO_SHOT_FILE)
        if rows:
            return scores_from_predictions({0: rows}, runs=[str(r.path)])
    return None


def chance_of(d: pd.DataFrame) -> Scores | None:
    """Per item: 1 / number of candidates (multiple choice), from any run's predictions in d."""
    for r in d.itertuples() if "path" in d else []:
        rows = _rows(str(r.path), "predictions.jsonl")
        if rows and all("nll" in x for x in rows):
            return Scores([0], [str(x["id"]) for x in rows], np.array([[1 / len(x["nll"]) for x in rows]]))
    return None


# --- choosing a configuration -------------------------------------------------------------------------------
CONFIG_KEYS = ["qf_sublayers", "llm_targets", "rank"]


def validation_scores(d: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(d["result.val_score"], errors="coerce") if "result.val_score" in d else d["acc"]


def best_config(df: pd.DataFrame, setup: str) -> pd.DataFrame:
    """The runs of the setup's configuration (sublayers or targets, rank) with the best mean validation
    accuracy over all its configurations (the paper's Figure 2 picks over both); ties go to the
    configuration with more seeds, then the smaller rank. It is then judged on the test items."""
    d = df[(df["setup"] == setup) & (df["state"] == "done") & (df["method"] == "lora") & df["acc"].notna()]
    if d.empty:
        return d
    d = d.assign(_val=validation_scores(d))
    g = d.groupby(CONFIG_KEYS, dropna=False).agg(n=("seed", "nunique"), val=("_val", "mean")).reset_index()
    g = g.assign(_r=pd.to_numeric(g["rank"], errors="coerce").fillna(0))
    top = g.sort_values(["val", "n", "_r"], ascending=[False, False, True]).iloc[0]
    mask = np.ones(len(d), dtype=bool)
    for k in CONFIG_KEYS:
        mask &= (d[k].isna() & pd.isna(top[k])).to_numpy() | (d[k] == top[k]).fillna(False).to_numpy()
    return d[mask].drop(columns="_val")


def config_label(d: pd.DataFrame) -> str:
    r = d.iloc[0]
    rank = "" if pd.isna(r["rank"]) else f", r={int(r['rank'])}"
    return f"{r['targets']}{rank}"


# --- did a cell move from its base? --------------------------------------------------------------------------
@dataclass
class Movement:
    moved: bool
    text: str
    zero_shot: Scores | None
    chance: Scores | None


def movement(cell: pd.DataFrame) -> Movement:
    """Whether some setup's validation-chosen configuration in this LLM x benchmark cell beats both the base's
    zero-shot score on the same test items and chance, each by a paired 95% interval."""
    return _memo(cell, "setups", _movement)


_MOVED: dict = {}   # (kind, a cell's runs and states) -> answer: several claims read the same cell


def _memo(cell: pd.DataFrame, kind: str, compute):
    """compute(cell), once per kind and set of runs (with their states); uncached for a frame without paths."""
    if "path" not in cell:
        return compute(cell)
    states = cell["state"] if "state" in cell else [None] * len(cell)
    key = (kind, *sorted(zip(map(str, cell["path"]), map(str, states))))
    if key not in _MOVED:
        _MOVED[key] = compute(cell)
    return _MOVED[key]


def _movement(cell: pd.DataFrame) -> Movement:
    zs, ch = zero_shot_of(cell), chance_of(cell)
    if ch is None:
        return Movement(False, "no multiple-choice predictions", zs, ch)
    best = None
    for setup in sorted(set(cell["setup"])):
        d = best_config(cell, setup)
        if d.empty:
            continue
        a = scores_of(d)
        if not a.seeds:
            continue
        over_chance = paired_bootstrap(a, ch)
        over_zs = paired_bootstrap(a, zs) if zs is not None else None
        lo = min(over_chance.lo, over_zs.lo) if over_zs is not None else over_chance.lo
        if best is None or lo > best[0]:
            best = (lo, setup, over_zs, over_chance)
    if best is None:
        return Movement(False, "no predictions", zs, ch)
    lo, setup, over_zs, over_chance = best
    zs_text = f"vs zero-shot {over_zs.interval_text(unit=' pt')}" if over_zs is not None else "zero-shot not recorded"
    text = f"best mover {setup}: {zs_text}, vs chance {over_chance.interval_text(unit=' pt')}"
    return Movement(bool(lo > 0), text, zs, ch)


def cells_of(df: pd.DataFrame):
    return df.groupby(["llm", "benchmark"]) if len(df) else []


def runs_moved(runs_: pd.DataFrame, refs: pd.DataFrame) -> tuple[bool, str]:
    """Did these runs (one configuration, its seeds) move from their base? Their test items against the base's
    zero-shot score (recorded by a run in refs) and chance, each by a paired 95% interval above 0."""
    a, zs, ch = scores_of(runs_), zero_shot_of(refs), chance_of(runs_)
    if ch is None or not a.seeds:
        return False, "no multiple-choice predictions"
    if zs is None:
        return False, "the base's zero-shot score was not recorded"
    over = [paired_bootstrap(a, zs, label="zero-shot"), paired_bootstrap(a, ch, label="chance")]
    return all(p.lo > 0 for p in over), ", ".join(f"vs {p.label} {p.interval_text(unit=' pt')}" for p in over)


def adalora_movement(df: pd.DataFrame, llm: str, bench: str) -> tuple[bool, str]:
    """Did the AdaLoRA runs of this cell move from their base? Multiple choice: they beat the base's zero-shot
    score (recorded by the null or baseline runs) and chance on the same items; open-ended benchmarks: their
    test score beats the null runs' (seed-level t interval)."""
    cell = df[(df["llm"] == llm) & (df["benchmark"] == bench) & (df["state"] == "done")] if len(df) else df
    return _memo(cell, "adalora", _adalora_movement)


def _adalora_movement(cell: pd.DataFrame) -> tuple[bool, str]:
    real = cell[(cell["method"] == "adalora") & ~cell["null"].astype(bool)] if "null" in cell else cell.iloc[:0]
    refs = cell[cell["null"].astype(bool) | (cell["setup"] == "baseline")] if "null" in cell else cell.iloc[:0]
    if real.empty:
        return False, "no AdaLoRA runs"
    a, zs, ch = scores_of(real), zero_shot_of(refs), chance_of(real)
    if ch is not None and a.seeds:
        over = [paired_bootstrap(a, ch, label="chance")] + ([paired_bootstrap(a, zs, label="zero-shot")] if zs else [])
        text = ", ".join(f"vs {p.label} {p.interval_text(unit=' pt')}" for p in over)
        if zs is None:
            text += " (zero-shot not recorded)"
        return bool(zs is not None and all(p.lo > 0 for p in over)), text
    null = cell[cell["null"].astype(bool)] if "null" in cell else cell.iloc[:0]
    part = welch_interval(real["score"].tolist(), null["score"].tolist())
    return bool(part == HOLDS), f"test score vs null runs {part.interval_text()}"

"""The files a study writes for readers and scripts: reports/claims.json (every claim with its estimate,
interval, parts and run folders, and the learning-rate pilot), reports/table1.csv (every Table-1 cell with its
interval, the base's zero-shot score and chance on the same items, whether it moved), read back by the report."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from . import runs
from .claim import Claim, relative_path
from .scores import CONFIG_KEYS, best_config, cells_of, chance_of, scores_of, validation_scores, zero_shot_of
from .paper import SETUPS
from .report_charts import paper_runs
from .verdicts import CORRECTION, NOT_COMPARABLE, VERDICTS, paired_bootstrap


TABLE1_COLUMNS = ["llm", "benchmark", "setup", "targets", "qf_sublayers", "llm_targets", "rank", "n_seeds",
                  "n_test_items", "acc_mean", "acc_ci95_lo", "acc_ci95_hi", "zero_shot", "chance", "moved",
                  "val_mean", "chosen_on_val", "runs"]


def table1_rows(df: pd.DataFrame, root: str | Path | None = None) -> pd.DataFrame:
    """Table 1 from predictions: per cell (llm, benchmark, setup, targets, rank) the mean test accuracy over
    seeds on the items every seed has, its 95% interval (bootstrap over seeds and items), the base's
    zero-shot score and chance on the same items, whether it moved (beats both by a paired 95% interval),
    the mean validation accuracy, whether validation chose it for its setup, and its run folders."""
    d = paper_runs(df) if len(df) else df
    d = d[(d["state"] == "done") & (d["method"] == "lora") & d["acc"].notna()] if len(d) else d
    if "connector" in d:
        d = d[d["connector"].fillna("qformer") == "qformer"]
    rows = []
    for (llm, bench), cell in cells_of(d):
        zs, ch = zero_shot_of(cell), chance_of(cell)
        chosen = {s: set(best_config(cell, s)["run_id"]) for s in set(cell["setup"])}
        for key, g in cell.groupby(["setup", "targets", *CONFIG_KEYS], dropna=False):
            g = g.drop_duplicates("seed", keep="last")
            a = scores_of(g)
            if not a.seeds:
                continue
            items = a.items
            mean = paired_bootstrap(a, None)
            vs_zs = paired_bootstrap(a, zs) if zs is not None else None
            vs_ch = paired_bootstrap(a, ch) if ch is not None else None
            moved = None if vs_zs is None or vs_ch is None else bool(vs_ch.lo > 0 and vs_zs.lo > 0)
            rows.append({"llm": llm, "benchmark": bench, "setup": key[0], "targets": key[1], "qf_sublayers": key[2],
                         "llm_targets": key[3], "rank": None if pd.isna(key[4]) else int(key[4]),
                         "n_seeds": len(a.seeds), "n_test_items": len(items), "acc_mean": round(mean.estimate, 4),
                         "acc_ci95_lo": round(mean.lo, 4), "acc_ci95_hi": round(mean.hi, 4),
                         "zero_shot": round(100 * zs.on([i for i in items if i in set(zs.items)]).mean, 4)
                         if zs is not None else None,
                         "chance": round(100 * ch.on([i for i in items if i in set(ch.items)]).mean, 4)
                         if ch is not None else None,
                         "moved": moved, "val_mean": round(float(validation_scores(g).mean()), 4),
                         "chosen_on_val": set(g["run_id"]) <= chosen.get(key[0], set()),
                         "runs": ";".join(sorted(relative_path(p, root) for p in g["path"]))})
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS).astype({"rank": "Int64", "n_seeds": int, "n_test_items": int})


RATE_PILOT_COLUMNS = ["llm", "benchmark", "rate_class", "setup", "seed", "learning_rate", "val_acc", "profile_rate",
                      "chosen", "run"]


def rate_pilot(df: pd.DataFrame, root: str | Path | None = None) -> pd.DataFrame:
    """The learning-rate pilot (grid.rate_pilot_cells): per LLM and rate class ('full': the baseline, 'peft': QF
    LoRA), the validation accuracy at each rate tried with the pilot's seed: the pilot's runs (study:pilot) and the
    profile's own rate, the claim run of the same configuration. chosen: the best validation accuracy of its
    group; profile_rate: the rate the study's runs use. Selection is on validation only."""
    if df.empty or "study" not in df or not (df["study"] == "pilot").any():
        return pd.DataFrame(columns=RATE_PILOT_COLUMNS)
    done = df[(df["state"] == "done") & ~df["null"].astype(bool)]
    pilot = done[done["study"] == "pilot"]
    rows = []
    for (llm, bench, setup, seed), p in pilot.groupby(["llm", "benchmark", "setup", "seed"], dropna=False):
        own = done[(done["study"] == "paper") & (done["llm"] == llm) & (done["benchmark"] == bench)
                   & (done["setup"] == setup) & (done["seed"] == seed) & (done["method"] == "lora")]
        for k in CONFIG_KEYS:  # the claim run of the pilot's configuration (sublayers, targets, rank)
            v = p[k].iloc[0]
            own = own[own[k].isna()] if pd.isna(v) else own[own[k] == v]
        group = pd.concat([p.assign(own_rate=False), own.assign(own_rate=True)])
        group = group.assign(lr_tried=pd.to_numeric(group["result.learning_rate"], errors="coerce"),
                             val_tried=validation_scores(group))
        best = group["val_tried"].max()
        for r in group.sort_values("lr_tried").itertuples():
            rows.append({"llm": llm, "benchmark": bench, "rate_class": "full" if SETUPS[setup].qformer == "full" else "peft",
                         "setup": setup, "seed": int(seed), "learning_rate": float(r.lr_tried),
                         "val_acc": round(float(r.val_tried), 4), "profile_rate": bool(r.own_rate),
                         "chosen": bool(r.val_tried == best), "run": relative_path(r.path, root)})
    return pd.DataFrame(rows, columns=RATE_PILOT_COLUMNS)


def counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many claims got each answer (and how many parameter shares are figures, not verdicts)."""
    out = {v: 0 for v in (*VERDICTS, NOT_COMPARABLE)}
    for r in records:
        out[r["verdict"]] = out.get(r["verdict"], 0) + 1
    return out


def write_results(claims: Sequence[Claim], table: pd.DataFrame, out: str | Path, root: str | Path,
                  pilot: pd.DataFrame | None = None) -> dict[str, Path]:
    """reports/claims.json (with the learning-rate pilot's rows, when there is one) and reports/table1.csv; run
    folders are relative to root (the study's output root, the folder above reports/ by default)."""
    out = Path(out)
    records = [c.record(root) for c in claims]
    paths = {"claims": out / "claims.json", "table1": out / "table1.csv"}
    pilot_rows = [] if pilot is None else pilot.to_dict(orient="records")
    runs.write_json(paths["claims"], {"paths_relative_to": relative_path(root, out), "counts": counts(records),
                                      "level": 0.95, "correction": CORRECTION, "claims": records,
                                      "rate_pilot": pilot_rows})
    runs.atomic_write(paths["table1"], table.to_csv(index=False))
    return paths


def read_results(out: str | Path) -> tuple[dict, pd.DataFrame]:
    """(claims.json's content, table1.csv as a DataFrame) from a reports folder."""
    out = Path(out)
    return runs.read_json(out / "claims.json"), pd.read_csv(out / "table1.csv")

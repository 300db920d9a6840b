"""The claim ledger: every claim with its evidence and verdict, as the report and claims.json list them.

The paper's claims (claims.paper_claims), then the connector study's (connector_study.ledger_claims, on its
runs: tagged study:connectors), then the open questions' (open_questions.open_claims).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .claim import Claim
from .claims import paper_claims
from .config import MULTITASK_SEP
from .connector_study import ledger_claims as connector_claims
from .open_questions import MULTITASK_TASKS, open_claims
from .report_charts import paper_runs
from .scores import adalora_movement, runs_moved
from .verdicts import NOT_COMPARABLE, NOT_RESOLVABLE

# The open questions that compare trained runs, and which of them must have moved from their base for a verdict:
# the ranks past the grid and the grid's largest rank (RK-*), each training-set size (SC-data), the single-task
# AdaLoRA runs a joint budget is compared with (MT-acc).
RANK_SETUPS = {"RK-qf": "qf-lora", "RK-both": "qf-lora+llm-lora"}


def ledger(df: pd.DataFrame, ranks: pd.DataFrame | None = None,
           full_size: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
           cache_dir: str | Path | None = None) -> list[Claim]:
    """Every claim of the ledger. df: runs_frame(...) of the LoRA and AdaLoRA runs; ranks: ranks_frame(df) (the
    null runs' ranks are read from df); full_size: the full-size parameter ledger rows per LLM
    (params.parameter_ledger), or None to compute them here (cached in cache_dir when given: building the
    full-size models on the meta device takes a while)."""
    open_ = [require_moved(c, df) for c in open_claims(df, ranks)]
    return paper_claims(df, ranks, full_size, cache_dir) + connector_claims(df) + open_


def compared_runs(cid: str, df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(label, runs of one configuration, the runs of its LLM x benchmark that recorded the base's zero-shot
    score) for each group of trained runs the open question `cid` compares; [] for the others."""
    done = df[df["state"] == "done"] if len(df) and "state" in df else df.iloc[:0]
    if done.empty or "study" not in done:
        return []
    out = []

    def refs(llm: str, bench: str) -> pd.DataFrame:
        return done[(done["llm"] == llm) & (done["benchmark"] == bench)]

    if cid in RANK_SETUPS:
        setup = RANK_SETUPS[cid]
        lora = done[(done["setup"] == setup) & (done["method"] == "lora")]
        grid = paper_runs(lora)
        for (llm, bench), extra in lora[lora["study"] == "ranks"].groupby(["llm", "benchmark"]):
            g = grid[(grid["llm"] == llm) & (grid["benchmark"] == bench)]
            reference = g[g["rank"] == g["rank"].max()]           # the grid's largest rank, as rank_claim compares
            for rank, runs_ in [*reference.groupby("rank"), *extra.groupby("rank")]:
                out.append((f"{llm}/{bench} {setup} r={int(rank)}", runs_, refs(llm, bench)))
    elif cid == "SC-data":
        sc = done[(done["study"] == "scaling") & done["train_limit"].notna()] if "train_limit" in done else done.iloc[:0]
        for (llm, bench, setup, n), runs_ in sc.groupby(["llm", "benchmark", "setup", "train_limit"]):
            out.append((f"{llm}/{bench} {setup} n={int(n)}", runs_, refs(llm, bench)))
    return out


def require_moved(claim: Claim, df: pd.DataFrame) -> Claim:
    """An open question's claim, "not resolvable at this scale" when runs it compares did not move from their
    base (a difference between runs that learned nothing is not evidence either way)."""
    if claim.verdict in (NOT_RESOLVABLE, NOT_COMPARABLE):
        return claim
    if claim.id == "MT-acc":
        llms = sorted(set(df[df["benchmark"].str.contains(MULTITASK_SEP, regex=False)]["llm"])) if len(df) else []
        checks = [(f"{llm}/{t} AdaLoRA alone", *adalora_movement(df, llm, t)) for llm in llms for t in MULTITASK_TASKS]
    else:
        checks = [(label, *runs_moved(runs_, refs)) for label, runs_, refs in compared_runs(claim.id, df)]
    still = [f"{label} ({text})" for label, moved, text in checks if not moved]
    if not still:
        return claim
    return replace(claim, verdict=NOT_RESOLVABLE, evidence=f"{claim.evidence}; did not move from the base: "
                   + "; ".join(still), resolve="runs that move from their base: more training (the embedded "
                   "profiles' depth) or the paper scale")

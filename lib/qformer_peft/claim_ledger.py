"""The claim ledger: every claim with its evidence and verdict, as the report and claims.json list them.

The paper's claims (claims.paper_claims), then the connector study's (connector_study.ledger_claims, on its
runs: tagged study:connectors), then the open questions' (open_questions.open_claims).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .claim import Claim
from .claims import paper_claims
from .connector_study import ledger_claims as connector_claims
from .open_questions import open_claims


def ledger(df: pd.DataFrame, ranks: pd.DataFrame | None = None,
           full_size: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
           cache_dir: str | Path | None = None) -> list[Claim]:
    """Every claim of the ledger. df: runs_frame(...) of the LoRA and AdaLoRA runs; ranks: ranks_frame(df) (the
    null runs' ranks are read from df); full_size: the full-size parameter ledger rows per LLM
    (params.parameter_ledger), or None to compute them here (cached in cache_dir when given: building the
    full-size models on the meta device takes a while)."""
    return paper_claims(df, ranks, full_size, cache_dir) + connector_claims(df) + open_claims(df, ranks)

"""One claim of the ledger and the pieces every study's claims share.

Verdict     a judged statement's answer, evidence and parts (verdicts.Judged), before it gets its id and source
Claim       a ledger row: id, statement, source, scale, verdict, evidence; `record` is its claims.json entry
verdict_of  a claim's verdict from its parts' verdicts (or not resolvable when it has no parts)
scale_of    the scale tag(s) of a runs frame ('embedded', 'paper')
counted_runs, of_study   the finished runs that count, and those of some studies
rank_maps, heatmap_shares, share_distance, by_seed   AdaLoRA heatmaps and per-seed values as the claims read them

The paper's claims (claims), the connector study's (connector_study) and the open questions' (open_questions)
all build on this module; claim_ledger puts them together.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import runs
from .report_charts import final_ranks, sublayer_means
from .verdicts import CORRECTION, NOT_COMPARABLE, NOT_RESOLVABLE, Judged, claim_mde, combine, headline

# what resolves a claim whose runs this study did not train (a verdict needs them: "not resolvable" until then)
NOT_RUN_RESOLVE = ("the runs it reads: the embedded profiles add them with --extended (./run_all.sh or qformer-peft "
                   "study; finished cells are kept), the paper profile trains them by default")

MAP_COLUMNS = ["llm", "benchmark", "seed", "run_id", "layer", "sublayer", "mean_rank"]


@dataclass
class Verdict:
    verdict: str
    evidence: str
    parts: list = field(default_factory=list)          # Judged parts (verdicts.Judged)
    runs: list = field(default_factory=list)           # run folders read (absolute)
    resolve: str = ""                                  # what would resolve it (not resolvable only)
    unit: str = ""


@dataclass
class Claim:
    id: str
    statement: str
    source: str
    scale: str
    verdict: str
    evidence: str
    parts: list = field(default_factory=list)
    runs: list = field(default_factory=list)
    resolve: str = ""
    unit: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("id", "statement", "source", "scale", "verdict", "evidence")}

    @property
    def headline(self) -> Judged | None:
        return headline(self.parts)

    @property
    def is_figure(self) -> bool:
        return self.verdict == NOT_COMPARABLE

    def record(self, root: str | Path | None = None) -> dict[str, Any]:
        """The claim as claims.json holds it: enough to re-judge it (run folders relative to root)."""
        h = self.headline
        num = (lambda x: round(float(x), 6) if x is not None and math.isfinite(x) else None)
        rel = sorted({relative_path(p, root) for p in self.runs})
        judged = [p for p in self.parts if isinstance(p, Judged) and math.isfinite(p.lo)]
        return {"id": self.id, "statement": self.statement, "source": self.source, "scale": self.scale,
                "verdict": self.verdict, "unit": self.unit, "runs": rel,
                "estimate": num(h.estimate) if h else None, "ci95": [num(h.lo), num(h.hi)] if h else [None, None],
                "margin": h.margin if h else None, "mde": num(claim_mde(self.parts)),
                "n_seeds": min((p.n_seeds for p in self.parts if isinstance(p, Judged) and p.n_seeds), default=0),
                "n_items": min((p.n_items for p in self.parts if isinstance(p, Judged) and p.n_items), default=None),
                "correction": f"{CORRECTION} over {len(judged)} parts" if len(judged) > 1 else None,
                "resolve": self.resolve or None, "parts": [p.as_dict() for p in self.parts if isinstance(p, Judged)],
                "evidence": self.evidence}


def verdict_of(parts: list[str], verdicts: list[str], empty: str) -> Verdict:
    """The verdicts of a claim's parts combined, with the parts as evidence; without parts, not resolvable
    (`empty` says why)."""
    return (Verdict(combine(verdicts), "; ".join(parts), [v for v in verdicts if isinstance(v, Judged)])
            if parts else Verdict(NOT_RESOLVABLE, empty, resolve=NOT_RUN_RESOLVE))


def relative_path(path: str | Path, root: str | Path | None) -> str:
    """path relative to root (as claims.json and table1.csv name run folders); unchanged without a root."""
    return str(path) if root is None else os.path.relpath(Path(path).resolve(), Path(root).resolve())


def scale_of(df: pd.DataFrame) -> str:
    scales = sorted(set(df["scale"].dropna())) if "scale" in df and not df.empty else []
    return ", ".join(scales) or "unknown"


def counted_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs that count (a rerun at a lowered rate in place of the run it reruns: runs.counted)."""
    return runs.counted(df[df["state"] == "done"]) if len(df) else df


def of_study(df: pd.DataFrame, *studies: str) -> pd.DataFrame:
    """The runs of the given studies ('paper', 'scaling', 'ranks', ...)."""
    return df[df["study"].isin(studies)] if len(df) else df


def rank_maps(ranks: pd.DataFrame | None, *, query_ffn: bool = False) -> pd.DataFrame:
    """Per-run heatmap values (llm, benchmark, seed, layer, sublayer, mean_rank); query_ffn: the FFN cells
    from the query branch only (the text branch of the last layer never receives a task gradient)."""
    if ranks is None or ranks.empty:
        return pd.DataFrame(columns=MAP_COLUMNS)
    final = final_ranks(ranks)
    if query_ffn and "branch" in final:
        final = final[(final["sublayer"] != "ffn") | (final["branch"] == "query")]
    return sublayer_means(final)


def heatmap_shares(m: pd.DataFrame) -> pd.Series:
    """A heatmap as shares of its total (shape, not scale), indexed by (layer, sublayer)."""
    s = m.set_index(["layer", "sublayer"])["mean_rank"]
    return s / s.sum()


def share_distance(a: pd.Series, b: pd.Series) -> float:
    """Mean absolute difference of two heatmaps' shares (heatmap_shares), on the cells both have."""
    j = pd.concat([a, b], axis=1, join="inner")
    return float((j.iloc[:, 0] - j.iloc[:, 1]).abs().mean())


def by_seed(d: pd.DataFrame, col: str = "acc") -> dict[int, float]:
    """Mean of `col` per seed (rows without a value left out)."""
    d = d[d[col].notna()]
    return {int(s): float(v) for s, v in d.groupby("seed")[col].mean().items()}

"""The trainable-parameter ledger of the paper's grid, counted on the full-size models.

For each of the 33 runs per LLM (paper.paper_grid) a full-size InstructBLIP is built on the
meta device (no memory, no weights), adapted with `peft_setup.apply_peft` exactly as a real run is,
and its trainable parameters are counted with `peft_setup.trainable_parameters`. So the ledger is
what the code trains, not a formula. `qformer-peft params --llm flan-t5-xl|vicuna-7b [--json]`.

Columns: qformer_lora / llm_lora (adapter scalars), qformer_full (Q-Former weights trained in full),
extras (query tokens + LLM projection + post-ViT LayerNorm, trainable in every setup), total;
pct_of_baseline = 100 * total / total of the baseline (everything trainable counted);
pct_of_qformer = 100 * (qformer_lora + llm_lora) / the Q-Former's parameters (adapters against the
Q-Former they stand in for; null where the Q-Former is fully fine-tuned). rank, qf_sublayers and
llm_targets are null where the run has no such adapter.
"""
from __future__ import annotations

import argparse
import json
import sys

from .models.build import build_model
from .paper import paper_grid
from .peft_setup import apply_peft, trainable_parameters

LLMS = ("flan-t5-xl", "vicuna-7b")
KEYS = ("llm", "setup", "qf_sublayers", "llm_targets", "rank", "qformer_lora", "llm_lora", "qformer_full",
        "extras", "total", "pct_of_baseline", "pct_of_qformer")


def count_run(llm: str, setup: str, qf_sublayers=None, llm_targets=None, rank=None) -> dict[str, int]:
    """trainable_parameters of one run, on a fresh full-size meta-device model."""
    if llm not in LLMS:
        raise ValueError(f"unknown LLM {llm!r}; choose one of {', '.join(LLMS)}")
    model = build_model(llm, device="meta").model
    model = apply_peft(model, setup, qf_sublayers=qf_sublayers, llm_targets=llm_targets, rank=rank)
    return trainable_parameters(model)


def _counts(llm: str, run: dict, at_rank_one: dict) -> dict[str, int]:
    """count_run, but LoRA at rank r is r times LoRA at rank 1 (A is r x in, B is out x r): adapt the
    model once per target set and scale, instead of once per rank (peft's set-up dominates the time)."""
    if run.get("rank") is None:
        return count_run(llm, **run)
    key = (run["setup"], run.get("qf_sublayers"), run.get("llm_targets"))
    if key not in at_rank_one:
        at_rank_one[key] = count_run(llm, **{**run, "rank": 1})
    one = at_rank_one[key]
    return {g: n * run["rank"] if g in ("qformer_lora", "llm_lora") else n for g, n in one.items()}


def parameter_ledger(llm: str, grid: list[dict] | None = None) -> list[dict]:
    """One row per run of `grid` (default: the paper's 33) with the KEYS above."""
    grid = paper_grid() if grid is None else grid
    baseline = count_run(llm, "baseline")
    baseline_total = sum(baseline.values())
    rows, at_rank_one = [], {}
    for run in grid:
        counts = _counts(llm, run, at_rank_one)
        if counts["other"]:
            raise AssertionError(f"{llm} {run}: {counts['other']} trainable parameters outside the known groups")
        extras = counts["query_tokens"] + counts["projection"] + counts["vit_layernorm"]
        total = counts["qformer_full"] + counts["qformer_lora"] + counts["llm_lora"] + extras
        adapters = counts["qformer_lora"] + counts["llm_lora"]
        rows.append(dict(
            llm=llm, **run,
            qformer_lora=counts["qformer_lora"], llm_lora=counts["llm_lora"], qformer_full=counts["qformer_full"],
            extras=extras, total=total,
            pct_of_baseline=round(100 * total / baseline_total, 4),
            pct_of_qformer=None if counts["qformer_full"] else round(100 * adapters / baseline["qformer_full"], 4),
        ))
    return rows


def format_table(rows: list[dict]) -> str:
    header = ("setup", "qf_sublayers", "llm_targets", "rank", "qformer_lora", "llm_lora", "qformer_full",
              "extras", "total", "% baseline", "% Q-Former")
    def cell(v, pct=False):
        return "-" if v is None else f"{v:.2f}" if pct else f"{v:,}" if isinstance(v, int) else str(v)
    body = [(r["setup"], cell(r["qf_sublayers"]), cell(r["llm_targets"]), cell(r["rank"]), cell(r["qformer_lora"]),
             cell(r["llm_lora"]), cell(r["qformer_full"]), cell(r["extras"]), cell(r["total"]),
             cell(r["pct_of_baseline"], True), cell(r["pct_of_qformer"], True)) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    rows = parameter_ledger(args.llm)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print(f"Trainable parameters of the paper's grid, {args.llm} (full size, counted on the meta device)")
        print(format_table(rows))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("params", help="trainable-parameter ledger of the paper's grid at full size",
                              description=__doc__.splitlines()[0])
    p.add_argument("--llm", choices=LLMS, required=True)
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.set_defaults(func=_run)

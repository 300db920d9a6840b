"""The experiment grid: each profile's notebook executions as data, run with papermill.

A profile (smoke, mini, paper) expands into cells. A cell is one notebook plus the parameters papermill
injects into its `parameters` cell; the PEFT notebook sweeps the ranks (and seeds) of one row of the
paper's grid in-process, so one cell = one row = up to 4 ranks x seeds runs. The open questions
(notebooks 40-43, open_questions.py) add cells that read the paper grid's runs: each starts after the
cells it reads (Cell.after); the seeds notebook, which trains nothing, runs after every experiment.

    qformer-peft grid --profile mini [--jobs N] [--only PATTERN] [--data-root DIR] [--checkpoints DIR] [--out DIR]
                      [--model-scaling]   (the model-size axis: with_model_scaling)

Study layout under --out (the study root, default "."):
    runs/<profile>/             one folder per run (runs.RunDir), the only input of the report
    reports/notebooks/<cell>.ipynb   the executed notebooks, with <cell>.done.json / .failed.json / .log
    reports/notebooks/grid.json      the cells of the last grid and their states
    cache/features, cache/base  frozen-feature cache and the embedded base models
    data/<size>                 the synthetic benchmarks (one root per benchmark)

A cell is skipped when its marker says it finished with the same parameters, or when all its runs are
done and its executed notebook exists; a failed notebook is recorded and the grid goes on; the exit
status counts the failures. Rerunning after an interruption executes only what is missing, and the
engine skips finished runs inside a re-executed cell.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import runs
from .config import MULTITASK_SEP, ExperimentConfig, heldin_on_first_seed

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"  # the repository's notebooks/
ENVIRONMENT, PEFT, ADALORA, REPORT = ("00_environment.ipynb", "10_peft_experiment.ipynb",
                                     "20_adalora_analysis.ipynb", "90_report.ipynb")
NULL_TAG = "study:null"  # null runs are kept out of the paper's grid (report_charts.paper_runs) by this tag
PILOT_TAG = "study:pilot"  # the learning-rate pilot's runs at rates other than the profile's (claims.rate_pilot)
# The open questions (issue 7 §2, open_questions.py): one notebook each; the seeds one only reads runs.
MULTITASK, SCALING, RANK_SENSITIVITY, SEEDS = ("40_multitask_adalora.ipynb", "41_scaling.ipynb",
                                               "42_rank_sensitivity.ipynb", "43_seeds.ipynb")
# The connector study (issue 7 §1, connector_study.py): one notebook per (LLM, benchmark, connector set).
CONNECTORS = "30_connectors.ipynb"
OPEN_QUESTION_OF = {MULTITASK: "multitask", SCALING: "scaling", RANK_SENSITIVITY: "ranks"}
KERNEL_NAME = "qformer-peft"           # a kernelspec written by the grid: this interpreter's ipykernel
# papermill waits 60 s for a kernel by default; on the 2-core machine, with two workers starting kernels beside a
# test run, one kernel once took longer (a clean-clone CI run) and its notebook was recorded as failed
KERNEL_START_TIMEOUT = 300
MAX_EXIT_STATUS = 100                  # the exit status counts failures, capped below the shell's 126+
FINAL_KINDS = ("analysis", "report")   # executed after every experiment cell, when anything ran

# --- the paper's grid as data (PROTOCOL §2 and §6) --------------------------------------------------
LLMS = ("t5", "llama")
PEFT_BENCHMARKS = ("scienceqa", "iconqa")
ADALORA_BENCHMARKS = ("scienceqa", "iconqa", "flickr30k", "vizwiz")
RANKS = (1, 2, 4, 8)
# One notebook per row: (setup, Q-Former sublayers, LLM targets). 8 rows x 4 ranks + the baseline = 33
# runs per LLM x benchmark, 132 for 2 LLMs x 2 benchmarks.
PEFT_ROWS: tuple[tuple[str, str | None, str | None], ...] = (
    ("qf-fft+llm-lora", None, "ffn"), ("qf-fft+llm-lora", None, "attn"), ("qf-fft+llm-lora", None, "all"),
    ("qf-lora", "ffn", None), ("qf-lora", "self_attn", None), ("qf-lora", "cross_attn", None),
    ("qf-lora", "all", None),
    ("qf-lora+llm-lora", "all", "all"),
    ("baseline", None, None),
)
# The rows the claim ledger compares (claims.py picks each setup's best rank among them); they get the
# profile's claim seeds so the ledger can judge a difference against the spread over seeds.
CLAIM_ROWS = (("baseline", None, None), ("qf-lora", "all", None), ("qf-lora+llm-lora", "all", "all"))

# PROTOCOL §6 / paper appendix C: the captioning and VizWiz AdaLoRA settings. The paper names LAVIS's
# linear_warmup_cosine_lr without its warm-up length; 1000 steps is LAVIS's caption-config default.
PAPER_ADALORA_HPARAMS = {
    "flickr30k": {"max_epochs": 5, "schedule": "cosine", "warmup_steps": 1000, "lr": 5e-5, "batch_size": 60,
                  "grad_accum": 1},
    "vizwiz": {"max_epochs": 5, "schedule": "cosine", "warmup_steps": 1000, "lr": 1e-4, "batch_size": 8,
               "grad_accum": 1},
}


class GridError(ValueError):
    """A profile or cell that cannot run; the message says what is missing and how to supply it."""


@dataclass(frozen=True)
class RerunRule:
    """The paper's rerun rule (docs/protocol.md §4): after a grid row's runs, a run is trained again at a
    lowered learning rate (lr_qformer_full when the Q-Former is fully fine-tuned, else lr_peft) when it stopped early
    having run fewer than min_epochs epochs, or when its best validation score lies more than `gap` points below
    the mean of its neighbours in r (the finished runs at the adjacent ranks of the same row and seed). Validation,
    not test: choosing runs to redo by their test scores would select on the test set. The rerun is a new run
    (config fields lr, rerun_of, rerun_reason; the evidence in its folder's rerun.json) that counts in place of the
    original (runs.counted), whose folder stays; a rerun is never rerun."""
    min_epochs: int = 8
    gap: float = 10.0
    lr_qformer_full: float = 1e-5
    lr_peft: float = 1e-4

    def lowered_lr(self, config: ExperimentConfig) -> float:
        return self.lr_qformer_full if config.qformer_full else self.lr_peft


def as_rerun_rule(rule: "RerunRule | Mapping[str, Any] | None") -> RerunRule | None:
    """A rule as given, or from its fields (papermill passes it as a dict); None: no rule."""
    if rule is None or isinstance(rule, RerunRule):
        return rule
    try:
        return RerunRule(**rule)
    except TypeError:
        raise GridError(f"rerun_rule={dict(rule)!r}: its fields are min_epochs, gap, lr_qformer_full, "
                        f"lr_peft") from None


@dataclass(frozen=True)
class Rerun:
    """One planned rerun: its config and why (the numbers the rule read)."""
    config: ExperimentConfig
    evidence: Mapping[str, Any]


def plan_reruns(configs: Sequence[ExperimentConfig], runs_dir: str | Path,
                rule: "RerunRule | Mapping[str, Any] | None") -> list[Rerun]:
    """The reruns `rule` asks for among the finished runs of `configs` (one notebook's rows), read from their run
    folders' result.json (stopped_early, epochs, val_score); none without a rule. Reruns among the configs, runs
    not finished and runs whose rate is already at or below the lowered one are left as they are."""
    rule = as_rerun_rule(rule)
    if rule is None:
        return []
    rows: dict[str, list[ExperimentConfig]] = {}
    for cfg in configs:  # a row: everything but the rank (so the same setup, targets, LLM, benchmark and seed)
        rows.setdefault(runs.config_hash({k: v for k, v in cfg.to_dict().items() if k != "rank"}), []).append(cfg)
    out = []
    for sweep in rows.values():
        sweep = sorted(sweep, key=lambda c: c.rank or 0)
        results = [_done_result(runs_dir, c) for c in sweep]
        for i, (cfg, res) in enumerate(zip(sweep, results)):
            lowered = rule.lowered_lr(cfg)
            if res is None or cfg.rerun_of is not None or cfg.learning_rate <= lowered:
                continue
            reasons = []
            if res.get("stopped_early") and res.get("epochs", rule.min_epochs) < rule.min_epochs:
                reasons.append("stopped_early")
            neighbours = {sweep[j].rank: results[j]["val_score"] for j in (i - 1, i + 1)
                          if 0 <= j < len(sweep) and results[j] is not None
                          and results[j].get("val_score") is not None}
            mean = sum(neighbours.values()) / len(neighbours) if neighbours else None
            if mean is not None and res.get("val_score") is not None and mean - res["val_score"] > rule.gap:
                reasons.append("below_neighbours")
            if reasons:
                evidence = {"rerun_of": f"{cfg.run_name}-{cfg.hash}", "reasons": reasons, "rule": asdict(rule),
                            "lr": {"original": cfg.learning_rate, "rerun": lowered},
                            **{k: res.get(k) for k in ("epochs", "best_epoch", "stopped_early", "val_score")},
                            "neighbours_val_score": {str(r): v for r, v in neighbours.items()},
                            "neighbours_mean": mean}
                out.append(Rerun(cfg.replace(lr=lowered, rerun_of=cfg.hash, rerun_reason="+".join(reasons)),
                                 evidence))
    return out


def _done_result(runs_dir: str | Path, cfg: ExperimentConfig) -> dict | None:
    run = runs.RunDir(Path(runs_dir) / f"{cfg.run_name}-{cfg.hash}")  # the engine's folder name (RunDir.open)
    return run.result if run.is_done() else None


@dataclass(frozen=True)
class Profile:
    """One profile as data. `models` maps an LLM to a preset name or a path template ({checkpoints})."""
    name: str
    description: str
    scale: str                                        # 'embedded' (synthetic world) | 'paper' (real data)
    models: Mapping[str, str]
    data_size: str | None                             # synthetic size to write; None: real data (--data-root)
    base_models: tuple[tuple[str, str], ...] = ()     # (preset, llm) the study builds before the grid
    peft_cells: tuple[tuple[str, str, str, str | None, str | None], ...] | None = None  # None: full grid
    adalora_cells: tuple[tuple[str, str], ...] | None = None                             # None: full grid
    # null AdaLoRA runs (config.shuffle_answers: same schedule, shuffled training answers) per (llm, benchmark):
    # the spread the allocation claims are judged against; null_seeds () = the claim seeds
    adalora_null_cells: tuple[tuple[str, str], ...] = ()
    null_seeds: tuple[int, ...] = ()
    ranks: tuple[int, ...] = RANKS
    seeds: tuple[int, ...] = (42,)
    claim_seeds: tuple[int, ...] = (42,)
    hparams: Mapping[str, Any] = field(default_factory=dict)               # every run
    hparams_by_llm: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hparams_by_method: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # 'lora' | 'adalora'
    adalora_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by benchmark
    data_seed: int = 0
    # the open questions (issue 7 §2); empty leaves a question out. Their runs get the claim seeds.
    multitask_llms: tuple[str, ...] = ()              # one joint ScienceQA + IconQA AdaLoRA cell per LLM
    scaling_cells: tuple[tuple[str, str], ...] = ()   # (llm, benchmark): QF LoRA vs baseline against size
    train_limits: tuple[int, ...] = ()                # training-set sizes besides the profile's own
    scaling_models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # llm -> larger models, ascending
    rank_cells: tuple[tuple[str, str], ...] = ()      # (llm, benchmark): ranks past the paper's grid
    extra_ranks: tuple[int, ...] = (16, 32)
    seeds_analysis: bool = True                       # 43_seeds: spread and orderings of multi-seed cells
    # (llm, benchmark, connector set: 'smoke' | 'claims' | 'budgets' of connector_study) and the alignment
    # steps every connector gets on the held-in tasks first; the paper scale has no held-in tasks to align on
    connector_cells: tuple[tuple[str, str, str], ...] = ()
    # 400: the fifth fresh-clone study's 600-step curves kept every connector's held-in loss order from step 300
    # on except the Bottleneck Adapter against the linear projector (tied at 300); 18 alignments of 600 steps
    # were 659 of its ~3,900 grid worker-s
    align_steps: int = 400
    # --model-scaling: the model-size axis as an opt-in addition (with_model_scaling): base models the study
    # builds besides base_models, and the scaling_models the open question then trains on. Empty: no opt-in.
    model_scaling_bases: tuple[tuple[str, str], ...] = ()
    model_scaling_models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the paper's rerun rule for the rows of its grid (RerunRule); None: every run counts as trained
    rerun_rule: RerunRule | None = None
    # Table-1 rows outside CLAIM_ROWS: hyperparameters on top of the profile's (e.g. fewer epochs)
    other_rows_hparams: Mapping[str, Any] = field(default_factory=dict)
    # the learning-rate pilot: factors of the profile's lr_full / lr_peft tried with the baseline and QF LoRA (all
    # sublayers, the largest rank) on rate_pilot_benchmark, first claim seed; the claim run is the factor-1 point
    rate_pilot: tuple[float, ...] = ()
    rate_pilot_llms: tuple[str, ...] = LLMS
    rate_pilot_benchmark: str = "iconqa"


def with_model_scaling(profile: "Profile") -> "Profile":
    """The same profile (same name, so the same runs folder, notebooks and skip markers) plus its model-size
    axis: every cell of the profile keeps its parameters, so a finished study only executes the new
    open_scaling_model_* cells (and the report), after the study has built the extra base models."""
    if not profile.model_scaling_models:
        has = profile.scaling_models and "its scaling_models are always on" or "it has no model-size axis"
        raise GridError(f"profile {profile.name!r} has no --model-scaling option: {has}; "
                        f"profiles with one: {', '.join(n for n, p in PROFILES.items() if p.model_scaling_models)}")
    import dataclasses

    return dataclasses.replace(profile, base_models=(*profile.base_models, *profile.model_scaling_bases),
                               scaling_models={**profile.scaling_models, **profile.model_scaling_models})


def with_full_grid(profile: "Profile") -> "Profile":
    """The same profile with the paper's whole grid at claim depth: every Table-1 row at every rank of RANKS on the
    claim seeds with the profile's own hyperparameters, and AdaLoRA on every LLM x benchmark. The same name (runs
    folder): the cells the default profile finished are reused where their configs are the same."""
    import dataclasses

    return dataclasses.replace(profile, ranks=RANKS, seeds=profile.claim_seeds, other_rows_hparams={},
                               adalora_cells=None)


def resolve_profile(profile: "Profile | str", model_scaling: bool = False, full_grid: bool = False) -> "Profile":
    """A profile by name (or as given), with its model-size axis when model_scaling, its whole grid at claim
    depth when full_grid."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    p = with_full_grid(p) if full_grid else p
    return with_model_scaling(p) if model_scaling else p


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", scale="embedded",
        description="every code path on the tiny preset (random weights) and a few hundred synthetic items",
        models={"t5": "tiny", "llama": "tiny"}, data_size="smoke",
        peft_cells=(("t5", "iconqa", "baseline", None, None), ("t5", "iconqa", "qf-lora", "all", None),
                    ("t5", "iconqa", "qf-lora+llm-lora", "all", "all"),
                    ("llama", "scienceqa", "qf-fft+llm-lora", None, "attn"),
                    ("llama", "scienceqa", "qf-lora", "self_attn", None)),
        adalora_cells=(("t5", "iconqa"), ("t5", "scienceqa"), ("t5", "flickr30k"), ("t5", "vizwiz")),
        ranks=(2, 4), seeds=(42,), claim_seeds=(42,), adalora_null_cells=(("t5", "iconqa"),),
        hparams={"max_epochs": 2, "patience": 2, "batch_size": 8, "train_limit": 16, "val_limit": 8,
                 "test_limit": 8, "lr_full": 2e-5, "lr_peft": 5e-4},
        rate_pilot=(4.0,), rate_pilot_llms=("t5",), other_rows_hparams={"max_epochs": 1},
        adalora_hparams={b: {"schedule": "cosine", "warmup_steps": 2} for b in ("flickr30k", "vizwiz")},
        # every open question's notebook (the model-size axis of 41_scaling has its own tests)
        multitask_llms=("t5",), scaling_cells=(("t5", "iconqa"),), train_limits=(8,),
        connector_cells=(("t5", "iconqa", "smoke"),), align_steps=4,
        rank_cells=(("t5", "iconqa"),), extra_ranks=(16, 32),
        # --model-scaling on random-weight presets: the model-size path of 41_scaling in seconds
        model_scaling_models={"t5": ("tiny-deep", "tiny-wide")},
    ),
    "mini": Profile(
        name="mini", scale="embedded",
        description="the paper's grid and AdaLoRA analysis on the embedded base models and synthetic benchmarks, "
                    "deep where the claims are judged: 3 seeds, rates from a validation pilot, 1,000 test items",
        models={"t5": "{checkpoints}/mini-t5", "llama": "{checkpoints}/mini-llama"}, data_size="mini",
        base_models=(("mini", "t5"), ("mini", "llama")),
        seeds=(42,), claim_seeds=(42, 43, 44),
        # Depth where the claims are judged (docs/power.md says why; README, Deviations): whole training sets (IconQA
        # 3,000, ScienceQA 2,000 items: 188 / 125 steps an epoch), 4 epochs, early stopping after 2 without a
        # validation gain on 300 items (AdaLoRA never stops early: engine.effective_patience), tested on 1,000.
        # The rates are this scale's, not the paper's (2e-5 / 5e-4 moved nothing here); rate_pilot retries each at
        # 1/4 and 4x on validation, and the report shows whether the profile's rate was the best.
        hparams={"max_epochs": 4, "patience": 2, "heldin_limit": 300, "lr_full": 5e-4},
        hparams_by_llm={"t5": {"lr_peft": 5e-3}, "llama": {"lr_peft": 2e-3}},
        rate_pilot=(0.25, 4.0),
        ranks=(8,),
        # the Table-1 rows no claim compares: one seed, two epochs (shown with their intervals, not judged)
        other_rows_hparams={"max_epochs": 2},
        adalora_hparams={b: {"schedule": "cosine", "warmup_steps": 10} for b in ("flickr30k", "vizwiz")},
        # the allocation claims' null: T5 on the four benchmarks, LLaMA on the two of Table 1
        adalora_null_cells=(("t5", "iconqa"), ("t5", "scienceqa"), ("t5", "flickr30k"), ("t5", "vizwiz"),
                            ("llama", "iconqa"), ("llama", "scienceqa")), null_seeds=(42, 43),
        adalora_cells=(("t5", "scienceqa"), ("t5", "iconqa"), ("t5", "flickr30k"), ("t5", "vizwiz"),
                       ("llama", "scienceqa"), ("llama", "iconqa")),
        multitask_llms=("t5",), scaling_cells=(("t5", "iconqa"),), train_limits=(300, 1000),
        connector_cells=(("t5", "iconqa", "claims"),),
        rank_cells=(("t5", "iconqa"),), extra_ranks=(32,),
        # --model-scaling: T5 base models twice as deep and twice as wide (Q-Former and LLM; the same frozen
        # encoder: presets.SCALED_FROM), then baseline and QF LoRA (3 seeds) on each for IconQA.
        model_scaling_bases=(("mini-deep", "t5"), ("mini-wide", "t5")),
        model_scaling_models={"t5": ("{checkpoints}/mini-deep-t5", "{checkpoints}/mini-wide-t5")},
    ),
    "paper": Profile(
        name="paper", scale="paper",
        description="real checkpoints and data with the paper's hyperparameters (CUDA); 3 seeds for the "
                    "cells the claim ledger compares (the paper's numbers are single runs)",
        models={"t5": "{checkpoints}/instructblip-flan-t5-xl", "llama": "{checkpoints}/instructblip-vicuna-7b"},
        data_size=None, seeds=(42,), claim_seeds=(42, 43, 44),
        hparams={},                                        # ExperimentConfig's defaults are PROTOCOL §4
        hparams_by_llm={"llama": {"batch_size": 8, "grad_accum": 2}},
        adalora_hparams=PAPER_ADALORA_HPARAMS,
        multitask_llms=LLMS, scaling_cells=tuple((l, b) for l in LLMS for b in PEFT_BENCHMARKS),
        train_limits=(1000, 3000),
        # width/depth: the next InstructBLIP size of each LLM (same Q-Former); a cell fails with a clear
        # message when its checkpoint is not under --checkpoints
        scaling_models={"t5": ("{checkpoints}/instructblip-flan-t5-xxl",),
                        "llama": ("{checkpoints}/instructblip-vicuna-13b",)},
        rank_cells=tuple((l, b) for l in LLMS for b in PEFT_BENCHMARKS), extra_ranks=(16, 32),
        rerun_rule=RerunRule(),
    ),
}


# --- one row of the grid -> its run configs (the notebooks call this too) -----------------------------
def experiment_configs(*, benchmark: str, llm: str, model: str, data_dir: str, setup: str = "qf-lora",
                       qf_sublayers: str | None = "all", llm_targets: str | None = None, method: str = "lora",
                       ranks: Sequence[int | None] = RANKS, seeds: Sequence[int] = (42,),
                       hparams: Mapping[str, Any] | None = None,
                       tags: Sequence[str] = ()) -> list[ExperimentConfig]:
    """The validated configs of one notebook: every rank x seed of one grid row (AdaLoRA: every seed).

    data_dir holds one root per benchmark (as `data synth` writes it); the config gets data_dir/benchmark,
    or data_dir itself for a joint benchmark ('scienceqa+iconqa': one root per task there).
    hparams are further ExperimentConfig fields (max_epochs, train_limit, lr, ...).
    """
    joint = MULTITASK_SEP in benchmark
    base = {"benchmark": benchmark, "llm": llm, "model": str(model),
            "data_root": str(Path(data_dir) if joint else Path(data_dir) / benchmark), "setup": setup, "method": method,
            "qf_sublayers": qf_sublayers, "llm_targets": llm_targets, "tags": list(tags), **dict(hparams or {})}
    if method == "adalora":       # AdaLoRA's ranks are adalora_init_r / adalora_target_r, not a sweep
        ranks = (None,)
    elif setup == "baseline":     # no LoRA: one run per seed
        ranks = (None,)
    return [ExperimentConfig.from_dict(heldin_on_first_seed({**base, "rank": r, "seed": s}, seeds))
            for r in ranks for s in seeds]


@dataclass(frozen=True)
class Cell:
    """One notebook execution: the notebook's file name and the parameters papermill injects."""
    name: str
    notebook: str
    parameters: Mapping[str, Any]
    after: tuple[str, ...] = ()      # cells whose runs this one reads: it starts when they have finished

    @property
    def kind(self) -> str:
        """environment | experiment | analysis (reads runs only; runs after the experiments) | report"""
        return {ENVIRONMENT: "environment", REPORT: "report", SEEDS: "analysis"}.get(self.notebook, "experiment")

    def configs(self) -> list[ExperimentConfig]:
        """The runs this cell trains (an open question: the ones it owns, not those it reads)."""
        if self.kind != "experiment":
            return []
        if self.notebook == CONNECTORS:
            from .connector_study import cell_configs

            return cell_configs(**self.parameters)
        if self.notebook in OPEN_QUESTION_OF:
            from .open_questions import plan

            return plan(OPEN_QUESTION_OF[self.notebook], **self.parameters).own
        keys = ("benchmark", "llm", "model", "data_dir", "setup", "qf_sublayers", "llm_targets", "method",
                "ranks", "seeds", "hparams", "tags")
        return experiment_configs(**{k: self.parameters[k] for k in keys if k in self.parameters})

    @property
    def params_hash(self) -> str:
        return runs.config_hash({"notebook": self.notebook, **self.parameters})


@dataclass(frozen=True)
class Layout:
    """Where a study's pieces live under its root (see the module docstring)."""
    root: Path

    def runs(self, profile: str) -> Path:
        return self.root / "runs" / profile

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def notebooks_out(self) -> Path:
        return self.reports / "notebooks"

    @property
    def features(self) -> Path:
        return self.root / "cache" / "features"

    @property
    def base_models(self) -> Path:
        return self.root / "cache" / "base"

    def data(self, size: str) -> Path:
        return self.root / "data" / size


def resolve_paths(profile: Profile, layout: Layout, data_root: str | None = None,
                  checkpoints: str | None = None) -> tuple[Path, str]:
    """The data directory (one root per benchmark) and the checkpoints location for a profile.

    Order: the argument, then $QFP_DATA_ROOT / $QFP_CHECKPOINTS, then the study layout (embedded only).
    """
    data_root = data_root or os.environ.get("QFP_DATA_ROOT")
    checkpoints = checkpoints or os.environ.get("QFP_CHECKPOINTS")
    if profile.data_size is None and not data_root:
        raise GridError(f"profile {profile.name!r} needs real data: pass --data-root DIR or set QFP_DATA_ROOT "
                        f"(DIR/scienceqa, DIR/iconqa, DIR/vizwiz, DIR/flickr30k in their real layouts)")
    needs_ckpt = any("{checkpoints}" in m for m in profile.models.values())
    if needs_ckpt and not checkpoints and profile.scale == "paper":
        raise GridError(f"profile {profile.name!r} needs real checkpoints: pass --checkpoints DIR (holding "
                        f"instructblip-flan-t5-xl/ and instructblip-vicuna-7b/) or a hub namespace such as "
                        f"Salesforce, or set QFP_CHECKPOINTS")
    data_dir = Path(data_root).resolve() if data_root else layout.data(profile.data_size).resolve()
    if not checkpoints:
        checkpoints = str(layout.base_models.resolve())
    elif Path(checkpoints).exists():
        checkpoints = str(Path(checkpoints).resolve())
    return data_dir, checkpoints


def expand(profile: Profile | str, *, root: str | Path = ".", data_root: str | None = None,
           checkpoints: str | None = None, model_scaling: bool = False, full_grid: bool = False) -> list[Cell]:
    """The profile's cells in execution order: environment, experiments, then the report. model_scaling adds
    the profile's model-size axis (with_model_scaling); full_grid runs its whole grid at claim depth."""
    profile = resolve_profile(profile, model_scaling, full_grid)
    layout = Layout(Path(root).resolve())
    data_dir, ckpt = resolve_paths(profile, layout, data_root, checkpoints)
    runs_dir = str(layout.runs(profile.name))
    common = {"runs_dir": runs_dir, "cache_dir": str(layout.features), "data_dir": str(data_dir),
              "data_size": profile.data_size, "data_seed": profile.data_seed}
    tags = [f"profile:{profile.name}", f"scale:{profile.scale}"]

    def model(llm: str) -> str:
        return profile.models[llm].format(checkpoints=ckpt)

    def hparams(llm: str, benchmark: str | None = None, method: str = "lora") -> dict:
        h = {**profile.hparams, **profile.hparams_by_llm.get(llm, {}), **profile.hparams_by_method.get(method, {})}
        return {**h, **profile.adalora_hparams.get(benchmark, {})} if benchmark else h

    cells = [Cell("environment", ENVIRONMENT, {**common, "checkpoints": ckpt, "profile": profile.name})]
    peft = profile.peft_cells or tuple((llm, b, *row) for llm in LLMS for b in PEFT_BENCHMARKS for row in PEFT_ROWS)
    for llm, bench, setup, qf, llm_t in peft:
        claim_row = (setup, qf, llm_t) in CLAIM_ROWS
        name = peft_cell_name(llm, bench, setup, qf, llm_t)
        cells.append(Cell(name, PEFT, {
            "benchmark": bench, "llm": llm, "model": model(llm), "setup": setup, "qf_sublayers": qf,
            "llm_targets": llm_t, "ranks": list(profile.ranks),
            "seeds": list(profile.claim_seeds if claim_row else profile.seeds),
            "hparams": hparams(llm) if claim_row else {**hparams(llm), **profile.other_rows_hparams},
            "tags": tags, **common, **({"rerun_rule": asdict(profile.rerun_rule)} if profile.rerun_rule else {})}))
    cells += rate_pilot_cells(profile, model=model, hparams=hparams, tags=tags, common=common)
    adalora = profile.adalora_cells or tuple((llm, b) for llm in LLMS for b in ADALORA_BENCHMARKS)
    for llm, bench in adalora:
        cells.append(Cell(f"adalora_{llm}_{bench}", ADALORA, {
            "benchmark": bench, "llm": llm, "model": model(llm), "method": "adalora",
            "seeds": list(profile.claim_seeds), "hparams": hparams(llm, bench, "adalora"), "tags": tags, **common}))
    for llm, bench in profile.adalora_null_cells:
        cells.append(Cell(f"adalora-null_{llm}_{bench}", ADALORA, {
            "benchmark": bench, "llm": llm, "model": model(llm), "method": "adalora",
            "seeds": list(profile.null_seeds or profile.claim_seeds),
            "hparams": {**hparams(llm, bench, "adalora"), "shuffle_answers": True},
            "tags": [*tags, NULL_TAG], **common}))
    cells += connector_cells(profile, model=model, hparams=hparams, tags=tags, common=common)
    cells += open_question_cells(profile, checkpoints=ckpt, hparams=hparams, tags=tags, common=common,
                                 names={c.name for c in cells})
    cells.append(Cell("report", REPORT, {"runs_dir": runs_dir, "notebooks_dir": str(layout.notebooks_out),
                                         "cache_dir": str(layout.root / "cache")}))
    for c in cells:
        c.configs()  # validate now: a bad profile fails before anything runs
    return cells


def rate_pilot_cells(profile: Profile, *, model: Callable[[str], str], hparams: Callable[..., dict],
                     tags: Sequence[str], common: Mapping[str, Any]) -> list[Cell]:
    """The learning-rate pilot's notebooks: one run each (first claim seed) of the baseline at lr_full x factor and
    of QF LoRA (all sublayers, largest rank) at lr_peft x factor. The profile's own rate is factor 1: its claim
    run, trained by the Table-1 cell, so the pilot only adds the other factors."""
    out = []
    for llm in profile.rate_pilot_llms if profile.rate_pilot else ():
        h = hparams(llm)
        for key, setup, qf, rank in (("lr_full", "baseline", None, None), ("lr_peft", "qf-lora", "all", max(profile.ranks))):
            if h.get(key) is None:
                raise GridError(f"profile {profile.name!r}: its rate pilot scales {key}, which its hparams do not set "
                                f"for {llm}")
            for factor in profile.rate_pilot:
                rate = float(f"{h[key] * factor:.6g}")
                out.append(Cell(f"pilot_{llm}_{key}_{rate:g}", PEFT, {
                    "benchmark": profile.rate_pilot_benchmark, "llm": llm, "model": model(llm), "setup": setup,
                    "qf_sublayers": qf, "llm_targets": None, "ranks": [rank], "seeds": [profile.claim_seeds[0]],
                    "hparams": {**h, key: rate}, "tags": [*tags, PILOT_TAG], **common}))
    return out


def peft_cell_name(llm: str, bench: str, setup: str, qf: str | None, llm_t: str | None) -> str:
    return "_".join(p for p in ("peft", llm, bench, setup.replace("+", "-"), qf, llm_t) if p)


def connector_cells(profile: Profile, *, model: Callable[[str], str], hparams: Callable[..., dict],
                    tags: Sequence[str], common: Mapping[str, Any]) -> list[Cell]:
    """The connector study's notebooks: the claim connectors on the claim seeds, the other budgets on one."""
    from . import connector_study as cs

    sets = {"smoke": (cs.SMOKE_CONNECTORS, profile.seeds), "claims": (cs.CLAIM_CONNECTORS, profile.claim_seeds),
            "budgets": (cs.BUDGET_CONNECTORS, profile.seeds)}
    out = []
    first: dict[tuple[str, str], str] = {}  # (llm, set) -> the first cell that aligns those connectors
    for llm, bench, which in profile.connector_cells:
        connectors, seeds = sets[which]
        name = f"connectors_{llm}_{bench}_{which}"
        # The alignments are shared across benchmarks (cached per base, connector and seed): a second cell of the
        # same set started beside the first would wait on each alignment's lock, holding a worker idle; after
        # the first, it only reads them.
        after = (first[(llm, which)],) if (llm, which) in first else ()
        first.setdefault((llm, which), name)
        out.append(Cell(name, CONNECTORS, {
            "benchmark": bench, "llm": llm, "model": model(llm), "connectors": [dict(c) for c in connectors],
            "seeds": list(seeds), "align_steps": profile.align_steps, "hparams": hparams(llm),
            "tags": list(tags), **common}, after))
    return out


def open_question_cells(profile: Profile, *, checkpoints: str, hparams: Callable[..., dict], tags: Sequence[str],
                        common: Mapping[str, Any], names: set[str]) -> list[Cell]:
    """The profile's open-question notebooks. Each reads runs of the paper's grid (the same configs, so the
    same run folders) and starts after the cells that train them (`after`, limited to cells in `names`)."""
    from .open_questions import MULTITASK_TASKS, RANK_ROWS, SCALING_ROWS

    seeds = list(profile.claim_seeds)
    out = []

    def model(llm: str) -> str:
        return profile.models[llm].format(checkpoints=checkpoints)

    def add(name: str, notebook: str, params: dict, after: Sequence[str] = ()) -> None:
        out.append(Cell(name, notebook, {**params, "seeds": seeds, "tags": list(tags), **common},
                        tuple(a for a in after if a in names)))

    for llm in profile.multitask_llms:
        add(f"open_multitask_{llm}", MULTITASK, {"llm": llm, "model": model(llm), "tasks": list(MULTITASK_TASKS),
                                                 "hparams": hparams(llm, method="adalora")},
            [f"adalora_{llm}_{t}" for t in MULTITASK_TASKS])
    for llm, bench in profile.scaling_cells:
        params = {"llm": llm, "benchmark": bench, "model": model(llm), "rank": max(profile.ranks),
                  "hparams": hparams(llm)}
        after = [peft_cell_name(llm, bench, *row) for row in SCALING_ROWS]
        if profile.train_limits:
            add(f"open_scaling_data_{llm}_{bench}", SCALING,
                {**params, "train_limits": list(profile.train_limits), "models": []}, after)
        if profile.scaling_models.get(llm):
            larger = [m.format(checkpoints=checkpoints) for m in profile.scaling_models[llm]]
            add(f"open_scaling_model_{llm}_{bench}", SCALING, {**params, "train_limits": [], "models": larger}, after)
    for llm, bench in profile.rank_cells:
        add(f"open_ranks_{llm}_{bench}", RANK_SENSITIVITY,
            {"llm": llm, "benchmark": bench, "model": model(llm), "ranks": list(profile.ranks),
             "extra_ranks": list(profile.extra_ranks), "hparams": hparams(llm)},
            [peft_cell_name(llm, bench, *row) for row in RANK_ROWS])
    if profile.seeds_analysis:
        out.append(Cell("open_seeds", SEEDS, {"runs_dir": common["runs_dir"]}))
    return out


def describe_profiles() -> "Any":
    """One row per profile and opt-in variant: what it runs (for 00_environment). Paths are placeholders."""
    import pandas as pd

    rows = []
    variants = [(p, "") for p in PROFILES.values()]
    variants += [(with_model_scaling(p), " --model-scaling") for p in PROFILES.values() if p.model_scaling_models]
    for p, option in variants:
        cells = expand(p, root="<out>", data_root="<data-root>" if p.data_size is None else None,
                       checkpoints="<checkpoints>")
        exp = [c for c in cells if c.kind == "experiment"]
        cfgs = [cfg for c in exp for cfg in c.configs()]
        rows.append({"profile": p.name + option, "scale": p.scale, "notebooks": len(cells),
                     "peft_notebooks": sum(c.notebook == PEFT for c in exp),
                     "adalora_notebooks": sum(c.notebook == ADALORA for c in exp),
                     "open_question_notebooks": sum(c.notebook in (MULTITASK, SCALING, RANK_SENSITIVITY, SEEDS)
                                                    for c in cells),
                     "runs": len(cfgs), "seeds": ",".join(map(str, p.seeds)),
                     "claim_seeds": ",".join(map(str, p.claim_seeds)), "what": p.description})
    return pd.DataFrame(rows)


def inventory(profile: str, data_dir: str | Path, checkpoints: str) -> "Any":
    """Which benchmark roots and model checkpoints a profile needs, and whether each is present."""
    import pandas as pd

    p = PROFILES[profile]
    rows = [{"what": f"benchmark {b}", "where": str(Path(data_dir) / b), "present": (Path(data_dir) / b).exists()}
            for b in ADALORA_BENCHMARKS]
    for llm, spec in p.models.items():
        model = spec.format(checkpoints=checkpoints)
        present = Path(model).exists() if Path(model).is_absolute() else "preset or hub id"
        rows.append({"what": f"model ({llm})", "where": model, "present": present})
    return pd.DataFrame(rows)


def cells_table(profile: str, *, runs_dir: str | Path, data_dir: str | Path, data_size: str | None,
                checkpoints: str) -> "Any":
    """The cells a profile executes (for the study whose runs live in runs_dir = ROOT/runs/PROFILE)."""
    import pandas as pd

    cells = expand(profile, root=Path(runs_dir).resolve().parents[1], data_root=None if data_size else str(data_dir),
                   checkpoints=checkpoints)
    return pd.DataFrame([{"cell": c.name, "notebook": c.notebook, "runs": len(c.configs())} for c in cells])


# --- helpers the notebooks call ------------------------------------------------------------------------
def ensure_data(data_dir: str | Path, size: str | None, seed: int = 0) -> Path:
    """The benchmarks under data_dir; with a size, write the synthetic ones first if they are missing."""
    data_dir = Path(data_dir)
    marker = data_dir / ".complete"
    if size is None or marker.exists():
        return data_dir
    from .data import synthetic  # the data stage; ModuleNotFoundError names it when not built yet

    synthetic.synthesize(data_dir, size, seed)
    runs.write_json(marker, {"size": size, "seed": seed})
    return data_dir


class CellFailed(RuntimeError):
    """Some runs of a notebook failed; the others finished. The message lists each failure."""


def run_configs(configs: Sequence[ExperimentConfig], *, runs_dir: str | Path, cache_dir: str | Path | None = None,
                rerun_rule: RerunRule | Mapping[str, Any] | None = None):
    """Run every config with the engine (finished runs are skipped by it), then the reruns rerun_rule asks for
    (plan_reruns; each folder gets rerun.json, the evidence), then return the rows of both (load_runs' superseded
    column marks the runs a finished rerun replaces).

    A failing run does not stop the others; CellFailed is raised at the end, naming each failure.
    """
    from . import engine
    from .report_charts import runs_frame

    failures = []

    def run_all(cfgs: Sequence[ExperimentConfig]) -> None:
        for cfg in cfgs:
            try:
                engine.run_experiment(cfg, out=runs_dir, cache_dir=cache_dir)
            except Exception as err:  # noqa: BLE001 - recorded in the run folder by the engine; listed here
                failures.append(f"{cfg.run_name}: {type(err).__name__}: {err}")

    run_all(configs)
    reruns = plan_reruns(configs, runs_dir, rerun_rule)
    for r in reruns:
        folder = runs.RunDir.open(runs_dir, r.config.to_dict(), prefix=r.config.run_name).path
        if not (folder / "rerun.json").exists():
            runs.write_json(folder / "rerun.json", dict(r.evidence))
    run_all([r.config for r in reruns])
    if failures:
        total = len(configs) + len(reruns)
        raise CellFailed(f"{len(failures)} of {total} runs failed:\n  " + "\n  ".join(failures))
    return runs_frame(runs_dir, [*configs, *(r.config for r in reruns)])


# --- executing cells -------------------------------------------------------------------------------------
def done_run_hashes(runs_dir: str | Path) -> set[str]:
    """Config hashes of the finished runs under runs_dir."""
    return {runs.config_hash(r.config) for r in runs.iter_runs(runs_dir) if r.is_done()}


@dataclass
class Outcome:
    cell: str
    state: str                  # 'done' | 'skipped' | 'failed' | 'not run' (an optional input is absent)
    seconds: float = 0.0
    error: str | None = None


def _marker(out_dir: Path, cell: Cell, suffix: str) -> Path:
    return out_dir / f"{cell.name}.{suffix}.json"


def is_finished(cell: Cell, out_dir: Path, done_hashes: set[str] | None = None) -> bool:
    """Marker with the same parameters, or (experiments) every run done and the notebook kept."""
    marker = _marker(out_dir, cell, "done")
    if marker.exists() and runs.read_json(marker).get("params_hash") == cell.params_hash:
        return True
    if cell.kind == "experiment" and (out_dir / f"{cell.name}.ipynb").exists():
        hashes = done_hashes if done_hashes is not None else done_run_hashes(cell.parameters["runs_dir"])
        configs = cell.configs()
        if not all(cfg.hash in hashes for cfg in configs):
            return False
        reruns = plan_reruns(configs, cell.parameters["runs_dir"], cell.parameters.get("rerun_rule"))
        return all(r.config.hash in hashes for r in reruns)
    return False


def write_kernelspec(where: Path) -> Path:
    """A kernelspec named KERNEL_NAME that starts this interpreter's ipykernel; returns its JUPYTER_PATH.

    kernel_name 'python3' would resolve to the first python3 spec on the Jupyter path, which may be a
    user-wide one pointing at another interpreter; this one is always the venv running the grid.
    """
    spec_dir = where / "kernels" / KERNEL_NAME
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (qformer-peft)", "language": "python"}
    runs.write_json(spec_dir / "kernel.json", spec)
    return where


def _model_missing(model: str, *, paper: bool) -> str | None:
    """Why a cell's model is not at hand (a local checkpoint absent, or a hub id that cannot be fetched), else None."""
    from .models.sources import PAPER_CHECKPOINT_LAYOUT, hub_offline_error, looks_like_hub_id

    path = Path(model)
    if path.exists() or (not path.is_absolute() and model in _presets()):
        return None
    if not path.is_absolute() and looks_like_hub_id(model):
        return hub_offline_error(model)
    if paper:
        return (f"model checkpoint {model} not found: put the InstructBLIP checkpoint there in the hub layout "
                f"({PAPER_CHECKPOINT_LAYOUT}), e.g. `huggingface-cli download Salesforce/{path.name} --local-dir "
                f"{model}`, or pass --checkpoints DIR holding it")
    return (f"model checkpoint {model} not found: build it with `qformer-peft study --profile ...` "
            f"(base-model stage; add --model-scaling for the model-size axis's bases) or pass --checkpoints DIR")


def _presets() -> set[str]:
    from .models.presets import PRESETS

    return set(PRESETS)


def _is_paper(cell: Cell) -> bool:
    return "scale:paper" in cell.parameters.get("tags", ())


def _missing_input(cell: Cell) -> str | None:
    """A reason not to start the notebook: its model checkpoint or benchmark root is absent."""
    if cell.kind != "experiment":
        return None
    for m in [cell.parameters["model"], *cell.parameters.get("models", [])]:
        reason = _model_missing(str(m), paper=_is_paper(cell))
        if reason:
            return reason
    for bench in cell.parameters.get("tasks") or [cell.parameters["benchmark"]]:
        root = Path(cell.parameters["data_dir"]) / bench
        if cell.parameters.get("data_size") is None and not root.exists():
            return f"benchmark root {root} not found: pass --data-root DIR holding {bench}/"
    return None


def _not_run(cell: Cell) -> str | None:
    """'not run: needs ...' for a paper-scale model-size cell whose larger checkpoints are absent: that axis is
    optional (the paper's grid does not need it), so the study goes on and exits 0 for the rest."""
    if cell.kind != "experiment" or not _is_paper(cell) or not cell.parameters.get("models"):
        return None
    absent = [str(m) for m in cell.parameters["models"] if _model_missing(str(m), paper=True)]
    if not absent:
        return None
    return "not run: needs " + "; ".join(_model_missing(m, paper=True) for m in absent)


def missing_inputs(cells: Sequence[Cell], building: Iterable[str | Path] = ()) -> list[str]:
    """Every input the cells need that is absent, each once, in cell order: checked before the first run starts, so
    a grid fails at once with the whole list instead of one notebook at a time. `building`: checkpoints the study
    builds first. The optional model-size checkpoints of the paper scale are left out (those cells are not run)."""
    building = {Path(b).resolve() for b in building}
    out: list[str] = []
    for cell in cells:
        if cell.kind != "experiment":
            continue
        optional = set(map(str, cell.parameters.get("models", []))) if _is_paper(cell) else set()
        for m in [cell.parameters["model"], *cell.parameters.get("models", [])]:
            m = str(m)
            if m in optional or (Path(m).is_absolute() and Path(m).resolve() in building):
                continue
            reason = _model_missing(m, paper=_is_paper(cell))
            if reason and reason not in out:
                out.append(reason)
        for bench in cell.parameters.get("tasks") or [cell.parameters["benchmark"]]:
            root = Path(cell.parameters["data_dir"]) / bench
            reason = f"benchmark root {root} not found: pass --data-root DIR holding {bench}/ in its published layout"
            if cell.parameters.get("data_size") is None and not root.exists() and reason not in out:
                out.append(reason)
    return out


def check_inputs(cells: Sequence[Cell], building: Iterable[str | Path] = ()) -> None:
    """GridError listing every missing input (missing_inputs), or nothing."""
    missing = missing_inputs(cells, building)
    if missing:
        raise GridError(f"{len(missing)} input(s) missing; nothing was started:\n  " + "\n  ".join(missing))


def _notebook_error(path: Path) -> str | None:
    """The first error output of an executed notebook, as 'Name: value (cell N)'."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for i, c in enumerate(nb.get("cells", [])):
        for o in c.get("outputs", []) if c.get("cell_type") == "code" else []:
            if o.get("output_type") == "error":
                return f"{o.get('ename')}: {o.get('evalue')} (cell {i})"
    return None


class _Children:
    """The papermill processes now running, so an interrupt can stop them all."""

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def terminate(self) -> None:
        with self.lock:
            self.stopping = True
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()


def execute_cell(cell: Cell, *, notebooks_dir: Path, out_dir: Path, kernel: str, env: Mapping[str, str],
                 timeout: float | None = None, children: _Children | None = None) -> Outcome:
    """Execute one notebook with papermill in a child process; write its marker or failure record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    output, log = out_dir / f"{cell.name}.ipynb", out_dir / f"{cell.name}.log"
    _marker(out_dir, cell, "done").unlink(missing_ok=True)
    start = time.time()
    skip = _not_run(cell)
    if skip:
        runs.write_json(_marker(out_dir, cell, "not-run"), {"cell": cell.name, "notebook": cell.notebook,
                                                             "reason": skip, "recorded": runs._now()})
        return Outcome(cell.name, "not run", 0.0, skip)
    reason = _missing_input(cell)
    error = None
    if reason is None:
        spec = out_dir / f".{cell.name}.spec.json"
        runs.write_json(spec, {"input": str(notebooks_dir / cell.notebook), "output": str(output),
                               "parameters": dict(cell.parameters), "kernel": kernel, "cwd": str(notebooks_dir),
                               "timeout": timeout})
        with open(log, "w") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "qformer_peft.grid", "--execute", str(spec)],
                                    stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **env})
            if children is not None:
                with children.lock:
                    children.procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                if children is not None:
                    with children.lock:
                        children.procs.discard(proc)
        spec.unlink(missing_ok=True)
        if rc != 0:
            error = _notebook_error(output) or _log_tail(log) or f"papermill exited with status {rc}"
    else:
        error = reason
    seconds = round(time.time() - start, 2)
    if error is None:
        hashes = [cfg.hash for cfg in cell.configs()]
        runs.write_json(_marker(out_dir, cell, "done"), {
            "cell": cell.name, "notebook": cell.notebook, "parameters": dict(cell.parameters),
            "params_hash": cell.params_hash, "config_hashes": hashes, "seconds": seconds,
            "finished": runs._now()})
        _marker(out_dir, cell, "failed").unlink(missing_ok=True)
        return Outcome(cell.name, "done", seconds)
    runs.write_json(_marker(out_dir, cell, "failed"), {
        "cell": cell.name, "notebook": cell.notebook, "parameters": dict(cell.parameters), "error": error,
        "log": log.name, "seconds": seconds, "failed": runs._now()})
    return Outcome(cell.name, "failed", seconds, error)


def _log_tail(log: Path, lines: int = 3) -> str | None:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:]) or None


def _execute_main(spec_path: str) -> int:
    """Child process: execute one notebook as the spec file says (JSON, so floats stay floats)."""
    import papermill as pm

    spec = runs.read_json(spec_path)
    try:
        pm.execute_notebook(spec["input"], spec["output"], parameters=spec["parameters"],
                            kernel_name=spec["kernel"], cwd=spec["cwd"], progress_bar=False, log_output=True,
                            execution_timeout=spec.get("timeout"), start_timeout=KERNEL_START_TIMEOUT)
    except pm.PapermillExecutionError as err:
        print(f"[grid] {err.ename}: {err.evalue} (cell {err.exec_count})", file=sys.stderr)
        return 1
    return 0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_jobs() -> int:
    """Workers for --jobs 0: one per GPU, else one single-threaded worker per core (at most 8): small
    models keep one core busier than two cores share one model."""
    return _gpu_count() or max(1, min(_cores(), 8))


def _worker_env(slot: int, jobs: int, gpus: int) -> dict[str, str]:
    """Threads and device of one worker: cores split between CPU workers, one GPU per worker."""
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "QFP_WORKER": str(slot)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    threads = str(max(1, _cores() // jobs))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "QFP_NUM_THREADS": threads})
    return env


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: CPU workers
        return 0


@dataclass
class GridResult:
    outcomes: list[Outcome]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state == "failed"]

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def exit_status(self) -> int:
        return min(len(self.failures), MAX_EXIT_STATUS)


def run_grid(cells: Sequence[Cell], *, out_dir: str | Path, notebooks_dir: str | Path = NOTEBOOKS_DIR,
             jobs: int = 1, backend: str = "local", kernel: str | None = None, timeout: float | None = None,
             builds: Any = None, log: Callable[[str], None] = print) -> GridResult:
    """Execute the cells not yet finished; the report cell last, whenever anything else ran.

    builds (study.Builds, local backend): base models still being built beside the grid. A cell waits while
    builds.blocks(cell), and builds.cores() of the `jobs` workers stay free for them."""
    out_dir, notebooks_dir = Path(out_dir).resolve(), Path(notebooks_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = jobs if jobs > 0 else auto_jobs()
    env: dict[str, str] = {}
    if kernel is None:
        kernel = KERNEL_NAME
        jpath = write_kernelspec(out_dir / ".jupyter")
        env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(jpath), os.environ.get("JUPYTER_PATH")) if p)
    main = [c for c in cells if c.kind not in FINAL_KINDS]
    final = [c for c in cells if c.kind in FINAL_KINDS]
    hashes: dict[str, set[str]] = {}

    def finished(c: Cell) -> bool:
        rd = c.parameters.get("runs_dir")
        if c.kind == "experiment" and rd not in hashes:
            hashes[rd] = done_run_hashes(rd)
        return is_finished(c, out_dir, hashes.get(rd))

    outcomes = [Outcome(c.name, "skipped") for c in main if finished(c)]
    todo = [c for c in main if c.name not in {o.cell for o in outcomes}]
    manifest = {c.name: {"notebook": c.notebook, "state": "pending"} for c in cells}
    for o in outcomes:
        manifest[o.cell]["state"] = "skipped"
    lock = threading.Lock()

    def record(o: Outcome) -> None:
        with lock:
            outcomes.append(o)
            manifest[o.cell].update(state=o.state, seconds=o.seconds, error=o.error)
            runs.write_json(out_dir / "grid.json", {"order": order, "cells": manifest, "updated": runs._now()})
            done = sum(x.state != "skipped" for x in outcomes)
            msg = f"[grid] {o.state:7s} {o.cell} ({o.seconds:.1f} s)" + (f": {o.error}" if o.error else "")
            log(msg + f"  [{done}/{len(todo) + len(final)}]")

    order = [c.name for c in cells]  # grid.json's keys get sorted; the report lists cells in this order
    runs.write_json(out_dir / "grid.json", {"order": order, "cells": manifest, "updated": runs._now()})
    log(f"[grid] {len(cells)} cells: {len(outcomes)} already finished, {len(todo)} to execute "
        f"({jobs} worker{'s' if jobs > 1 else ''}, backend {backend})")
    if backend == "submitit":
        if builds is not None and builds.cores():
            raise GridError("the submitit backend runs after the base models are built, not beside them")
        _run_submitit(todo + final, notebooks_dir=notebooks_dir, out_dir=out_dir, kernel=kernel, env=env,
                      timeout=timeout, record=record, run_final=lambda: bool(todo) or not all(map(finished, final)))
        return GridResult(outcomes)
    if backend != "local":
        raise GridError(f"backend {backend!r} is not known; choose local or submitit")

    gpus = _gpu_count() if jobs > 1 else 0
    slots: queue.Queue[int] = queue.Queue()
    for i in range(jobs):
        slots.put(i)
    children = _Children()

    def work(c: Cell) -> None:
        if children.stopping:
            return
        slot = slots.get()
        try:
            record(execute_cell(c, notebooks_dir=notebooks_dir, out_dir=out_dir, kernel=kernel,
                                env={**env, **_worker_env(slot, jobs, gpus)}, timeout=timeout, children=children))
        finally:
            slots.put(slot)

    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:  # a SIGTERM stops the children too instead of orphaning them
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        waiting = {c.name for c in todo}  # a cell starts once the cells it reads (`after`) are no longer waiting
        pending = start_order(todo)
        running: list[threading.Thread] = []
        while pending or running:  # at most `jobs` threads alive; the slot queue hands out devices
            running = [t for t in running if t.is_alive()]
            with lock:
                waiting -= {o.cell for o in outcomes}
            building = builds.cores() if builds is not None else 0
            startable = [c for c in pending if not (building and builds.blocks(c))]
            # nothing ready and nothing running or building (cells waiting on each other): start one anyway
            ready = ([c for c in startable if not waiting & set(c.after)]
                     or (startable[:1] if not running and not building else []))
            for c in ready[:max(0, jobs - building - len(running))]:
                pending.remove(c)
                t = threading.Thread(target=work, args=(c,), daemon=True)
                t.start()
                running.append(t)
            time.sleep(0.05)
        while builds is not None and builds.cores():  # no experiment cell left: the report reads every model's runs
            time.sleep(0.5)
        for c in final:
            if todo or not finished(c):
                work(c)
            else:
                record(Outcome(c.name, "skipped"))
    except KeyboardInterrupt:
        children.terminate()
        log("[grid] interrupted: rerun the same command to execute what is missing")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return GridResult(outcomes)


def start_order(cells: Sequence[Cell]) -> list[Cell]:
    """The order workers take cells in: longest first, so that no worker is left with a long notebook at the end
    while the others idle. The connector notebooks (each aligns several connectors first) were the longest of
    the mini grid (920 worker-s in 4 notebooks) and are listed after the paper's grid; the rest keep their order."""
    return sorted(cells, key=lambda c: c.notebook != CONNECTORS)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_submitit(cells: Sequence[Cell], *, notebooks_dir: Path, out_dir: Path, kernel: str, env: Mapping[str, str],
                  timeout: float | None, record: Callable[[Outcome], None], run_final: Callable[[], bool],
                  executor: Any = None) -> None:
    """Each notebook as a submitit job (Slurm where there is one, else submitit's local executor)."""
    try:
        import submitit
    except ImportError:
        raise GridError("--backend submitit needs the optional extra: pip install 'qformer-peft[slurm]'") from None
    if executor is None:
        executor = submitit.AutoExecutor(folder=out_dir / ".submitit")
        executor.update_parameters(timeout_min=int((timeout or 24 * 3600) / 60) + 5, gpus_per_node=1,
                                   tasks_per_node=1, cpus_per_task=8, name="qformer-peft")
    main = [c for c in cells if c.kind not in FINAL_KINDS]
    final = [c for c in cells if c.kind in FINAL_KINDS]
    kwargs = {"notebooks_dir": notebooks_dir, "out_dir": out_dir, "kernel": kernel, "env": dict(env),
              "timeout": timeout}
    for wave in ([c for c in main if not c.after], [c for c in main if c.after]):  # readers after the others
        jobs = [(c, executor.submit(execute_cell, c, **kwargs)) for c in wave]
        for c, job in jobs:
            try:
                record(job.result())
            except Exception as err:  # noqa: BLE001 - the job itself died (node lost, time limit)
                record(Outcome(c.name, "failed", error=f"submitit job {job.job_id}: {type(err).__name__}: {err}"))
    for c in final:
        if run_final():
            record(executor.submit(execute_cell, c, **kwargs).result())


# --- command line ---------------------------------------------------------------------------------------
def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="mini", choices=sorted(PROFILES), help="which grid (default mini)")
    p.add_argument("--jobs", type=int, default=0,
                   help="parallel notebook workers; CPU: cores split between them; 0 (default): one per GPU, "
                        "else one per core")
    p.add_argument("--only", metavar="PATTERN",
                   help="run only the experiment cells whose name matches this regular expression")
    p.add_argument("--data-root", help="real data root: DIR/scienceqa, DIR/iconqa, ... (or $QFP_DATA_ROOT)")
    p.add_argument("--checkpoints", help="checkpoints root or hub namespace (or $QFP_CHECKPOINTS)")
    p.add_argument("--out", default=".", help="study root: runs/, reports/, cache/, data/ (default: .)")
    p.add_argument("--model-scaling", action="store_true",
                   help="add the model-size axis (mini: T5 base models twice as deep and twice as wide, built "
                        "first; finished cells are kept, only the new ones run)")
    p.add_argument("--full-grid", action="store_true",
                   help="the paper's whole grid at claim depth: every Table-1 row at ranks 1, 2, 4, 8 on the claim "
                        "seeds, AdaLoRA on every LLM x benchmark (mini: the default runs the claim rows at rank 8)")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("grid", help="execute a profile's notebooks with papermill",
                              description=__doc__.splitlines()[0])
    add_common_arguments(p)
    p.add_argument("--backend", default="local", choices=("local", "submitit"),
                   help="local worker processes, or one submitit (Slurm) job per notebook")
    p.add_argument("--timeout", type=float, help="seconds allowed per notebook cell execution")
    p.add_argument("--kernel", help="Jupyter kernel name (default: this interpreter's ipykernel)")
    p.add_argument("--list", action="store_true", help="print the cells and whether each is finished, then exit")
    p.set_defaults(func=main)


def select(cells: Iterable[Cell], only: str | None) -> list[Cell]:
    """Experiment cells matching the pattern; the environment and report cells always stay."""
    if not only:
        return list(cells)
    try:
        rx = re.compile(only)
    except re.error as err:
        raise GridError(f"--only {only!r} is not a valid regular expression: {err}") from None
    return [c for c in cells if c.kind != "experiment" or rx.search(c.name)]


def main(args: argparse.Namespace) -> int:
    try:
        cells = select(expand(args.profile, root=args.out, data_root=args.data_root,
                              checkpoints=args.checkpoints, model_scaling=args.model_scaling,
                              full_grid=args.full_grid), args.only)
        if not args.list:
            check_inputs(cells)
    except GridError as err:
        print(f"qformer-peft grid: {err}", file=sys.stderr)
        return 2
    out_dir = Layout(Path(args.out).resolve()).notebooks_out
    if args.list:
        for c in cells:
            state = "finished" if is_finished(c, out_dir) else "to run"
            print(f"{c.name:55s} {c.notebook:26s} {len(c.configs()):3d} runs  {state}")
        return 0
    profile = PROFILES[args.profile]
    if profile.data_size:
        try:
            ensure_data(cells[0].parameters["data_dir"], profile.data_size, profile.data_seed)
        except ModuleNotFoundError as err:
            print(f"qformer-peft grid: the synthetic benchmarks are missing from {cells[0].parameters['data_dir']} "
                  f"and cannot be written: {err.name} is not built yet", file=sys.stderr)
            return 2
    result = run_grid(cells, out_dir=out_dir, jobs=max(0, args.jobs), backend=args.backend, kernel=args.kernel,
                      timeout=args.timeout)
    print(f"[grid] {result.count('done')} executed, {result.count('skipped')} skipped, "
          f"{len(result.failures)} failed; notebooks in {out_dir}")
    for o in result.failures:
        print(f"[grid] FAILED {o.cell}: {o.error} (log: {out_dir / (o.cell + '.log')})", file=sys.stderr)
    return result.exit_status


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--execute":
        sys.exit(_execute_main(sys.argv[2]))
    sys.exit("usage: qformer-peft grid ... (python -m qformer_peft.grid --execute SPEC is internal)")

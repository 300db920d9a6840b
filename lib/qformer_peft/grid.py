"""The study's profiles (smoke, mini, paper) as data: what each trains, on which models, with which seeds.

A profile expands into cells (grid_cells.expand); schedule runs them and study runs a profile end to end.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .paper import LLMS, PAPER_ADALORA_HPARAMS, PEFT_BENCHMARKS, RANKS
from .reruns import RerunRule


class GridError(ValueError):
    """A profile or cell that cannot run; the message says what is missing and how to supply it."""


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
    adalora_seeds: tuple[int, ...] = ()               # the AdaLoRA cells' seeds; () = the claim seeds
    ranks: tuple[int, ...] = RANKS
    seeds: tuple[int, ...] = (42,)
    claim_seeds: tuple[int, ...] = (42,)
    hparams: Mapping[str, Any] = field(default_factory=dict)               # every run
    hparams_by_llm: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hparams_by_method: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # 'lora' | 'adalora'
    adalora_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by benchmark
    data_seed: int = 0
    # the open questions (open_questions.py); empty leaves a question out. Their runs get the claim seeds.
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
    # 400 steps: the connectors' held-in loss order is settled by then (docs/decisions.md, the connector study)
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
    # --extended: the fields (dataclasses.replace keywords) that add what the default cannot power within its
    # budget; the claims of the parts left out are "not resolvable at this scale" (claim_ledger). Empty: no opt-in.
    extended: Mapping[str, Any] = field(default_factory=dict)


def with_model_scaling(profile: "Profile") -> "Profile":
    """The same profile (same name, so the same runs folder, notebooks and skip markers) plus its model-size
    axis: every cell of the profile keeps its parameters, so a finished study only executes the new
    open_scaling_model_* cells (and the report), after the study has built the extra base models."""
    if not profile.model_scaling_models:
        has = profile.scaling_models and "its scaling_models are always on" or "it has no model-size axis"
        raise GridError(f"profile {profile.name!r} has no --model-scaling option: {has}; "
                        f"profiles with one: {', '.join(n for n, p in PROFILES.items() if p.model_scaling_models)}")
    return dataclasses.replace(profile, base_models=(*profile.base_models, *profile.model_scaling_bases),
                               scaling_models={**profile.scaling_models, **profile.model_scaling_models})


def with_full_grid(profile: "Profile") -> "Profile":
    """The same profile with the paper's whole grid at claim depth: every Table-1 row at every rank of RANKS on the
    claim seeds with the profile's own hyperparameters, and AdaLoRA on every LLM x benchmark on the claim seeds. The
    same name (runs folder): the cells the default profile finished are reused where their configs are the same."""
    return dataclasses.replace(profile, ranks=RANKS, seeds=profile.claim_seeds, other_rows_hparams={},
                               adalora_cells=None, adalora_seeds=())


def with_extended(profile: "Profile") -> "Profile":
    """The same profile (same name and runs folder) plus what its default leaves out to keep within its budget
    (Profile.extended): finished cells are reused, only the added ones run."""
    if not profile.extended:
        raise GridError(f"profile {profile.name!r} has no --extended option: it runs all its studies by default; "
                        f"profiles with one: {', '.join(n for n, p in PROFILES.items() if p.extended)}")
    return dataclasses.replace(profile, **profile.extended)


def resolve_profile(profile: "Profile | str", model_scaling: bool = False, full_grid: bool = False,
                    extended: bool = False) -> "Profile":
    """A profile by name (or as given), with its model-size axis when model_scaling, its whole grid at claim
    depth when full_grid, the studies its default leaves out when extended."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    p = with_extended(p) if extended else p
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
        # 3,000, ScienceQA 2,000 items: 188 / 125 steps an epoch), up to 8 epochs, early stopping after 2 without a
        # validation gain on 300 items, tested on 1,000. AdaLoRA's schedule spans 4 epochs and never stops early
        # (engine.effective_patience). The rates are this scale's, not the paper's (2e-5 / 5e-4 moved nothing
        # here); rate_pilot retries each at 1/4 and 4x on validation, and the report shows whether the profile's
        # rate was the best.
        hparams={"max_epochs": 8, "patience": 2, "heldin_limit": 300, "lr_full": 5e-4},
        hparams_by_llm={"t5": {"lr_peft": 5e-3}, "llama": {"lr_peft": 2e-3}},
        hparams_by_method={"adalora": {"max_epochs": 4}},
        rate_pilot=(0.25, 4.0),
        ranks=(8,),
        # the Table-1 rows no claim compares: one seed, two epochs (shown with their intervals, not judged)
        other_rows_hparams={"max_epochs": 2},
        adalora_hparams={b: {"schedule": "cosine", "warmup_steps": 10} for b in ("flickr30k", "vizwiz")},
        # AdaLoRA's paper cells (the heatmaps) on one seed; the allocation claims need 3 seeds and null runs: --extended
        adalora_cells=(("t5", "scienceqa"), ("t5", "iconqa"), ("t5", "flickr30k"), ("t5", "vizwiz"),
                       ("llama", "scienceqa"), ("llama", "iconqa")), adalora_seeds=(42,),
        # what the default leaves out to keep its budget (docs/power.md): the AdaLoRA claims' seeds and null runs
        # (T5 on the four benchmarks, LLaMA on the two of Table 1), the connector study and the open questions
        # that train (multi-task AdaLoRA, training-set size, ranks past the paper's grid)
        extended={"adalora_seeds": (),
                  "adalora_null_cells": (("t5", "iconqa"), ("t5", "scienceqa"), ("t5", "flickr30k"),
                                         ("t5", "vizwiz"), ("llama", "iconqa"), ("llama", "scienceqa")),
                  "null_seeds": (42, 43), "multitask_llms": ("t5",), "train_limits": (300, 1000), "connector_cells": (("t5", "iconqa", "claims"),),
                  "rank_cells": (("t5", "iconqa"),)},
        scaling_cells=(("t5", "iconqa"),), extra_ranks=(32,),
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
        hparams={},                                        # ExperimentConfig's defaults are docs/protocol.md §4
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

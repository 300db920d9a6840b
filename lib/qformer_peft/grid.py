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


def resolve_profile(profile: "Profile | str", model_scaling: bool = False) -> "Profile":
    """A profile by name (or as given), with its model-size axis when model_scaling."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
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
                 "test_limit": 8},
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
        description="the paper's full grid and the AdaLoRA analysis on the embedded base models and "
                    "synthetic benchmarks; 3 seeds for the cells the claim ledger compares",
        models={"t5": "{checkpoints}/mini-t5", "llama": "{checkpoints}/mini-llama"}, data_size="mini",
        base_models=(("mini", "t5"), ("mini", "llama")),
        seeds=(42,), claim_seeds=(42, 43, 44),
        # Sized for the 45-minute budget on a 2-core CPU, by a measured fresh-clone run (README, Performance):
        # with max_epochs 4, heldin_limit 300 and connector budgets on both benchmarks the whole study took
        # 52.6 min (base models 14.7, grid 37.5: 297 runs; training 2490 worker-s, ScienceQA steps 143 ms
        # against IconQA's 66 ms for their longer prompts; held-in scoring ~480, two ~0.8 s passes a run;
        # test ranking 340; notebook start-ups ~8 s each). Half the runs peaked at epoch 1 and 12 of 297 at
        # epoch 4, so 3 epochs. Held-in cost on the same 300 held-in val lines the base's build report scores
        # (its figure is the table's reference): 150 lines saved ~2 minutes but compared the runs with a base
        # figure from other lines (LLaMA's runs then seemed to gain held-in accuracy by adapting).
        # Measured on each cell's first seed only (config.heldin_on_first_seed).
        # Early stopping at the first epoch without a validation gain (patience 1; the paper's 3 of 15 epochs, scaled):
        # measured on the fourth fresh-clone study (patience 2), 176 of its 264 LoRA runs had no gain at epoch 2,
        # and 136 of them none at epoch 3 either (same test score either way); the other 40 gained one to three
        # val items (1.6-4.7 points of 64) at epoch 3. Their third epochs cost 417 worker-s. AdaLoRA runs keep
        # patience 2, i.e. never stop early in 3 epochs: their rank budget is scheduled over all the steps, and
        # an early stop would leave the heatmaps an unfinished allocation.
        hparams={"max_epochs": 3, "patience": 1, "train_limit": 320, "val_limit": 64, "test_limit": 256,
                 "heldin_limit": 300},
        hparams_by_method={"adalora": {"patience": 2}},
        adalora_hparams={b: {"schedule": "cosine", "warmup_steps": 10} for b in ("flickr30k", "vizwiz")},
        # the allocation claims' null: T5 on the four benchmarks (C1-C5 as the paper states them), LLaMA on
        # the two of Table 1; 2 seeds each (a t interval needs 2), 12 AdaLoRA runs
        adalora_null_cells=(("t5", "iconqa"), ("t5", "scienceqa"), ("t5", "flickr30k"), ("t5", "vizwiz"),
                            ("llama", "iconqa"), ("llama", "scienceqa")), null_seeds=(42, 43),
        # The open questions at a small added cost: 33 runs, measured at 300 s of single-threaded run time
        # on the 2-core CPU under load 5-11 (~150 s with two workers, plus 4 notebook start-ups): joint
        # AdaLoRA on T5 (3 runs, ~29 s each), training-set size 40/80/160 on T5 IconQA (18 runs, 3-7 s),
        # r = 16, 32 on T5 IconQA (12 runs, 9-14 s). Width/depth needs base models of other sizes, whose
        # builds do not fit the 45-minute budget: it is the opt-in below (--model-scaling).
        multitask_llms=("t5",), scaling_cells=(("t5", "iconqa"),), train_limits=(40, 80, 160),
        # the connector claims on both benchmarks, the token-budget curve on IconQA (ScienceQA's was 310 s)
        connector_cells=(("t5", "iconqa", "claims"), ("t5", "scienceqa", "claims"), ("t5", "iconqa", "budgets")),
        rank_cells=(("t5", "iconqa"),), extra_ranks=(16, 32),
        # --model-scaling: T5 base models twice as deep and twice as wide (Q-Former and LLM; the same frozen
        # encoder: presets.SCALED_FROM), built with mini's recipe, then baseline and QF LoRA (rank 8, 3 seeds: 12
        # runs) on each for IconQA. Ordered by parameter count, ascending (tests/test_models.py): mini-t5 1.60 M,
        # mini-deep-t5 2.27 M, mini-wide-t5 3.65 M (0.83 M of each the shared vision tower; above it 0.77, 1.45
        # and 2.83 M).
        # Measured after a fresh mini study on the 2-core CPU: 20.2 min (the two builds side by side 1,041 s,
        # stage 1 reused; the 12 runs in one notebook 143 s; the report 11 s).
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

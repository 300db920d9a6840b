"""How an embedded base model is built: each stage's epochs, batch and rate, and what its report measures.

RECIPES by preset (the scaled presets follow their root preset), LLM_RECIPES per (preset, LLM) adjustments;
recipe_for puts them together. A recipe is part of a build's cache key (base.build_key).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..models.presets import SCALED_FROM, root_preset

LLMS = ("t5", "llama")


@dataclass(frozen=True)
class Recipe:
    """How long each stage trains and what the report measures. Part of the cache key."""

    # stage 1: vision encoder on dense labels
    vision_epochs: int
    vision_batch: int = 16
    vision_lr: float = 1e-3
    vision_flip: bool = True
    vision_threads: int | None = 1        # torch threads for stage 1 (see threads)
    # stage 2: language model on text (0 epochs: no text stage, the default: docs/embedded-models.md),
    # T5 prefix LM / LLaMA causal LM
    text_epochs: int = 0
    text_batch: int = 32
    text_lr: float = 1e-3
    # stage 3: Q-Former between them; stage3_llm 'trained' alongside (the default) or 'frozen' (BLIP-2's
    # recipe, needs a text stage first)
    qformer_epochs: int = 1
    qformer_batch: int = 16
    qformer_lr: float = 1e-3
    qformer_warmup: int = 100
    stage3_llm: str = "trained"
    qformer_from: str | None = None       # stage 3 starts from this LLM's build's Q-Former + query tokens (same
                                          # preset, seed, data; built first if missing: qformer_source); None:
                                          # from scratch
    mc_fraction: float = 0.25             # share of the questions also asked with lettered options
    extra_per_picture: int = 1            # heldin.EXTRA_QUESTIONS asked per held-in picture
    context_per_picture: int = 0          # heldin.CONTEXT_QUESTIONS (read a context against the picture)
    # report
    eval_limit: int | None = 300          # held-in val task lines scored (3 per picture)
    zero_shot_limit: int | None = 300     # synthetic IconQA / ScienceQA val items ranked
    adapt_train: int = 0                  # qf-lora adaptability check on IconQA: training items (0: skip)
    adapt_epochs: int = 2
    adapt_lr: float | None = None         # None: the grid's PEFT rate (config.LR_PEFT)
    adapt_val: int = 200
    # torch intra-op threads during the build (None: torch's default). Fixed per recipe so that a build does
    # the same arithmetic on any machine; 1, since these models are too small to split (docs/performance.md).
    # Stage 1 is the exception on mini (vision_threads 2): it runs alone (other builds wait for its lock).
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.stage3_llm not in ("frozen", "trained"):
            raise ValueError(f"stage3_llm={self.stage3_llm!r}: use 'frozen' or 'trained'")
        if self.vision_epochs < 1 or self.qformer_epochs < 1 or self.text_epochs < 0:
            raise ValueError("vision_epochs and qformer_epochs must be >= 1, text_epochs >= 0")
        if self.qformer_from is not None and self.qformer_from not in LLMS:
            raise ValueError(f"qformer_from={self.qformer_from!r}: use one of {LLMS} or None")
        if self.stage3_llm == "frozen" and self.text_epochs == 0:
            raise ValueError("stage3_llm='frozen' needs a text stage (text_epochs >= 1): a random LLM cannot "
                             "stay frozen")

    def replace(self, **changes: Any) -> "Recipe":
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown recipe field(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    # the smoke variant: every code path in seconds on a CPU (tests, CI); its numbers mean nothing
    "tiny": Recipe(vision_epochs=1, vision_batch=16, qformer_epochs=1, qformer_batch=8, qformer_warmup=2,
                   eval_limit=24, zero_shot_limit=8, adapt_train=16, adapt_epochs=1, adapt_val=8),
    # the embedded default, sized by measurement (docs/embedded-models.md)
    "mini": Recipe(vision_epochs=8, vision_batch=16, vision_lr=1e-3, vision_threads=2, qformer_epochs=3, qformer_batch=16,
                   qformer_lr=1e-3, qformer_warmup=100, extra_per_picture=3, eval_limit=300, zero_shot_limit=400,
                   adapt_train=3000, adapt_epochs=2, adapt_lr=2e-3, adapt_val=300),
}


# Per-LLM adjustments (looked up by the root preset, so mini-wide / mini-deep follow mini).
# LLaMA's stage 3 starts from the T5 build's Q-Former and query tokens, as both of InstructBLIP's Q-Formers start
# from the one BLIP-2 Q-Former: trained from scratch beside a LLaMA it never learned to read the question
# (docs/embedded-models.md). tiny follows so that the smoke study and the tests take the same path.
LLM_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("tiny", "llama"): {"qformer_from": "t5"},
    ("mini", "llama"): {"qformer_from": "t5", "qformer_epochs": 2},
}


# The scaled presets (presets.SCALED_FROM: mini-wide, mini-deep, tiny-wide, tiny-deep) are built with their base
# preset's recipe, LLM adjustments included (recipe_for looks those up by the root preset): the model-size axis
# varies the model, not how long or how fast it is trained. Same vision_* fields, so they share the base preset's
# stage-1 encoder (vision_dir).
RECIPES.update({name: RECIPES[src] for name, (src, _) in SCALED_FROM.items() if src in RECIPES})


def recipe_for(preset: str, overrides: dict[str, Any] | None = None, *, llm: str | None = None) -> Recipe:
    """The preset's recipe, with the LLM's own adjustments (LLM_RECIPES) and then `overrides`."""
    if preset not in RECIPES:
        raise ValueError(f"no base-model recipe for preset {preset!r}; embedded presets: {', '.join(RECIPES)}")
    adjust = LLM_RECIPES.get((preset, llm), LLM_RECIPES.get((root_preset(preset), llm), {}))
    return RECIPES[preset].replace(**adjust).replace(**(overrides or {}))

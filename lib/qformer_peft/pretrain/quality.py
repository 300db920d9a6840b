"""Held-in scores of an embedded base model (or of a model adapted from it), for its build report and runs.

  heldin_score      held-in captioning (CIDEr, BLEU-4, exact) and open VQA (exact match) by generation,
                    optionally with every picture swapped for another one (the shuffled-image control)
  heldin_chance     what a blind model scores: the most common training answer per question type
Below the engine (which scores a run's held-in cost with it); zero-shot and adaptability are in adaptability.py.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

# generation lengths: a caption names up to 5 objects in ~9 tokens each; a VQA answer is 1-2 words
MAX_NEW_TOKENS = {"caption": 60, "vqa": 6}


def image_encoder(bundle, images=None):
    """images as given, or the bundle's frozen ViT behind a feature cache."""
    if images is not None:
        return images
    from ..features import FeatureCache, ImageEncoder

    return ImageEncoder(bundle.model, bundle.image_processor, cache=FeatureCache(bundle.model, bundle.image_processor))


def derangement(items: list[str], seed: int) -> dict[str, str]:
    """Each distinct picture -> another one (a shuffled cycle, so none keeps its own)."""
    unique = sorted(set(items))
    random.Random(seed).shuffle(unique)
    if len(unique) < 2:
        raise ValueError("the shuffled-image control needs at least two pictures")
    return {a: b for a, b in zip(unique, unique[1:] + unique[:1])}


def _tasks(data_dir, limit: int | None) -> list[dict]:
    from .heldin import heldin_tasks

    tasks = heldin_tasks(data_dir, "val")
    return tasks[:limit] if limit else tasks


@torch.no_grad()
def heldin_score(bundle, data_dir: str | Path, limit: int | None = None, *, model=None, shuffle: bool = False,
                 images: Callable[[Sequence[str]], torch.Tensor] | None = None,
                 tasks: Sequence[str] = ("caption", "vqa"), batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """Held-in val scores of `model` (default bundle.model; a peft model works too): greedy generation.

    vqa_em: exact match (VQA normalisation) of the open questions, also by question type; caption_cider,
    caption_bleu4 (x100) and caption_exact of the captions. limit: the first N val task lines (3 per
    picture). shuffle=True feeds every task another picture's features: a model that reads the image
    falls to its blind level there. tasks=("vqa",) skips the (slower) captions.
    """
    from ..evaluate import bleu4, cider, generate, normalize_answer

    kinds = tuple(tasks)
    tasks = [t for t in _tasks(data_dir, limit) if t["task"] in kinds]
    images = image_encoder(bundle, images)
    model = bundle.model if model is None else model
    model.eval()
    swap = derangement([t["image"] for t in tasks], seed) if shuffle else {}
    predictions: list[str] = []
    for task in kinds:
        chosen = [t for t in tasks if t["task"] == task]
        for i in range(0, len(chosen), batch_size):
            chunk = chosen[i:i + batch_size]
            embeds = images([swap.get(t["image"], t["image"]) for t in chunk])
            texts = generate(bundle, embeds, [t["prompt"] for t in chunk], max_new_tokens=MAX_NEW_TOKENS[task],
                             num_beams=1, model=model)
            predictions += texts
    ordered = [t for task in kinds for t in tasks if t["task"] == task]
    return _scores(ordered, predictions, cider, bleu4, normalize_answer)


def _scores(tasks, predictions, cider, bleu4, normalize) -> dict[str, Any]:
    by_type: dict[str, list[bool]] = defaultdict(list)
    captions, refs, caption_hits = [], [], []
    for t, pred in zip(tasks, predictions):
        if t["task"] == "caption":
            captions.append(pred)
            refs.append([t["answer"]])
            caption_hits.append(pred.strip() == t["answer"].strip())
        else:
            by_type[t["qtype"]].append(normalize(pred) == normalize(t["answer"]))
    vqa = [h for hits in by_type.values() for h in hits]
    pct = lambda hits: round(100.0 * sum(hits) / len(hits), 2) if hits else None  # noqa: E731
    return {"vqa_em": pct(vqa), "vqa_by_type": {k: pct(v) for k, v in sorted(by_type.items())},
            "caption_cider": round(cider(captions, refs), 2) if captions else None,
            "caption_bleu4": round(bleu4(captions, refs), 2) if captions else None,
            "caption_exact": pct(caption_hits), "n_vqa": len(vqa), "n_caption": len(captions)}


def heldin_chance(data_dir: str | Path, limit: int | None = None) -> dict[str, Any]:
    """The blind reference: every question answered with the most common training answer of its type,
    every picture described with the most common training caption."""
    from ..evaluate import bleu4, cider, normalize_answer
    from .heldin import read_heldin

    heldin = read_heldin(data_dir)
    common: dict[str, Counter] = defaultdict(Counter)
    for t in heldin.tasks["train"]:
        common[t["qtype"]][t["answer"]] += 1
    tasks = heldin.tasks["val"][:limit] if limit else heldin.tasks["val"]
    ordered = [t for task in ("caption", "vqa") for t in tasks if t["task"] == task]
    guesses = [common[t["qtype"]].most_common(1)[0][0] if common[t["qtype"]] else "" for t in ordered]
    return _scores(ordered, guesses, cider, bleu4, normalize_answer)

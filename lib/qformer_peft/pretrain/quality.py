"""How good an embedded base model is: the measurements of its build report (issue 5).

  heldin_score      held-in captioning (CIDEr, BLEU-4, exact) and open VQA (exact match) by generation,
                    optionally with every picture swapped for another one (the shuffled-image control)
  heldin_chance     what a blind model scores: the most common training answer per question type
  zero_shot         candidate-ranking accuracy on a synthetic benchmark split (engine's evaluator), and chance
  adaptability      a short qf-lora run on synthetic IconQA through engine.run_experiment: val accuracy
                    before and after (val also picks the epoch), test accuracy before and after on the same
                    items with the paired standard error (paired_gain), and what it costs on held-in
                    (adapted, adapter switched off)
  adaptation_cost   that last comparison for any finished LoRA run folder (the study can call it per setup)
Only evaluation reads the benchmarks; nothing here trains the base model.
"""
from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

# generation lengths: a caption names up to 5 objects in ~9 tokens each; a VQA answer is 1-2 words
MAX_NEW_TOKENS = {"caption": 60, "vqa": 6}


def _images(bundle, images):
    if images is not None:
        return images
    from ..features import FeatureCache, ImageEncoder

    return ImageEncoder(bundle.model, bundle.image_processor, cache=FeatureCache(bundle.model, bundle.image_processor))


def _derangement(items: list[str], seed: int) -> dict[str, str]:
    """Each distinct picture -> another one (a shuffled cycle, so none keeps its own)."""
    unique = sorted(set(items))
    random.Random(seed).shuffle(unique)
    if len(unique) < 2:
        raise ValueError("the shuffled-image control needs at least two pictures")
    return {a: b for a, b in zip(unique, unique[1:] + unique[:1])}


def _tasks(data_dir, limit: int | None) -> list[dict]:
    from .base_stages import heldin_tasks

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
    images = _images(bundle, images)
    model = bundle.model if model is None else model
    model.eval()
    swap = _derangement([t["image"] for t in tasks], seed) if shuffle else {}
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
    from .base_stages import read_heldin

    heldin = read_heldin(data_dir)
    common: dict[str, Counter] = defaultdict(Counter)
    for t in heldin.tasks["train"]:
        common[t["qtype"]][t["answer"]] += 1
    tasks = heldin.tasks["val"][:limit] if limit else heldin.tasks["val"]
    ordered = [t for task in ("caption", "vqa") for t in tasks if t["task"] == task]
    guesses = [common[t["qtype"]].most_common(1)[0][0] if common[t["qtype"]] else "" for t in ordered]
    return _scores(ordered, guesses, cider, bleu4, normalize_answer)


@torch.no_grad()
def zero_shot(bundle, data_dir: str | Path, benchmark: str, *, split: str = "val", limit: int | None = None,
              images: Callable[[Sequence[str]], torch.Tensor] | None = None, model=None,
              batch_size: int = 32, items: bool = False) -> dict[str, Any]:
    """Candidate-ranking accuracy (PROTOCOL §5, the engine's evaluator) on the first `limit` items of a
    synthetic multiple-choice benchmark, with chance (mean 1 / number of options) and per-skill accuracy;
    with items, also whether each item was right ("correct": {id: bool}, what paired_gain compares)."""
    from .. import data
    from ..engine import examples_of
    from ..evaluate import evaluate

    records = data.load(benchmark, Path(data_dir) / benchmark, split).records[:limit]
    examples = examples_of(records, train=False)
    encoder = _images(bundle, images)
    metrics, preds = evaluate(bundle, examples, benchmark, lambda chunk: encoder([e.image for e in chunk]),
                              batch_size=batch_size, model=model)
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, p in zip(examples, preds):
        key = ",".join(ex.meta.get("skills") or ()) or str(ex.meta.get("category", "")) or "all"
        groups[key].append(bool(p["correct"]))
    out = {"accuracy": round(metrics["accuracy"], 2),
           "chance": round(100.0 * sum(1 / len(e.candidates) for e in examples) / len(examples), 2),
           "by_group": {k: round(100.0 * sum(v) / len(v), 2) for k, v in sorted(groups.items())},
           "n": len(examples), "split": split}
    if items:
        out["correct"] = {ex.id: bool(p["correct"]) for ex, p in zip(examples, preds)}
    return out


def paired_gain(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict[str, Any]:
    """after - before in accuracy points on the same items, with the standard error of that mean paired
    difference (each item contributes -1, 0 or +1): a gain is clear when it is more than twice its SE."""
    if set(before) != set(after) or not before:
        raise ValueError(f"paired_gain needs the same items on both sides: {len(before)} before, {len(after)} "
                         f"after, {len(set(before) & set(after))} shared")
    d = [int(after[i]) - int(before[i]) for i in before]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return {"gain": round(100.0 * mean, 2), "se": round(100.0 * math.sqrt(var / n), 2), "n": n}


def adaptation_cost(base: str | Path, run_dir: str | Path, data_dir: str | Path, limit: int | None = None, *,
                    images=None) -> dict[str, Any]:
    """Held-in vqa_em of the base model, of the adapted model of a finished run (engine run folder), and of
    the same model with its LoRA adapter switched off (query tokens, projection and post-ViT LayerNorm, which
    every setup trains, stay adapted then; a setup without an adapter has no 'adapter_off')."""
    from peft import PeftModel

    from ..engine import load_trained
    from .build import load_bundle

    vqa = ("vqa",)
    base_bundle = load_bundle(base)
    out = {"base": heldin_score(base_bundle, data_dir, limit, images=images, tasks=vqa)["vqa_em"]}
    bundle, model = load_trained(run_dir)
    images = images or _images(bundle, None)
    out["adapted"] = heldin_score(bundle, data_dir, limit, model=model, images=images, tasks=vqa)["vqa_em"]
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            out["adapter_off"] = heldin_score(bundle, data_dir, limit, model=model, images=images, tasks=vqa)["vqa_em"]
    return out


def adaptability(checkpoint: str | Path, data_dir: str | Path, out: str | Path, *, cache_dir: str | Path,
                 train_limit: int, epochs: int, val_limit: int, heldin_limit: int, rank: int = 8, seed: int = 42,
                 lr: float | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A short qf-lora run (all Q-Former sublayers, rank `rank`) on synthetic IconQA from the checkpoint:
    val accuracy before (zero-shot, same items) and after, the optimizer steps it took, the held-in cost
    (adaptation_cost), and the gain on the first `val_limit` test items (paired_gain). The val gain is
    optimistic: val picks the best epoch. Measured on the seventh study's mini T5 base (build version 4): val
    41.0 -> 43.0, 43.3, 43.0 over three seeds, while the same runs scored 43.7 -> 44.7, 42.3, 42.7 on test.
    lr: the check's own rate (None: the grid's LR_PEFT). At the grid's 5e-4, 200 steps sit before anything
    moves on any base measured; on build version 5's T5, 376 steps at 2e-3 (mini's recipe) took held-out test
    55.7 -> 63.8 on 600 items, against 55.0 after 200 steps at 5e-4 (base_stages' docstring)."""
    from .. import runs
    from ..engine import run_experiment
    from ..features import FeatureCache, ImageEncoder
    from .build import load_bundle

    start = time.perf_counter()
    bundle = load_bundle(checkpoint)
    images = ImageEncoder(bundle.model, bundle.image_processor,
                          cache=FeatureCache(bundle.model, bundle.image_processor, Path(cache_dir)))
    before = zero_shot(bundle, data_dir, "iconqa", limit=val_limit, images=images)
    config = {"benchmark": "iconqa", "data_root": str(Path(data_dir) / "iconqa"), "model": str(checkpoint),
              "setup": "qf-lora", "qf_sublayers": "all", "rank": rank, "max_epochs": epochs, "patience": epochs,
              "train_limit": train_limit, "val_limit": val_limit, "test_limit": val_limit, "seed": seed, "lr": lr}
    result = run_experiment(config, out=out, cache_dir=cache_dir)
    run = _run_path(out)
    test_before = zero_shot(bundle, data_dir, "iconqa", split="test", limit=val_limit, images=images, items=True)
    gain = paired_gain(test_before["correct"], {p["id"]: bool(p["correct"]) for p in runs.RunDir(run).predictions()})
    cost = adaptation_cost(checkpoint, run, data_dir, heldin_limit, images=images)
    report = {"setup": f"qf-lora all r{rank}", "lr": result["learning_rate"], "steps": result["steps"],
              "epochs": result["epochs"],
              "train_items": result["n"]["train"], "val_before": before["accuracy"],
              "val_after": round(result["val_score"], 2), "test_before": test_before["accuracy"],
              "test_after": round(result["test_score"], 2), "test_gain": gain["gain"], "test_gain_se": gain["se"],
              "test_n": gain["n"], "chance": before["chance"], "heldin_vqa_em": cost,
              "time_s": round(time.perf_counter() - start, 2)}
    if log is not None:
        log(f"[base] adaptability: IconQA val {report['val_before']} -> {report['val_after']}, held-out test "
            f"{report['test_before']} -> {report['test_after']} ({gain['gain']:+.2f} ± {gain['se']} paired SE) after "
            f"{report['steps']} qf-lora steps; held-in VQA {cost}")
    return report


def _run_path(out: str | Path) -> Path:
    """The one run folder under `out` (adaptability writes exactly one)."""
    folders = [p for p in Path(out).iterdir() if p.is_dir() and (p / "config.json").exists()]
    if len(folders) != 1:
        raise RuntimeError(f"{out}: expected one run folder, found {len(folders)}")
    return folders[0]

"""How well an embedded base model adapts: zero-shot accuracy, and a short qf-lora run through the engine.

  zero_shot         candidate-ranking accuracy on a synthetic benchmark split (the engine's evaluator), and chance
  adaptability      a short qf-lora run on synthetic IconQA through engine.run_experiment: val accuracy before
                    and after (val also picks the epoch), test accuracy before and after on the same items with the
                    paired standard error (paired_gain), and what it costs on held-in (adapted, adapter switched off)
  adaptation_cost   that last comparison for any finished LoRA run folder
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from peft import PeftModel

from .. import data, runs
from ..engine import load_trained, run_experiment
from ..run_inputs import examples_of
from ..evaluate import evaluate
from ..features import FeatureCache, ImageEncoder
from ..models.build import load_bundle
from .quality import heldin_score, image_encoder


@torch.no_grad()
def zero_shot(bundle, data_dir: str | Path, benchmark: str, *, split: str = "val", limit: int | None = None,
              images: Callable[[Sequence[str]], torch.Tensor] | None = None, model=None,
              batch_size: int = 32, items: bool = False) -> dict[str, Any]:
    """Candidate-ranking accuracy (docs/protocol.md §5, the engine's evaluator) on the first `limit` items of a
    synthetic multiple-choice benchmark, with chance (mean 1 / number of options) and per-skill accuracy;
    with items, also whether each item was right ("correct": {id: bool}, what paired_gain compares)."""

    records = data.load(benchmark, Path(data_dir) / benchmark, split).records[:limit]
    examples = examples_of(records, train=False)
    encoder = image_encoder(bundle, images)
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
    vqa = ("vqa",)
    base_bundle = load_bundle(base)
    out = {"base": heldin_score(base_bundle, data_dir, limit, images=images, tasks=vqa)["vqa_em"]}
    bundle, model = load_trained(run_dir)
    images = images or image_encoder(bundle)
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
    optimistic: val picks the best epoch, hence the held-out test gain. lr: the check's own rate (None: the
    config's default); the recipes set a higher one than the grid's, since the check has few steps
    (docs/embedded-models.md)."""
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

"""One experiment end to end: config -> model -> training -> test -> a self-describing run folder.

    from qformer_peft.engine import run_experiment
    result = run_experiment({"benchmark": "iconqa", "data_root": "data/iconqa", "model": "tiny",
                             "setup": "qf-lora", "rank": 4}, out="runs")

`run_experiment` is what the notebooks, `qformer-peft run` and the tests call. A finished run is
never recomputed (its stored result is returned); an interrupted one resumes from its last completed
epoch; a failing one is marked failed with its traceback and the exception propagates.

Run folder (runs.RunDir): config.json, env.json, status.json, metrics.jsonl (one row per epoch, then
the test row), predictions.jsonl (test), adalora_ranks.jsonl (AdaLoRA runs), adapter/ (peft's
adapter_model.safetensors + adapter_config.json, loadable with PeftModel.from_pretrained, and
trainable.safetensors with the trained tensors that are not LoRA factors: query tokens, projection,
post-ViT LayerNorm, the whole Q-Former where it is fine-tuned, another connector and its LLM adapters;
aligned.safetensors when the run began with an alignment stage), result.json.

Connectors (models/connectors.py): config.connector and its connector_* fields are attached by
run_inputs.resolve_bundle; align_steps > 0 first aligns the connector on the held-in tasks (pretrain/alignment.py,
cached under CACHE_DIR/connectors, shared by every run of the same base, connector, seed and data).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import runs
from .config import ExperimentConfig
from .evaluate import MULTIPLE_CHOICE, PRIMARY, evaluate
from .features import FeatureCache, ImageEncoder
from .models.connectors import image_token_count, spec_of
from .models.inputs import unwrap
from .pretrain.alignment import ALIGNED_FILE, align_connector, load_aligned, trained_state
from .run_inputs import (benchmark_root, evaluate_tasks, load_examples, records_zero_shot, resolve_bundle,
                         scored_split)
from .train import (adalora_tuner, autocast_for, fit, resolve_device, resolve_precision, seed_everything,
                    steps_per_epoch)

TRAINABLE_FILE = "trainable.safetensors"
ADAPTER_README = """# The trained state of one qformer-peft run

- `adapter_model.safetensors` + `adapter_config.json` (when the setup has LoRA or AdaLoRA): the peft adapter.
- `trainable.safetensors`: every other trained tensor: the query tokens, the language projection, the LayerNorm
  after the vision encoder, the whole Q-Former when it is fully fine-tuned, another connector where one is used.

The adapter alone is NOT the run's model: loaded with `PeftModel.from_pretrained` onto the base checkpoint it
lacks the tensors of `trainable.safetensors`. To get the run's model:

- in Python: `bundle, model = qformer_peft.engine.load_trained("<run folder>")` (the base model is the run's
  `config.json` "model"), or
- as a standalone InstructBLIP checkpoint (LoRA merged, every trained tensor in):
  `qformer-peft export <run folder> --out DIR`, then `InstructBlipForConditionalGeneration.from_pretrained(DIR)`
  and `InstructBlipProcessor.from_pretrained(DIR)`.
"""


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a checkpoint's weights load in: the autocast dtype on CUDA (frozen weights need no fp32 copy:
    the paper's LAVIS loads Vicuna in fp16 and T5 in bf16), fp32 elsewhere. Trainable tensors are fp32 always
    (keep_trainable_fp32)."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.float32


def effective_patience(config: ExperimentConfig) -> int:
    """Early-stopping patience as applied: AdaLoRA never stops before its rank schedule ends (its budget is
    scheduled over every epoch's steps; stopping early would leave the heatmaps an unfinished allocation)."""
    return config.max_epochs if config.method == "adalora" else config.patience


def keep_trainable_fp32(model) -> list[str]:
    """Trainable tensors in fp32 whatever dtype the checkpoint stored (autocast computes in bf16/fp16; AdamW
    and the grad scaler need fp32 master weights). Returns the names of the tensors cast."""
    cast = []
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            cast.append(name)
    return cast


# --- adapters -----------------------------------------------------------------------------------------

def save_trained(model, directory: str | Path) -> Path:
    """peft adapter (when there is one) + the other trained tensors in trainable.safetensors."""
    from peft import PeftModel
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        tuner = adalora_tuner(model)
        if tuner is None:
            model.save_pretrained(directory)
        else:
            # Keep AdaLoRA's factors at full size (pruned singular values are zero): peft would otherwise
            # slice them by the last allocation, and a reload would not equal the best epoch's weights.
            # The allocation itself is in adalora_ranks.jsonl.
            cfg = tuner.peft_config[tuner.trainable_adapter_name]
            pattern, cfg.rank_pattern = cfg.rank_pattern, None
            try:
                model.save_pretrained(directory)
            finally:
                cfg.rank_pattern = pattern
        _sort_target_modules(directory / "adapter_config.json")
    rest = {n: p.detach().cpu().contiguous() for n, p in unwrap(model).named_parameters()
            if p.requires_grad and "lora_" not in n}
    runs.atomic_write(directory / TRAINABLE_FILE, save(rest))
    (directory / "README.md").write_text(ADAPTER_README)  # in place of peft's generic model card
    return directory


def _sort_target_modules(path: Path) -> None:
    # peft writes target_modules from a set, in an order that changes from process to process; sorted, the same
    # run writes the same bytes
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        runs.atomic_write(path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_trained(run_path: str | Path, *, device: torch.device | str = "cpu"):
    """(bundle, model) of a finished run: its base model rebuilt from the config, then `attach_trained`."""
    run = runs.RunDir(run_path)
    bundle = resolve_bundle(ExperimentConfig.from_dict(run.config), device=device)
    if (run.adapter_dir / ALIGNED_FILE).is_file():  # the aligned state the run started from
        load_aligned(bundle.model, run.adapter_dir / ALIGNED_FILE)
    return bundle, attach_trained(bundle.model, run.adapter_dir)


def attach_trained(base_model, directory: str | Path):
    """The inverse of save_trained: the peft adapter loaded with PeftModel.from_pretrained (if one was
    saved) and trainable.safetensors copied in. Returns the model to use, in eval mode."""
    from peft import PeftModel
    from safetensors.torch import load_file

    directory = Path(directory)
    model = base_model
    if (directory / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(base_model, directory)
    rest = load_file(directory / TRAINABLE_FILE)
    params = dict(unwrap(model).named_parameters())
    unknown = sorted(set(rest) - set(params))
    if unknown:
        raise ValueError(f"{directory / TRAINABLE_FILE}: tensors {unknown[:3]} do not exist in this model "
                         "(was it saved from another base model?)")
    with torch.no_grad():
        for n, t in rest.items():
            params[n].copy_(t.to(params[n].device))
    model.eval()
    return model


# --- the run ------------------------------------------------------------------------------------------

def run_experiment(config: ExperimentConfig | Mapping[str, Any], *, out: str | Path,
                   cache_dir: str | Path | None = None, progress: bool | None = None,
                   on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and test one config into its run folder under `out`; returns result.json's content.

    cache_dir: where the frozen-feature cache lives on disk (default: OUT/.feature-cache, shared by
    every run under OUT). progress: tqdm bars (default: only when stderr is a terminal).
    on_epoch_end(state): called after each epoch's checkpoint is written; raising from it interrupts
    the run like a crash (the tests use it to check that a resumed run equals an uninterrupted one).
    """
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.from_dict(config)
    run = runs.RunDir.open(out, config.to_dict(), prefix=config.run_name)
    if run.is_done():
        return run.result
    if progress is None:
        progress = sys.stderr.isatty()
    cache_dir = Path(out) / ".feature-cache" if cache_dir is None else Path(cache_dir)
    run.mark_running()
    try:
        result = _execute(config, run, cache_dir=cache_dir, progress=progress, on_epoch_end=on_epoch_end)
    except BaseException as exc:
        run.mark_failed(exc)
        raise
    run.mark_done(result)
    return result


def _execute(config: ExperimentConfig, run: runs.RunDir, *, cache_dir: Path, progress: bool,
             on_epoch_end: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    from . import peft_setup

    device = resolve_device(config.device)
    seed_everything(config.seed)
    precision = resolve_precision(config.precision, device, config.llm)
    bundle = resolve_bundle(config, device=device, dtype=weights_dtype(precision, device))
    autocast = autocast_for(device, precision)
    splits = load_examples(config)
    total_steps = steps_per_epoch(len(splits["train"]), config.batch_size, config.grad_accum) * config.max_epochs

    alignment = None
    if config.align_steps:
        alignment = _align(config, bundle, run, cache_dir=cache_dir, device=device, autocast=autocast,
                           precision=precision, progress=progress)

    seed_everything(config.seed)  # LoRA's initialisation draws from torch's generator
    model = peft_setup.apply_peft(
        bundle.model, config.setup, qf_sublayers=config.qf_sublayers, llm_targets=config.llm_targets,
        rank=config.rank, adalora=config.adalora_schedule(total_steps) if config.method == "adalora" else None,
        lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout)
    keep_trainable_fp32(model)
    trainable = peft_setup.trainable_parameters(model)

    cache = None
    if config.uses_feature_cache:
        cache = FeatureCache(bundle.model, bundle.image_processor, cache_dir, device=device, autocast=autocast,
                             precision=precision)
        cache.precompute([e.image for split in splits.values() for e in split], progress=progress)
    train_images = ImageEncoder(bundle.model, bundle.image_processor, device=device, autocast=autocast, cache=cache,
                                augment=config.augment)
    eval_images = ImageEncoder(bundle.model, bundle.image_processor, device=device, autocast=autocast, cache=cache)
    primary = PRIMARY[config.tasks[0]]  # a joint benchmark's tasks are all multiple choice: accuracy
    eval_kwargs = dict(batch_size=config.eval_batch_size or config.batch_size, max_prompt_tokens=config.max_prompt_tokens,
                       num_beams=config.num_beams, model=model, autocast=autocast, progress=progress)

    def embeds_of(chunk):
        return eval_images([e.image for e in chunk])

    def validate():
        return evaluate_tasks(bundle, splits["val"], config, embeds_of, desc="val", **eval_kwargs)

    def epoch_end(state: dict[str, Any]) -> None:
        run.save_checkpoint(state)
        run.write_metrics(_epoch_rows(state["history"]))
        if state["ranks"]:
            run.write_ranks(state["ranks"])
        if on_epoch_end is not None:
            on_epoch_end(state)

    if records_zero_shot(config) and not (run.path / runs.ZERO_SHOT_FILE).exists():
        # adapters start as the identity (LoRA's B and AdaLoRA's E are zero): this is the base model
        run.write_zero_shot_predictions(evaluate_tasks(bundle, splits["test"], config, embeds_of, desc="zero-shot",
                                                       **eval_kwargs)[1])
    resume = run.load_checkpoint()
    fitted = fit(
        model, bundle, splits["train"], validate=validate, primary=primary, images=train_images,
        lr=config.learning_rate, weight_decay=config.weight_decay, max_epochs=config.max_epochs,
        patience=effective_patience(config), batch_size=config.batch_size, grad_accum=config.grad_accum,
        schedule=config.schedule, warmup_steps=config.warmup_steps, max_prompt_tokens=config.max_prompt_tokens,
        seed=config.seed, device=device, precision=precision, resume=resume, on_epoch_end=epoch_end,
        progress=progress)

    start = time.perf_counter()
    test_metrics, predictions = evaluate_tasks(bundle, splits["test"], config, embeds_of, desc="test",
                                               **eval_kwargs)
    eval_time = time.perf_counter() - start
    save_trained(model, run.adapter_dir)
    heldin = heldin_cost(config, bundle, model, eval_images, autocast=autocast)
    run.write_predictions(predictions)
    if fitted.ranks:
        run.write_ranks(fitted.ranks)
    run.write_metrics(_epoch_rows(fitted.history) + [{"split": "test", "epoch": fitted.best_epoch, **test_metrics}])
    return {
        "metric": primary,
        "test_score": test_metrics[primary],
        "val_score": fitted.best_val.get(primary),
        "test": test_metrics,
        "val": fitted.best_val,
        "best_epoch": fitted.best_epoch,
        "epochs": len(fitted.history),
        "stopped_early": fitted.stopped_early,
        **({"adalora_schedule": "complete" if fitted.global_step >= total_steps else "fitted to the epochs run"}
           if config.method == "adalora" else {}),
        "steps": fitted.global_step,
        "learning_rate": config.learning_rate,
        "trainable_params": trainable,
        "n": {k: len(v) for k, v in splits.items()},
        "device": str(device),
        "precision": precision,
        "dtypes": {"trainable": "float32", "frozen": _frozen_dtype(model)},
        # the split each role read: VizWiz's official test has no answers, so 'auto' scores val
        "splits": {"train": "train", "val": "val", "test": scored_split(config)},
        "feature_cache": dict(cache.stats) if cache is not None else None,
        "train_time_s": round(fitted.train_time_s, 3),
        "train_samples_per_s": round(fitted.train_samples / fitted.train_time_s, 3) if fitted.train_time_s else None,
        "test_time_s": round(eval_time, 3),
        "multiple_choice": all(t in MULTIPLE_CHOICE for t in config.tasks),
        "connector": {"label": config.connector_label, "kind": config.connector,
                      "image_tokens": image_token_count(unwrap(model))},
        "alignment": alignment,
        # the validation metric after each epoch against the optimizer step: the convergence curve
        "val_curve": [{"epoch": h["epoch"], "step": h["step"], "score": h["val"].get(primary)}
                      for h in fitted.history],
        **({"heldin_vqa_em": heldin} if heldin is not None else {}),
    }


def _frozen_dtype(model) -> str | None:
    frozen = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if not p.requires_grad}
    return ",".join(sorted(frozen)) or None


def record_zero_shot(run_path: str | Path, *, cache_dir: str | Path | None = None, progress: bool = False) -> Path:
    """Score a run's test items with the model it started from (before any training) into its
    zero_shot_predictions.jsonl, as reference runs record it: for run folders written before they did.
    cache_dir: the frozen-feature cache (default: the runs folder's .feature-cache)."""
    run = runs.RunDir(run_path)
    config = ExperimentConfig.from_dict(run.config)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    bundle = resolve_bundle(config, device=device)
    if (run.adapter_dir / ALIGNED_FILE).is_file():  # the aligned state the run started from
        load_aligned(bundle.model, run.adapter_dir / ALIGNED_FILE)
    autocast = autocast_for(device, resolve_precision(config.precision, device, bundle.llm_kind))
    test = load_examples(config)["test"]
    cache = None
    if config.uses_feature_cache:
        cache = FeatureCache(bundle.model, bundle.image_processor,
                             Path(cache_dir) if cache_dir else run.path.parent / ".feature-cache", device=device,
                             autocast=autocast, precision=resolve_precision(config.precision, device, bundle.llm_kind))
        cache.precompute([e.image for e in test], progress=progress)
    images = ImageEncoder(bundle.model, bundle.image_processor, device=device, autocast=autocast, cache=cache)
    preds = evaluate_tasks(bundle, test, config, lambda chunk: images([e.image for e in chunk]), desc="zero-shot",
                           batch_size=config.eval_batch_size or config.batch_size,
                           max_prompt_tokens=config.max_prompt_tokens, num_beams=config.num_beams,
                           model=bundle.model, autocast=autocast, progress=progress)[1]
    run.write_zero_shot_predictions(preds)
    return run.path / runs.ZERO_SHOT_FILE


def heldin_dir(config: ExperimentConfig) -> Path | None:
    """The synthetic world the run's benchmark root lies in (DATA, beside its benchmark roots) when it holds
    held-in tasks (DATA/heldin/val.jsonl), else None. A joint benchmark: its first task's root."""
    if not config.data_root:
        return None
    data_dir = benchmark_root(config).resolve().parent
    return data_dir if (data_dir / "heldin" / "val.jsonl").is_file() else None


def heldin_cost(config: ExperimentConfig, bundle, model, images, *, autocast=None) -> dict[str, float | None] | None:
    """What adapting costs on the held-in tasks: held-in val VQA exact match (%) of the trained model
    ('adapted') and, for a peft model, of the same model with its LoRA switched off ('adapter_off': what every
    setup trains besides LoRA, query tokens, projection, post-ViT LayerNorm, connector, stays adapted), on the
    first config.heldin_limit held-in val task lines. None when heldin_limit is 0 or there is no DATA/heldin.
    images: the run's image encoder (image paths -> the frozen ViT's outputs); held-in paths are absolute
    (read_heldin joins them to DATA/heldin). The base model's own figure is its build report's, not measured
    here."""
    import contextlib

    from peft import PeftModel

    from .pretrain.quality import heldin_score

    data_dir = heldin_dir(config) if config.heldin_limit else None
    if data_dir is None:
        return None
    autocast = autocast or contextlib.nullcontext

    def score() -> float | None:
        with autocast():
            return heldin_score(bundle, data_dir, config.heldin_limit, model=model, images=images,
                                tasks=("vqa",))["vqa_em"]

    out = {"adapted": score()}
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            out["adapter_off"] = score()
    return out


def _align(config: ExperimentConfig, bundle, run: runs.RunDir, *, cache_dir: Path, device, autocast, precision,
           progress: bool) -> dict[str, Any]:
    """The connector's alignment stage (cached under CACHE_DIR/connectors); its result is kept in the run
    folder too (adapter/aligned.safetensors), so load_trained rebuilds the run without the cache."""
    from safetensors.torch import save

    from . import peft_setup

    images = ImageEncoder(bundle.model, bundle.image_processor, device=device, autocast=autocast,
                          cache=FeatureCache(bundle.model, bundle.image_processor, cache_dir, device=device,
                                             autocast=autocast, precision=precision))
    report = align_connector(bundle, benchmark_root(config), steps=config.align_steps, seed=config.seed,
                             cache_dir=cache_dir / "connectors", images=images, device=device,
                             label=spec_of(config).label, log=print if progress else None)
    peft_setup.apply_peft(bundle.model, "baseline")  # the aligned tensors, to keep them with the run
    state = trained_state(bundle.model)
    bundle.model.requires_grad_(False)
    runs.atomic_write(run.adapter_dir / ALIGNED_FILE, save(state))
    return report


def _epoch_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"split": "val", **{k: v for k, v in h.items() if k != "val"}, **h["val"]} for h in history]



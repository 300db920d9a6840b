"""The alignment stage of the connector study: every connector learns to feed the frozen LLM on the held-in
tasks (captioning, open VQA; DATA/heldin from `data synth`) for the same number of steps, from the same frozen
ViT and LLM, before the benchmark comparison (the embedded base models were pretrained with a
Q-Former, so the other connectors would otherwise start untrained).

    report = align_connector(bundle, "data/mini", steps=300, seed=42, cache_dir="cache/features/connectors")

What trains is what `peft_setup.apply_peft(model, "baseline")` makes trainable: the Q-Former + queries +
projection (connector 'qformer'), or the connector (+ the bottleneck's LLM adapters), and the post-ViT
LayerNorm in every case; the ViT and the LLM stay frozen. The recipe (ALIGN) is base stage 3's: AdamW, lr 5e-4,
weight decay 0.05 on matrices, batch 16, linear warm-up then cosine. The base model's stage-3 trainer
(stages.train_qformer) counts epochs and keeps the best epoch's weights; a step budget needs one pass
over fresh examples with checkpoints along the way, so the loop here is its own, built from train.backward_step
and train.optimizer_update.

The result is cached like the base models: CACHE/<label>-s<seed>-<key>/aligned.safetensors (the tensors
alignment trained) + align.json (the report), keyed by the model's weights before alignment (the frozen base
and the connector's initial weights, hence the seed and the spec), the held-in data and the recipe.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .. import runs
from .heldin import heldin_examples, read_heldin

ALIGN = {"batch_size": 16, "lr": 5e-4, "weight_decay": 0.05, "warmup_frac": 0.1, "checkpoints": 4,
         "val_limit": 192, "max_prompt_tokens": 128}
ALIGN_VERSION = "2"  # bump when a change here changes what an alignment computes
ALIGNED_FILE, REPORT_FILE = "aligned.safetensors", "align.json"


def heldin_root(data_dir: str | Path) -> Path:
    """DATA (the folder `data synth` wrote) from DATA or from a benchmark root inside it."""
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir.parent):
        if (root / "heldin" / "train.jsonl").is_file():
            return root
    raise FileNotFoundError(f"{data_dir}: no held-in tasks (heldin/train.jsonl) here or one level up; the alignment "
                            "stage trains on them: write the synthetic world with `qformer-peft data synth --out DIR`, "
                            "or set align_steps=0")


def weights_identity(model) -> str:
    """sha256 (16 hex) of every parameter and buffer of the (unwrapped) model, by name."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _data_identity(root: Path) -> str:
    h = hashlib.sha256()
    for rel in ("synth.json", "heldin/train.jsonl", "heldin/val.jsonl"):
        path = root / rel
        h.update(rel.encode() + (path.read_bytes() if path.is_file() else b"<absent>"))
    return h.hexdigest()[:16]


def alignment_key(model, data_root: Path, steps: int, seed: int) -> str:
    return runs.config_hash({"weights": weights_identity(model), "data": _data_identity(data_root), "steps": steps,
                             "seed": seed, "recipe": ALIGN, "version": ALIGN_VERSION})


def trained_state(model) -> dict[str, torch.Tensor]:
    """CPU copies of the tensors alignment trains (those requiring grad after apply_peft(..., 'baseline'))."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_aligned(model, path: str | Path) -> None:
    """Copy an aligned.safetensors into `model` (same base, same connector); every tensor must exist."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"{path}: tensors {unknown[:3]} do not exist in this model (another connector or base?)")
    with torch.no_grad():
        for n, t in state.items():
            if params[n].shape != t.shape:
                raise ValueError(f"{path}: {n} has shape {tuple(t.shape)}, the model {tuple(params[n].shape)}")
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def align_connector(bundle, data_dir: str | Path, *, steps: int, seed: int, cache_dir: str | Path | None = None,
                    images=None, device: torch.device | str = "cpu", label: str = "connector",
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Align the connector attached to bundle.model (in place) for `steps` optimizer steps on the held-in tasks.

    images: features.ImageEncoder over this model (default: an in-memory feature cache). Returns the report:
    steps, examples seen, held-in val loss at ALIGN['checkpoints'] points (and before), samples/s, trainable
    scalars, cached (True when read back from cache_dir). Everything is frozen again afterwards.
    """
    from ..features import FeatureCache, ImageEncoder
    from ..peft_setup import apply_peft, trainable_parameters
    from ..models.inputs import unwrap

    if steps < 1:
        raise ValueError(f"align_connector: steps must be >= 1, got {steps}")
    model = unwrap(bundle.model)
    root = heldin_root(data_dir)
    key = alignment_key(model, root, steps, seed)
    folder = None if cache_dir is None else Path(cache_dir) / f"{label}-s{seed}-{key}"
    apply_peft(model, "baseline")  # the connector's (or Q-Former's) parts + post-ViT LayerNorm; nothing else
    trainable = {g: n for g, n in trainable_parameters(model).items() if n}
    # Two notebooks aligning the same connector at once (the mini grid runs the connector claims of both
    # benchmarks side by side) would both train it. The second waits here
    # for the first's result and reads it.
    with runs.file_lock(folder) if folder is not None else contextlib.nullcontext():
        if folder is not None and (folder / ALIGNED_FILE).is_file() and (folder / REPORT_FILE).is_file():
            load_aligned(model, folder / ALIGNED_FILE)
            model.requires_grad_(False)
            _say(log, f"[align] {label}: reusing {folder}")
            return {**runs.read_json(folder / REPORT_FILE), "cached": True}

        start = time.perf_counter()
        heldin = read_heldin(root)
        if images is None:
            images = ImageEncoder(model, bundle.image_processor, device=device,
                                  cache=FeatureCache(model, bundle.image_processor, None, device=device))
        train = _schedule(heldin, steps, seed)
        val = heldin_examples(heldin.tasks["val"][:ALIGN["val_limit"]])
        report = _train(model, bundle, train, val, images=images, steps=steps, seed=seed,
                        device=torch.device(device), log=log, label=label)
        model.requires_grad_(False)
        model.eval()
        report.update(label=label, key=key, steps=steps, seed=seed, trainable=trainable, recipe=dict(ALIGN),
                      n_heldin_train=len(heldin.tasks["train"]), time_s=round(time.perf_counter() - start, 2))
        if folder is not None:
            from safetensors.torch import save

            apply_peft(model, "baseline")  # the same tensors as trained, to save them
            state = trained_state(model)
            model.requires_grad_(False)
            runs.atomic_write(folder / ALIGNED_FILE, save(state))
            runs.write_json(folder / REPORT_FILE, report)
        return {**report, "cached": False}


def _schedule(heldin, steps: int, seed: int) -> list:
    """steps x batch held-in training examples: passes over the tasks, each in a fresh seeded order."""
    tasks = heldin_examples(heldin.tasks["train"])
    need, out, rng = steps * ALIGN["batch_size"], [], random.Random(seed)
    while len(out) < need:
        order = list(range(len(tasks)))
        rng.shuffle(order)
        out += [tasks[i] for i in order[: need - len(out)]]
    return out


def _train(model, bundle, train: list, val: list, *, images, steps: int, seed: int, device: torch.device,
           log, label: str) -> dict[str, Any]:
    from transformers import get_cosine_schedule_with_warmup

    from ..train import adamw, backward_step, optimizer_update, param_groups, seed_everything
    from ..models.inputs import forward, make_batch

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        total = 0.0
        for i in range(0, len(val), 64):
            chunk = val[i:i + 64]
            batch = make_batch(bundle, None, [e.prompt for e in chunk], [e.target for e in chunk],
                               max_prompt_tokens=ALIGN["max_prompt_tokens"])
            batch = {k: v.to(device) for k, v in batch.items()}
            total += float(forward(model, batch, image_embeds=images([e.image for e in chunk])).loss) * len(chunk)
        model.train()
        model.vision_model.eval()
        return round(total / len(val), 4)

    seed_everything(seed)
    optimizer = adamw(param_groups(model, ALIGN["weight_decay"]), ALIGN["lr"])
    warmup = math.ceil(ALIGN["warmup_frac"] * steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    marks = sorted({max(1, round(steps * (i + 1) / ALIGN["checkpoints"])) for i in range(ALIGN["checkpoints"])})
    curve = [{"step": 0, "val_loss": val_loss()}]
    losses, train_s, bs = [], 0.0, ALIGN["batch_size"]
    model.train()
    model.vision_model.eval()
    for step in range(1, steps + 1):
        tick = time.perf_counter()
        losses.append(backward_step(model, bundle, train[(step - 1) * bs: step * bs], images=images,
                                    max_prompt_tokens=ALIGN["max_prompt_tokens"], device=device))
        optimizer_update(optimizer, scheduler)
        train_s += time.perf_counter() - tick
        if step in marks:
            recent = losses[-max(1, len(losses) // len(marks)):]
            curve.append({"step": step, "val_loss": val_loss(), "train_loss": round(sum(recent) / len(recent), 4)})
            _say(log, f"[align] {label} step {step}/{steps}: train loss {curve[-1]['train_loss']:.3f}, held-in val "
                      f"loss {curve[-1]['val_loss']:.3f} ({train_s:.0f} s)")
    return {"curve": curve, "examples": len(train), "train_time_s": round(train_s, 3),
            "samples_per_s": round(len(train) / train_s, 2) if train_s else None}


def _say(log, text: str) -> None:
    if log is not None:
        log(text)

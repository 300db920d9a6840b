"""The training loop of docs/protocol.md §4, AdaLoRA's budget updates (docs/protocol.md §6), and what a resumable epoch needs.

AdamW (0.9, 0.999) with weight decay on tensors of >= 2 dims; the learning rate decays linearly to 0
over max_epochs, stepped once per epoch without warm-up ('linear'), or warms up and follows a cosine
per optimizer step ('cosine': the captioning and VizWiz AdaLoRA settings). Gradients accumulate over
grad_accum micro-batches; no clipping. After every epoch the validation metric decides early stopping
(patience), and the best epoch's trainable tensors are kept and copied back at the end: the LoRA
factors themselves, never merged weights (peft merges only on request, and nothing here requests it).

Determinism: every epoch reseeds torch / numpy / random and the data order from (seed, epoch), so an
epoch run after a resume sees exactly the randomness it would have seen without the interruption.
"""
from __future__ import annotations

import contextlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from peft import PeftModel

from .evaluate import Example
from .lora_fused import fuse_lora
from .models.inputs import forward, make_batch, unwrap

# --- reproducibility, device and precision ---------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # all devices


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch (data order, dropout, augmentation): a function of (seed, epoch) only."""
    return (seed * 1_000_003 + epoch * 7_919) % 2**31


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'")
    return d


def resolve_precision(precision: str, device: torch.device, llm_kind: str) -> str:
    """'auto': fp32 on the CPU; on CUDA bf16 for T5 and fp16 (with a grad scaler) for LLaMA, as the paper."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if llm_kind == "t5" else "fp16"
    return precision


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts (a new one per `with`); fp32 runs without autocast."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# --- optimizer and schedule -----------------------------------------------------------------------------

def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two AdamW groups: weight decay only on tensors with >= 2 dims."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters: apply a PEFT setup first (peft_setup.apply_peft)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW (0.9, 0.999) over param_groups' groups: torch's fused kernel where it has one (CPU and CUDA
    tensors), one kernel a step instead of ~10 small ops a tensor (docs/performance.md); the same update up to
    rounding (tested against the for-loop implementation)."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused or None)


def steps_per_epoch(n_train: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch (the last, shorter accumulation group still steps)."""
    return math.ceil(math.ceil(n_train / batch_size) / grad_accum)


def make_schedule(optimizer, schedule: str, *, max_epochs: int, steps_per_epoch: int, warmup_steps: int):
    """(scheduler, per_step). 'linear': factor 1 - epoch/max_epochs, stepped per epoch (epoch e trains at
    lr * (1 - e/max_epochs)); 'cosine': linear warm-up then cosine to 0 over all steps, stepped per step."""
    if schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(0.0, 1.0 - e / max_epochs)), False
    if schedule == "cosine":
        from transformers import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps_per_epoch * max_epochs), True
    raise ValueError(f"schedule={schedule!r}: use 'linear' or 'cosine'")


# --- trainable state ------------------------------------------------------------------------------------

def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies (CPU) of every trainable tensor: what an epoch changes, and all a snapshot needs."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise ValueError(f"trainable state does not fit this model: missing {missing[:3]}, unknown {unknown[:3]} "
                         "(was it saved from another setup?)")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device))


# --- AdaLoRA ---------------------------------------------------------------------------------------------

def adalora_tuner(model):
    """peft's AdaLoraModel inside a PeftModel while it trains (has a rank allocator), else None.

    An adapter loaded for inference has no allocator and no trainable adapter name: None too.
    """
    from peft.tuners.adalora import AdaLoraModel

    if isinstance(model, PeftModel) and isinstance(model.base_model, AdaLoraModel) \
            and hasattr(model.base_model, "trainable_adapter_name"):
        return model.base_model
    return None


# Q-Former module path inside a layer -> (sublayer, branch, module) of the rank table (docs/protocol.md §1)
QF_MODULES: dict[str, tuple[str, str | None, str]] = {
    "attention.attention.query": ("self_attn", None, "query"),
    "attention.attention.key": ("self_attn", None, "key"),
    "attention.attention.value": ("self_attn", None, "value"),
    "attention.output.dense": ("self_attn", None, "output"),
    "crossattention.attention.query": ("cross_attn", None, "query"),
    "crossattention.attention.key": ("cross_attn", None, "key"),
    "crossattention.attention.value": ("cross_attn", None, "value"),
    "crossattention.output.dense": ("cross_attn", None, "output"),
    "intermediate.dense": ("ffn", "text", "intermediate"),
    "output.dense": ("ffn", "text", "output"),
    "intermediate_query.dense": ("ffn", "query", "intermediate"),
    "output_query.dense": ("ffn", "query", "output"),
}
_QF_LAYER = re.compile(r"^qformer\.encoder\.layer\.(\d+)\.(.+)$")


def adalora_ranks(model, *, step: int, epoch: int, phase: str) -> list[dict[str, Any]]:
    """One tidy row per adapted Q-Former module: its current rank under AdaLoRA's allocation.

    The rank is the number of singular values the allocator keeps (peft's rank_pattern); before the
    first allocation every module has the initial rank. Layers are 0-based as in transformers.
    """
    from peft.tuners.adalora import AdaLoraLayer

    tuner = adalora_tuner(model)
    if tuner is None:
        return []
    adapter = tuner.trainable_adapter_name
    pattern = tuner.peft_config[adapter].rank_pattern or {}
    rows = []
    for name, module in unwrap(model).named_modules():
        match = _QF_LAYER.match(name)
        if not match or not isinstance(module, AdaLoraLayer) or adapter not in module.lora_E:
            continue
        sublayer, branch, short = QF_MODULES[match[2]]
        key = f"{name}.lora_E.{adapter}"
        rank = int(sum(pattern[key])) if key in pattern else int(module.lora_E[adapter].shape[0])
        rows.append({"layer": int(match[1]), "sublayer": sublayer, "branch": branch, "module": short, "name": name,
                     "rank": rank, "step": step, "epoch": epoch, "phase": phase})
    return rows


def _adalora_state(tuner) -> dict[str, Any]:
    alloc = tuner.rankallocator
    return {"ipt": alloc.ipt, "exp_avg_ipt": alloc.exp_avg_ipt, "exp_avg_unc": alloc.exp_avg_unc,
            "rank_pattern": tuner.peft_config[tuner.trainable_adapter_name].rank_pattern}


def _load_adalora_state(tuner, state: Mapping[str, Any]) -> None:
    alloc = tuner.rankallocator
    alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
    tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = state["rank_pattern"]


# --- the loop ----------------------------------------------------------------------------------------------

BATCH_RANGE = "qformer_peft.batch"  # the profiler range around building one batch (ViT features, tokens, tensors)


def backward_step(model, bundle, examples: Sequence[Example], *, images: Callable[..., torch.Tensor],
                  rng: random.Random | None = None, max_prompt_tokens: int = 128, device: torch.device | str = "cpu",
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  scaler=None, divide: int = 1) -> float:
    """Forward and backward of one micro-batch (gradients accumulate); returns its loss.

    The loss goes through peft's tuner (models.inputs.forward), so AdaLoRA's orthogonality penalty is in it.
    """
    with torch.profiler.record_function(BATCH_RANGE):  # a label for profiles (bench's time split); ~free otherwise
        embeds = images([e.image for e in examples], rng=rng)  # [B, P+1, Dv], cached or computed
        batch = make_batch(bundle, None, [e.prompt for e in examples], [e.target for e in examples],
                           max_prompt_tokens=max_prompt_tokens)
        batch = {k: v.to(device) for k, v in batch.items()}
    with autocast():
        loss = forward(model, batch, image_embeds=embeds).loss
    scaled = loss / divide
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return float(loss.detach())


def optimizer_update(optimizer, scheduler=None, *, scaler=None, tuner=None, step: int | None = None) -> None:
    """One optimiser update after the backward pass(es), in the order every training loop here shares.

    The step (through the fp16 grad scaler when there is one), then AdaLoRA's budget update at `step` (tuner:
    adalora_tuner(model)) while the gradients are still there, then zero_grad, then one scheduler step (pass
    None where the schedule advances per epoch).
    """
    if scaler is not None:
        scale = scaler.get_scale() if tuner is not None else None  # get_scale syncs on CUDA: only when needed
        scaler.step(optimizer)  # unscales the gradients first, so AdaLoRA sees true ones below
        scaler.update()
        if tuner is not None and scaler.get_scale() < scale:  # an overflow skipped this step:
            for group in optimizer.param_groups:  # keep inf/nan out of AdaLoRA's importance scores
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    else:
        optimizer.step()
    if tuner is not None:
        tuner.update_and_allocate(step)  # after backward, before zero_grad (peft's contract)
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


@dataclass
class FitResult:
    history: list[dict[str, Any]]            # one row per epoch
    best_epoch: int                          # 1-based
    best_val: dict[str, Any]                 # validation metrics of the best epoch
    stopped_early: bool
    global_step: int
    ranks: list[dict[str, Any]] = field(default_factory=list)  # AdaLoRA rank table (epoch ends + final)
    train_time_s: float = 0.0
    train_samples: int = 0


def fit(
    model,
    bundle,
    train_set: Sequence[Example],
    *,
    validate: Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]],
    primary: str,
    images: Callable[..., torch.Tensor],
    lr: float,
    weight_decay: float = 0.05,
    max_epochs: int = 15,
    patience: int = 3,
    batch_size: int = 16,
    grad_accum: int = 1,
    schedule: str = "linear",
    warmup_steps: int = 0,
    max_prompt_tokens: int = 128,
    seed: int = 42,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    fused_lora: bool = True,
) -> FitResult:
    """Train `model` (a PeftModel or a model with requires_grad set) on `train_set`.

    validate() -> (metrics, predictions) on the validation split; metrics[primary] is maximised.
    images(refs, rng=...) -> the ViT outputs [B, P+1, Dv] (features.ImageEncoder).
    on_epoch_end(state) is called after every epoch with everything `resume=` needs to continue
    (torch.save-able); raising from it stops training as a crash would.
    fused_lora: run LoRA Linears as one autograd node each (fuse_lora; False: peft's own forward).
    Returns with the best epoch's trainable tensors loaded into the model.
    """
    from tqdm import tqdm  # the terminal bar: in a notebook (no ipywidgets) tqdm.auto only warns

    device = torch.device(device)
    autocast = autocast_for(device, precision)
    fuse_lora(model, fused_lora)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None  # torch has a CPU one too
    optimizer = adamw(param_groups(model, weight_decay), lr)
    per_epoch = steps_per_epoch(len(train_set), batch_size, grad_accum)
    scheduler, per_step = make_schedule(optimizer, schedule, max_epochs=max_epochs, steps_per_epoch=per_epoch,
                                        warmup_steps=warmup_steps)
    tuner = adalora_tuner(model)
    if tuner is not None:
        from .config import adalora_total_steps

        # AdaLoRA's budget schedule must end where training does
        tuner.peft_config[tuner.trainable_adapter_name].total_step = adalora_total_steps(per_epoch * max_epochs)

    st: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_metric": -math.inf, "best_epoch": 0, "best_val": {},
                          "best_weights": None, "bad_epochs": 0, "history": [], "ranks": [], "train_time_s": 0.0,
                          "train_samples": 0, "stopped_early": False}
    if resume is not None:
        load_trainable_state(model, resume["weights"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if tuner is not None:
            _load_adalora_state(tuner, resume["adalora"])
        st.update({k: resume[k] for k in st})

    for epoch in range(st["epoch"], max_epochs):
        if st["stopped_early"]:
            break
        seed_everything(epoch_seed(seed, epoch))
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).tolist()
        aug_rng = random.Random(epoch_seed(seed, epoch))
        model.train()
        unwrap(model).vision_model.eval()  # frozen ViT stays in eval mode (LAVIS's disabled_train)
        micro = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        losses: list[float] = []
        lr_now = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        bar = tqdm(total=len(micro), desc=f"epoch {epoch + 1}/{max_epochs}", disable=not progress, leave=False)
        for g in range(0, len(micro), grad_accum):
            group = micro[g:g + grad_accum]
            for idx in group:
                losses.append(backward_step(model, bundle, [train_set[i] for i in idx], images=images, rng=aug_rng,
                                            max_prompt_tokens=max_prompt_tokens, device=device, autocast=autocast,
                                            scaler=scaler, divide=len(group)))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            st["global_step"] += 1
            optimizer_update(optimizer, scheduler if per_step else None, scaler=scaler, tuner=tuner,
                             step=st["global_step"])
        bar.close()
        if not per_step:
            scheduler.step()
        st["train_time_s"] += time.perf_counter() - start
        st["train_samples"] += len(order)

        val_metrics, _ = validate()
        score = val_metrics[primary]
        improved = score is not None and score > st["best_metric"]
        if improved:
            st.update(best_metric=score, best_epoch=epoch + 1, best_val=val_metrics, best_weights=trainable_state(model),
                      bad_epochs=0)
        else:
            st["bad_epochs"] += 1
        st["history"].append({"epoch": epoch + 1, "step": st["global_step"], "lr": lr_now,
                              "train_loss": float(np.mean(losses)) if losses else None, "val": val_metrics,
                              "improved": improved, "time_s": round(time.perf_counter() - start, 3)})
        st["ranks"] += adalora_ranks(model, step=st["global_step"], epoch=epoch + 1, phase="epoch")
        st["epoch"] = epoch + 1
        st["stopped_early"] = st["bad_epochs"] >= patience and epoch + 1 < max_epochs
        if on_epoch_end is not None:
            on_epoch_end({**st, "weights": trainable_state(model), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                          "adalora": _adalora_state(tuner) if tuner is not None else None})

    if tuner is not None:
        cfg = tuner.peft_config[tuner.trainable_adapter_name]
        final = cfg.total_step - cfg.tfinal
        if st["global_step"] < final:
            # stopped early: apply the final allocation (to target_r on average) from the importance
            # scores gathered so far, so the rank table always ends on the same budget
            tuner.update_and_allocate(final)
        st["ranks"] += adalora_ranks(model, step=st["global_step"], epoch=st["epoch"], phase="final")
    if st["best_weights"] is not None:
        load_trainable_state(model, st["best_weights"])
    return FitResult(history=st["history"], best_epoch=st["best_epoch"], best_val=st["best_val"],
                     stopped_early=st["stopped_early"], global_step=st["global_step"], ranks=st["ranks"],
                     train_time_s=st["train_time_s"], train_samples=st["train_samples"])

"""`qformer-peft bench --cuda --full-size`: the paper's models at full size on one GPU, in a few minutes.

Builds InstructBLIP with Flan-T5-XL and with Vicuna-7B (models/presets.py, random weights, directly on the GPU:
nothing is downloaded) and times the training step the engine runs at the paper's batch sizes (T5 16; Vicuna 8
per micro-batch, accumulated twice): QF-LoRA and QF-LoRA + LLM-LoRA (rank 8, all targets), bf16 autocast, and
fp16 autocast with the grad scaler for Vicuna (the paper's precision for it). As in the engine, frozen weights
are in the autocast dtype, trainable tensors in fp32, and the step starts from cached ViT features (the frozen
encoder runs once per image, in the feature cache, not in the step). Prompts are random token ids of the
paper's lengths (PROMPT_TOKENS, TARGET_TOKENS).

Printed per case: samples/s, peak GPU memory, and model-FLOPs utilisation: the FLOPs of one step (forward,
backward, optimizer), counted by torch's FlopCounterMode, per second, over the card's dense bf16 peak
(BF16_PEAK_TFLOPS; fp16 has the same tensor-core peak on these cards).
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from typing import Any, Callable

import torch

from .config import setup_defaults
from .paper import RANKS

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets; the longest name that
# the device name contains wins (so "H100 PCIe" is not read as an SXM "H100").
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
# One case per line: (preset, setup, precision, micro-batch). The paper: T5 batch 16; Vicuna 8 x 2 accumulated.
CASES = (("flan-t5-xl", "qf-lora", "bf16", 16), ("flan-t5-xl", "qf-lora+llm-lora", "bf16", 16),
         ("vicuna-7b", "qf-lora", "bf16", 8), ("vicuna-7b", "qf-lora+llm-lora", "bf16", 8),
         ("vicuna-7b", "qf-lora", "fp16", 8), ("vicuna-7b", "qf-lora+llm-lora", "fp16", 8))
PROMPT_TOKENS = 64   # an instruction with options (ScienceQA's with context run longer; capped at 128)
TARGET_TOKENS = 4    # "(a)" and the end token
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def largest_config(setup: str) -> dict[str, Any]:
    """apply_peft arguments of `setup`'s largest configuration in the paper's grid: 'all' targets, the top rank."""
    return {**setup_defaults(setup), "rank": None if setup == "baseline" else max(RANKS)}


def median_time(step: Callable[[], Any], warmup: int, steps: int, sync: Callable[[], Any] = lambda: None) -> float:
    """Median wall time of step() over `steps` calls after `warmup` untimed ones; sync() before and after each."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bf16_peak(device_name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, None for a card not in BF16_PEAK_TFLOPS."""
    hits = [k for k in BF16_PEAK_TFLOPS if k in device_name]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def mfu(flops_per_step: float, step_s: float, peak_tflops: float | None) -> float | None:
    """Model-FLOPs utilisation: achieved FLOP/s over the peak (None without a known peak)."""
    return flops_per_step / step_s / (peak_tflops * 1e12) if peak_tflops and step_s > 0 else None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch executes in fn() (matrix products and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(config, device: torch.device, dtype: torch.dtype, setup: str):
    """A randomly initialised InstructBLIP of `config` built in `dtype` on `device`, adapted for `setup`, its
    trainable tensors in fp32 (engine.keep_trainable_fp32)."""
    from transformers import InstructBlipForConditionalGeneration

    from . import peft_setup
    from .engine import keep_trainable_fp32

    torch.manual_seed(0)
    with torch.device(device), _default_dtype(dtype):
        model = InstructBlipForConditionalGeneration(config)
    model = peft_setup.apply_peft(model, setup, **largest_config(setup))
    keep_trainable_fp32(model)
    return model


def random_batch(config, batch_size: int, device: torch.device, dtype: torch.dtype, *, prompt_tokens: int,
                 target_tokens: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(batch, cached ViT features) laid out as models.inputs.make_batch lays them out, on random ids."""
    g = torch.Generator(device=device).manual_seed(seed)
    n_query, image_id = config.num_query_tokens, config.image_token_index
    vocab, qf_vocab = config.text_config.vocab_size, config.qformer_config.vocab_size
    decoder_only = config.use_decoder_only_language_model

    def ids(n: int, high: int) -> torch.Tensor:
        x = torch.randint(3, high, (batch_size, n), device=device, generator=g)
        return x.masked_fill(x == image_id, 3)

    prompt, target = ids(prompt_tokens, vocab), ids(target_tokens, vocab)
    images = torch.full((batch_size, n_query), image_id, device=device)
    batch = {"qformer_input_ids": ids(prompt_tokens, qf_vocab),
             "qformer_attention_mask": torch.ones(batch_size, prompt_tokens, dtype=torch.long, device=device)}
    if decoder_only:
        input_ids = torch.cat([images, prompt, target], dim=1)
        labels = torch.full_like(input_ids, -100)
        labels[:, -target_tokens:] = target
        batch.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)
    else:
        input_ids = torch.cat([images, prompt], dim=1)
        batch.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=target,
                     decoder_attention_mask=torch.ones_like(target))
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
    features = torch.randn(batch_size, patches, config.vision_config.hidden_size, device=device, generator=g,
                           dtype=dtype)
    return batch, features


def measure(config, *, setup: str, precision: str, batch_size: int, device: str | torch.device = "cuda",
            warmup: int = 2, steps: int = 5, prompt_tokens: int = PROMPT_TOKENS,
            target_tokens: int = TARGET_TOKENS, label: str = "") -> dict[str, Any]:
    """One case: build, then time the training step (median of `steps` after `warmup`); see the module doc."""
    from .models.inputs import forward
    from .train import adamw, optimizer_update, param_groups

    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = DTYPES[precision]
    model = build(config, device, dtype, setup)
    model.train()
    optimizer = adamw(param_groups(model, 0.05), 1e-5)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    batch, features = random_batch(config, batch_size, device, dtype, prompt_tokens=prompt_tokens,
                                   target_tokens=target_tokens)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = forward(model, batch, image_embeds=features).loss
        (loss if scaler is None else scaler.scale(loss)).backward()
        optimizer_update(optimizer, scaler=scaler)

    step()  # allocates the optimizer state
    flops = count_flops(step)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_time(step, warmup, steps, sync)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = bf16_peak(name) if cuda else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row = {"model": label, "setup": setup, "precision": precision, "batch_size": batch_size, "step_s": seconds,
           "samples_per_s": batch_size / seconds, "flops_per_step": flops, "tflops": flops / seconds / 1e12,
           "mfu": mfu(flops, seconds, peak), "trainable_params": trainable,
           "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return row


def run_full_size(cases=CASES, *, steps: int = 5, warmup: int = 2, log: Callable[[str], None] = print) -> list[dict]:
    """Every case in CASES on the GPU; a table line per case as it ends. Raises RuntimeError without CUDA."""
    from .models.presets import build_config

    if not torch.cuda.is_available():
        raise RuntimeError(f"the full-size GPU check needs CUDA; torch {torch.__version__} sees no GPU here "
                           "(a CPU build of torch, or no driver)")
    name = torch.cuda.get_device_name(0)
    peak = bf16_peak(name)
    log(f"[bench] {name}: dense bf16 peak {peak if peak else 'unknown'} TFLOP/s; torch {torch.__version__}; random "
        f"weights; prompt {PROMPT_TOKENS} + target {TARGET_TOKENS} tokens; step from cached ViT features")
    log(f"{'model':<11}{'setup':<18}{'prec':<6}{'batch':>5}{'samples/s':>11}{'peak GB':>9}{'TFLOP/s':>9}{'MFU':>7}")
    rows = []
    for preset, setup, precision, batch_size in cases:
        start = time.perf_counter()
        r = measure(build_config(preset), setup=setup, precision=precision, batch_size=batch_size, steps=steps,
                    warmup=warmup, label=preset)
        rows.append(r)
        log(f"{preset:<11}{setup:<18}{precision:<6}{batch_size:>5}{r['samples_per_s']:>11.1f}"
            f"{r['peak_memory_gb']:>9.1f}{r['tflops']:>9.1f}"
            + (f"{100 * r['mfu']:>6.0f}%" if r["mfu"] is not None else f"{'n/a':>7}")
            + f"   ({time.perf_counter() - start:.0f} s)")
    return rows


def main(json_path=None) -> int:
    """The command line's `bench --cuda --full-size`: 0, or 2 with the reason when there is no GPU."""
    try:
        rows = run_full_size()
    except RuntimeError as err:
        print(f"qformer-peft bench --cuda --full-size: {err}", file=sys.stderr)
        return 2
    if json_path is not None:
        import json

        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return 0

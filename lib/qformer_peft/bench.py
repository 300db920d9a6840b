"""`qformer-peft bench`: how near a training step runs to the machine's limit, and what the frozen-feature
cache and batched ranking buy, measured in one process.

CPU efficiency (always): FLOPs, ms and the share of the matmul peak of a training step per LLM and setup
  (bench_efficiency.py).
CPU (always), on the `mini` preset and the synthetic IconQA (smoke size, written to a temp folder):
  training samples/s per setup, with the feature cache and without it (images decoded, resized and
  run through the frozen ViT every step), batch 16, the real training step (train.backward_step +
  AdamW); evaluation questions/s of batched ranking against a one-candidate-at-a-time loop; the
  process's peak resident memory.
CUDA (when torch.cuda.is_available()): the full-size Flan-T5-XL preset with random weights in bf16,
  batch 16, qf-lora and qf-lora+llm-lora (r=8, all targets): samples/s, peak GPU memory, and achieved
  TFLOP/s (FLOPs of one step counted by torch's FlopCounterMode) against the card's dense bf16 peak.
Timings take the median of timed steps after warm-up steps. Prints a table of ratios; --json writes
every number.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .bench_cuda import bf16_peak, median_time
from .bench_efficiency import SETUPS, bench_efficiency, efficiency_table, mini_examples


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if platform.system() == "Linux" else kb / 2**20


# --- CPU: mini preset, cache and batching ------------------------------------------------------------

def bench_cpu(*, batch_size: int = 16, warmup: int = 2, steps: int = 6, eval_questions: int = 32,
              llm: str = "t5", progress: bool = True) -> dict[str, Any]:
    from . import features, peft_setup
    from .run_inputs import resolve_bundle
    from .evaluate import candidate_nll, candidate_nll_loop
    from .features import FeatureCache, ImageEncoder
    from .models.inputs import encode_images
    from .lora_fused import fuse_lora
    from .train import adamw, backward_step, optimizer_update, param_groups, seed_everything

    out: dict[str, Any] = {"preset": "mini", "llm": llm, "batch_size": batch_size, "threads": torch.get_num_threads(),
                           "train": [], "eval": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, splits = mini_examples(Path(tmp))
        cfg = cfg.replace(llm=llm)
        train = splits["train"]
        batches = [train[i:i + batch_size] for i in range(0, len(train) - batch_size + 1, batch_size)]
        for setup, kwargs in SETUPS.items():
            seed_everything(0)
            bundle = resolve_bundle(cfg)
            model = peft_setup.apply_peft(bundle.model, setup, **kwargs)
            model.train()
            bundle.model.vision_model.eval()
            fuse_lora(model)  # as fit() runs it
            optimizer = adamw(param_groups(model, 0.05), 1e-5)
            row: dict[str, Any] = {"setup": setup, "trainable": sum(peft_setup.trainable_parameters(model).values())}
            for cached in (True, False):
                features.clear_memory()
                cache = FeatureCache(bundle.model, bundle.image_processor) if cached else None
                if cache is not None:
                    cache.precompute([e.image for b in batches for e in b])
                images = ImageEncoder(bundle.model, bundle.image_processor, cache=cache)
                cursor = iter(range(10**9))

                def step():
                    batch = batches[next(cursor) % len(batches)]
                    backward_step(model, bundle, batch, images=images)
                    optimizer_update(optimizer)

                seconds = median_time(step, warmup, steps)
                row["cached_samples_per_s" if cached else "uncached_samples_per_s"] = batch_size / seconds
            row["cache_speedup"] = row["cached_samples_per_s"] / row["uncached_samples_per_s"]
            out["train"].append(row)
            if progress:
                print(f"  train {setup}: {row['cached_samples_per_s']:.1f} samples/s cached, "
                      f"{row['uncached_samples_per_s']:.1f} uncached", file=sys.stderr)

        # evaluation: batched ranking vs one forward per candidate, on the same cached ViT outputs
        seed_everything(0)
        bundle = resolve_bundle(cfg)
        model = peft_setup.apply_peft(bundle.model, "qf-lora", **SETUPS["qf-lora"])
        model.eval()
        questions = splits["test"][:eval_questions]
        from .data.records import load_image

        with torch.no_grad():
            embeds = encode_images(model, bundle.image_processor([load_image(e.image) for e in questions]))
        chunks = [(slice(i, i + batch_size)) for i in range(0, len(questions), batch_size)]

        def run(fn):
            def go():
                for sl in chunks:
                    fn(bundle, embeds[sl], [e.prompt for e in questions[sl]], [e.candidates for e in questions[sl]],
                       model=model)
            return go

        batched = median_time(run(candidate_nll), 1, 3)
        looped = median_time(run(candidate_nll_loop), 1, 3)
        out["eval"] = {"questions": len(questions),
                       "candidates_per_question": sum(len(e.candidates) for e in questions) / len(questions),
                       "batched_questions_per_s": len(questions) / batched,
                       "loop_questions_per_s": len(questions) / looped, "batched_speedup": looped / batched}
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# --- CUDA: full-size Flan-T5-XL --------------------------------------------------------------------------

def bench_cuda(*, batch_size: int = 16, warmup: int = 2, steps: int = 5, prompt_tokens: int = 64,
               target_tokens: int = 8, device: str = "cuda", preset: str = "flan-t5-xl", config=None,
               progress: bool = True) -> dict[str, Any]:
    """A full-size preset (or a given InstructBlipConfig) with random bf16 weights: training steps of
    qf-lora and of qf-lora+llm-lora on random token ids (no tokenizer needed)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import InstructBlipForConditionalGeneration

    from . import peft_setup
    from .models.inputs import forward
    from .models.presets import build_config
    from .train import adamw, optimizer_update, param_groups

    device = torch.device(device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = bf16_peak(name)
    config = build_config(preset) if config is None else config
    out: dict[str, Any] = {"device": name, "bf16_peak_tflops": peak, "preset": preset,
                           "batch_size": batch_size, "prompt_tokens": prompt_tokens, "target_tokens": target_tokens,
                           "train": []}
    gen = torch.Generator(device=device).manual_seed(0)
    n_query, image_id = config.num_query_tokens, config.image_token_index
    size = config.vision_config.image_size
    llm_vocab, qf_vocab = config.text_config.vocab_size, config.qformer_config.vocab_size
    prompt = torch.randint(0, image_id, (batch_size, prompt_tokens), device=device, generator=gen)
    prompt[prompt == image_id] = 0
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, device=device, generator=gen, dtype=torch.bfloat16),
        "qformer_input_ids": torch.randint(1, qf_vocab, (batch_size, prompt_tokens), device=device, generator=gen),
        "input_ids": torch.cat([torch.full((batch_size, n_query), image_id, device=device), prompt], dim=1),
        "labels": torch.randint(1, llm_vocab, (batch_size, target_tokens), device=device, generator=gen),
    }
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for setup in ("qf-lora", "qf-lora+llm-lora"):
        torch.manual_seed(0)
        with torch.device(device):
            model = InstructBlipForConditionalGeneration(config).to(torch.bfloat16)  # random weights
        model = peft_setup.apply_peft(model, setup, **SETUPS[setup])
        model.train()
        optimizer = adamw(param_groups(model, 0.05), 1e-5)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = forward(model, batch).loss
            loss.backward()
            optimizer_update(optimizer)

        step()  # allocate the optimizer state before counting
        with FlopCounterMode(display=False) as counter:
            step()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = median_time(step, warmup, steps, sync=sync)
        tflops = counter.get_total_flops() / seconds / 1e12
        row = {"setup": setup, "samples_per_s": batch_size / seconds, "step_s": seconds,
               "flops_per_step": counter.get_total_flops(), "tflops": tflops, "mfu": tflops / peak if peak else None,
               "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
        out["train"].append(row)
        if progress:
            print(f"  {name} {setup}: {row['samples_per_s']:.1f} samples/s, {tflops:.1f} TFLOP/s", file=sys.stderr)
        del model, optimizer
        if cuda:
            torch.cuda.empty_cache()
    return out


# --- command line ------------------------------------------------------------------------------------------

def table(result: dict[str, Any]) -> str:
    cpu = result["cpu"]
    lines = [f"CPU, {cpu['preset']} preset ({cpu['llm']}), batch {cpu['batch_size']}, {cpu['threads']} threads",
             f"{'setup':<18}{'trainable':>11}{'cached/s':>11}{'uncached/s':>12}{'cache x':>9}"]
    for r in cpu["train"]:
        lines.append(f"{r['setup']:<18}{r['trainable']:>11,}{r['cached_samples_per_s']:>11.1f}"
                     f"{r['uncached_samples_per_s']:>12.1f}{r['cache_speedup']:>9.2f}")
    e = cpu["eval"]
    lines.append(f"ranking {e['questions']} questions ({e['candidates_per_question']:.1f} candidates each): "
                 f"batched {e['batched_questions_per_s']:.1f} q/s, per-candidate loop {e['loop_questions_per_s']:.1f} "
                 f"q/s, batched x {e['batched_speedup']:.2f}")
    lines.append(f"peak resident memory {cpu['peak_rss_mb']:.0f} MB")
    cuda = result.get("cuda")
    if cuda:
        lines.append(f"CUDA {cuda['device']}, {cuda['preset']} bf16 random weights, batch {cuda['batch_size']}")
        for r in cuda["train"]:
            mfu = f", {100 * r['mfu']:.0f}% of the bf16 peak" if r["mfu"] is not None else ""
            memory = f", {r['peak_gpu_memory_gb']:.1f} GB" if r["peak_gpu_memory_gb"] is not None else ""
            lines.append(f"  {r['setup']:<18}{r['samples_per_s']:.1f} samples/s{memory}, {r['tflops']:.1f} TFLOP/s{mfu}")
    else:
        lines.append("CUDA: not available here (the full-size Flan-T5-XL measurement needs a GPU)")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure the feature cache, batched ranking and (on CUDA) full-size speed",
                              description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    p.add_argument("--llm", choices=("t5", "llama"), default="t5", help="LLM kind of the mini model (default t5)")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per measurement (median)")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA measurement even where a GPU exists")
    p.add_argument("--cuda", action="store_true", help="with --full-size: the GPU check (bench_cuda.py)")
    p.add_argument("--full-size", action="store_true", help="with --cuda: Flan-T5-XL and Vicuna-7B at full size")
    p.set_defaults(func=_cli_bench)


def _cli_bench(args: argparse.Namespace) -> int:
    from .runs import environment

    if args.cuda or args.full_size:  # the full-size GPU check only (bench_cuda.py)
        from . import bench_cuda

        if not (args.cuda and args.full_size):
            print("qformer-peft bench: --cuda and --full-size go together (the full-size GPU check); "
                  "without either, the CPU tables", file=sys.stderr)
            return 2
        return bench_cuda.main(args.json)
    result: dict[str, Any] = {"env": environment(), "efficiency": bench_efficiency(),
                              "cpu": bench_cpu(steps=args.steps, llm=args.llm)}
    result["cuda"] = bench_cuda() if torch.cuda.is_available() and not args.no_cuda else None
    print(efficiency_table(result["efficiency"]))
    print(table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0

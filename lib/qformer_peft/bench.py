"""`qformer-peft bench`: how near a training step runs to the machine's limit, and what the frozen-feature
cache and batched ranking buy, measured in one process.

CPU efficiency (always), one torch thread, `mini` preset with random weights, batch 16, cached ViT features,
  per LLM (T5, LLaMA) and setup (baseline, qf-lora, qf-lora+llm-lora): FLOPs of the real training step
  (FlopCounterMode), ms a step (thread CPU time), achieved GFLOP/s and their share of the fp32 matmul peak
  timed between the steps on the same thread (the CPU counterpart of the CUDA MFU), the speed-up over
  peft's own LoRA forward, and the step's time split (matmul, attention, elementwise, framework, optimizer,
  batch building) from a torch.profiler profile.
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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .bench_cuda import bf16_peak, largest_config, median_time

from .paper import SETUPS as PAPER_SETUPS

SETUPS = {setup: largest_config(setup) for setup in PAPER_SETUPS}  # setup -> apply_peft arguments


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if platform.system() == "Linux" else kb / 2**20




# --- CPU: mini preset, cache and batching ------------------------------------------------------------

def _mini_examples(folder: Path, preset: str = "mini", size: str = "smoke"):
    from .config import ExperimentConfig
    from .data import synthetic
    from .run_inputs import load_examples

    synthetic.synthesize(folder, size=size, seed=0)
    cfg = ExperimentConfig(benchmark="iconqa", data_root=str(folder / "iconqa"), model=preset)
    return cfg, load_examples(cfg)


def bench_cpu(*, batch_size: int = 16, warmup: int = 2, steps: int = 6, eval_questions: int = 32,
              llm: str = "t5", progress: bool = True) -> dict[str, Any]:
    from . import features, peft_setup
    from .run_inputs import resolve_bundle
    from .evaluate import candidate_nll, candidate_nll_loop
    from .features import FeatureCache, ImageEncoder
    from .models.inputs import encode_images
    from .train import adamw, backward_step, fuse_lora, optimizer_update, param_groups, seed_everything

    out: dict[str, Any] = {"preset": "mini", "llm": llm, "batch_size": batch_size, "threads": torch.get_num_threads(),
                           "train": [], "eval": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, splits = _mini_examples(Path(tmp))
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


# --- CPU: how near a training step runs to the machine's limit -------------------------------------------

EFFICIENCY_SETUPS = ("baseline", "qf-lora", "qf-lora+llm-lora")
# Operator names by time-split category (self time of each profiled aten op); wrappers such as aten::matmul
# and aten::linear count with the kernels they dispatch to.
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::mv",
                        "aten::addmv", "aten::dot", "aten::matmul", "aten::linear"})
SPLIT = ("matmul", "attention", "elementwise", "framework", "optimizer", "batch")
PEAK_N = 1024  # the calibration product: fp32 [1024 x 1024] @ [1024 x 1024]


def _product(n: int):
    """One fp32 [n x n] @ [n x n] product (2 n^3 FLOPs) as a callable: the matmul-peak calibration."""
    x, y = torch.randn(n, n), torch.randn(n, n)
    return lambda: torch.mm(x, y)


def interleaved(arms: dict[str, tuple[Any, Any]], warmup: int, rounds: int,
                 clock=time.thread_time) -> dict[str, float]:
    """Median seconds of each arm's run(), the arms taking turns (in a rotating order) round after round, so that
    all see the same machine load; arms: name -> (prepare, run), prepare() untimed before each run().

    The default clock is the calling thread's CPU time (time.thread_time), which holds all the work when torch
    runs on one thread: on a shared machine it leaves out the time the thread waits for a core, the largest
    noise in wall time. With more torch threads pass time.perf_counter."""
    names = list(arms)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            prepare, run = arms[k]
            prepare()
            start = clock()
            run()
            if r >= warmup:
                times[k].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _category(name: str) -> str | None:
    if name in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name or name in ("aten::_softmax",
                                                                               "aten::_softmax_backward_data"):
        return "attention"
    return "elementwise" if name.startswith("aten::") else None


def time_split(events, step_range: str = "bench.step") -> dict[str, float]:
    """Shares of the profiled steps' wall time: matmul / attention / elementwise (self time of aten ops, by
    name), optimizer (torch's Optimizer.* ranges), batch building (train.BATCH_RANGE: image lookup, tokens,
    tensors) and framework (the rest: Python, autograd bookkeeping, the profiler's own cost)."""
    from .train import BATCH_RANGE

    total = 0.0
    split = dict.fromkeys(SPLIT, 0.0)
    for e in events:
        if e.name == step_range:
            total += e.cpu_time_total
            continue
        ancestors, parent = [], e.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        if step_range not in ancestors:
            continue
        if e.name == BATCH_RANGE or e.name.startswith("Optimizer."):
            if not any(a == BATCH_RANGE or a.startswith("Optimizer.") for a in ancestors):
                split["batch" if e.name == BATCH_RANGE else "optimizer"] += e.cpu_time_total
            continue
        if any(a == BATCH_RANGE or a.startswith("Optimizer.") for a in ancestors):
            continue
        category = _category(e.name)
        if category is not None:
            split[category] += e.self_cpu_time_total
    if total <= 0:
        raise ValueError(f"time_split: no {step_range!r} range in the profile (profile the steps inside "
                         "torch.profiler.record_function)")
    split["framework"] = max(0.0, total - sum(split.values()))
    return {k: v / total for k, v in split.items()}


def bench_efficiency(*, llms=("t5", "llama"), setups=EFFICIENCY_SETUPS, preset: str = "mini", batch_size: int = 16,
                     warmup: int = 3, steps: int = 20, profile_steps: int = 3, threads: int = 1,
                     data_size: str = "smoke", progress: bool = True) -> dict[str, Any]:
    """Per LLM and setup, the real training step (train.backward_step on cached ViT features + AdamW) on
    `threads` torch threads: FLOPs counted by torch's FlopCounterMode (forward + backward; AdamW's
    elementwise update is not counted), median ms a step (on one thread its CPU time, see interleaved),
    achieved GFLOP/s and their share of the fp32 matmul peak (the median 1024^3 product, timed between the
    steps on the same threads, so both see the same load), and the time split of a torch.profiler profile.
    Where the setup has LoRA modules, the same step with peft's own LoRA forward takes turns with it
    (peft_path_ms_per_step).

    The model is `preset` with random weights (what a step costs does not depend on the values), so the
    bench runs where no base checkpoint was built; the batches come from the synthetic IconQA of `data_size`."""
    from torch.profiler import ProfilerActivity, profile, record_function
    from torch.utils.flop_counter import FlopCounterMode

    from . import features, peft_setup
    from .run_inputs import resolve_bundle
    from .features import FeatureCache, ImageEncoder
    from .train import adamw, backward_step, fuse_lora, optimizer_update, param_groups, seed_everything

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    product = _product(PEAK_N)
    out: dict[str, Any] = {"preset": preset, "batch_size": batch_size, "threads": threads, "rows": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base_cfg, splits = _mini_examples(Path(tmp), preset=preset, size=data_size)
            train = splits["train"]
            batches = [train[i:i + batch_size] for i in range(0, len(train) - batch_size + 1, batch_size)]
            if not batches:
                raise ValueError(f"bench_efficiency: fewer than {batch_size} training items")
            for llm in llms:
                cfg = base_cfg.replace(llm=llm)
                for setup in setups:
                    seed_everything(0)
                    bundle = resolve_bundle(cfg)
                    model = peft_setup.apply_peft(bundle.model, setup, **SETUPS[setup])
                    model.train()
                    bundle.model.vision_model.eval()
                    optimizer = adamw(param_groups(model, 0.05), 1e-5)
                    features.clear_memory()
                    cache = FeatureCache(bundle.model, bundle.image_processor)
                    cache.precompute([e.image for b in batches for e in b])
                    images = ImageEncoder(bundle.model, bundle.image_processor, cache=cache)
                    cursor = iter(range(10**9))

                    def step():
                        backward_step(model, bundle, batches[next(cursor) % len(batches)], images=images)
                        optimizer_update(optimizer)

                    fused = fuse_lora(model)  # as fit() runs it
                    step()  # the optimizer state exists before anything is counted
                    with FlopCounterMode(display=False) as counter:
                        step()
                    flops = counter.get_total_flops()
                    arms = {"step": (lambda: fuse_lora(model, True), step), "matmul": (lambda: None, product)}
                    if fused:
                        arms["peft"] = (lambda: fuse_lora(model, False), step)
                    medians = interleaved(arms, warmup, steps,
                                           clock=time.thread_time if threads == 1 else time.perf_counter)
                    fuse_lora(model, True)
                    seconds, peft_seconds = medians["step"], medians.get("peft")
                    peak = 2 * PEAK_N**3 / medians["matmul"] / 1e9
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        for _ in range(profile_steps):
                            with record_function("bench.step"):
                                step()
                    gflops = flops / seconds / 1e9
                    row = {"llm": llm, "setup": setup, "gflop_per_step": flops / 1e9, "ms_per_step": 1000 * seconds,
                           "peft_path_ms_per_step": 1000 * peft_seconds if peft_seconds else None,
                           "gflops": gflops, "matmul_peak_gflops": peak, "peak_share": gflops / peak,
                           "split": time_split(prof.events())}
                    out["rows"].append(row)
                    if progress:
                        print(f"  {llm} {setup}: {row['ms_per_step']:.1f} ms a step, {gflops:.1f} GFLOP/s "
                              f"({100 * row['peak_share']:.0f}% of {peak:.0f})", file=sys.stderr)
                    del model, optimizer, bundle, cache, images
    finally:
        torch.set_num_threads(saved_threads)
    return out


def efficiency_table(eff: dict[str, Any]) -> str:
    clock = ", thread CPU time" if eff["threads"] == 1 else ""
    lines = [f"CPU efficiency: {eff['preset']} preset, batch {eff['batch_size']}, cached ViT features, "
             f"{eff['threads']} thread(s){clock}; peak = median fp32 1024^3 matmul timed between the row's steps",
             f"{'llm':<6}{'setup':<18}{'GFLOP':>7}{'ms':>8}{'GFLOP/s':>9}{'peak':>7}{'share':>7}{'vs peft':>9}"
             "  time split %: " + " ".join(f"{k[:5]:>5}" for k in SPLIT)]
    for r in eff["rows"]:
        ratio = f"x{r['peft_path_ms_per_step'] / r['ms_per_step']:.2f}" if r["peft_path_ms_per_step"] else "-"
        lines.append(f"{r['llm']:<6}{r['setup']:<18}{r['gflop_per_step']:>7.2f}{r['ms_per_step']:>8.1f}"
                     f"{r['gflops']:>9.1f}{r['matmul_peak_gflops']:>7.0f}{100 * r['peak_share']:>6.0f}%{ratio:>9}"
                     + " " * 15 + " ".join(f"{100 * r['split'][k]:>5.0f}" for k in SPLIT))
    lines.append("vs peft: the same step with peft's own LoRA forward (train.fuse_lora off), steps interleaved")
    return "\n".join(lines)


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

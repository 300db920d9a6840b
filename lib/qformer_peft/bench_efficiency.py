"""The CPU efficiency table of `qformer-peft bench`: how near a training step runs to the machine's limit.

One torch thread, `mini` preset with random weights, batch 16, cached ViT features, per LLM (T5, LLaMA) and
setup (baseline, qf-lora, qf-lora+llm-lora): FLOPs of the real training step (FlopCounterMode), ms a step
(thread CPU time), achieved GFLOP/s and their share of the fp32 matmul peak timed between the steps on the
same thread (the CPU counterpart of the CUDA MFU), the speed-up over peft's own LoRA forward, and the step's
time split (matmul, attention, elementwise, framework, optimizer, batch building) from a torch.profiler profile.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .bench_cuda import largest_config
from .paper import SETUPS as PAPER_SETUPS

SETUPS = {setup: largest_config(setup) for setup in PAPER_SETUPS}  # setup -> apply_peft arguments


def mini_examples(folder: Path, preset: str = "mini", size: str = "smoke"):
    """The synthetic IconQA of `size` written to `folder`, and a config of `preset` that reads it: (config,
    splits of examples), the batches both CPU benches time."""
    from .config import ExperimentConfig
    from .data import synthetic
    from .run_inputs import load_examples

    synthetic.synthesize(folder, size=size, seed=0)
    cfg = ExperimentConfig(benchmark="iconqa", data_root=str(folder / "iconqa"), model=preset)
    return cfg, load_examples(cfg)


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
    from .lora_fused import fuse_lora
    from .train import adamw, backward_step, optimizer_update, param_groups, seed_everything

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    product = _product(PEAK_N)
    out: dict[str, Any] = {"preset": preset, "batch_size": batch_size, "threads": threads, "rows": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base_cfg, splits = mini_examples(Path(tmp), preset=preset, size=data_size)
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
    lines.append("vs peft: the same step with peft's own LoRA forward (lora_fused.fuse_lora off), steps interleaved")
    return "\n".join(lines)

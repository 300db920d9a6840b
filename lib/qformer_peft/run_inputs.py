"""What a run reads: its base model (resolve_bundle) and its benchmark(s) as Examples per split.

The splits honour the config's limits and the scored test split (scored_split: VizWiz's val when its test split
has no answers); a null run's training answers are shuffled (shuffled_answers); evaluate_tasks scores a joint
benchmark task by task.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from pathlib import Path

import torch

from .config import ConfigError, ExperimentConfig
from .evaluate import Example, evaluate


def resolve_bundle(config: ExperimentConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The base model of a run, unadapted: the ONE place that turns `config.model` into a Bundle.

    A preset name builds a randomly initialised model (seeded by config.seed) whose word-level
    tokenizers come from the synthetic world's vocabulary: DATA/vocab.txt beside the benchmark roots
    (`data synth` writes it), else data.synthetic.vocabulary(). Anything else is a checkpoint
    directory or hub id, read with load_bundle (a local directory never touches the network).
    The config's connector is attached, freshly initialised from config.seed (not yet aligned).
    """
    from .models import build, connectors
    from .models.presets import PRESETS

    if config.model in PRESETS:
        qformer_tokenizer, llm_tokenizer = build.default_tokenizers(_vocabulary(config))
        bundle = build.build_model(config.model, config.llm, qformer_tokenizer=qformer_tokenizer,
                                   llm_tokenizer=llm_tokenizer, seed=config.seed, device=device)
    else:
        bundle = build.load_bundle(config.model, device=device, llm=config.llm, dtype=dtype)
    connectors.attach(bundle.model, connectors.spec_of(config), seed=config.seed)
    return bundle


def benchmark_root(config: ExperimentConfig, benchmark: str | None = None) -> Path:
    """The root of `benchmark` (default: the config's; a joint benchmark's first task): data_root itself, or
    data_root/<benchmark> when data_root is the folder `qformer-peft data synth` wrote (it holds synth.json
    and one root per benchmark). A joint benchmark's data_root always holds one root per task."""
    benchmark = benchmark or config.tasks[0]
    root = Path(config.data_root)
    if ((root / "synth.json").is_file() or len(config.tasks) > 1) and (root / benchmark).is_dir():
        return root / benchmark
    return root


def _vocabulary(config: ExperimentConfig) -> list[str]:
    if config.data_root:
        vocab = benchmark_root(config).resolve().parent / "vocab.txt"
        if vocab.is_file():
            return [w for w in vocab.read_text(encoding="utf-8").splitlines() if w]
    from .data import synthetic

    return list(synthetic.vocabulary())


def examples_of(records, *, train: bool) -> list[Example]:
    """Records -> Examples through the paper's templates. Flickr30k trains on every caption as its own
    sample (as the paper's code did) and is scored against all of them."""
    from . import templates

    out = []
    for r in records:
        if r.image is None:
            raise ValueError(f"{r.dataset} {r.id}: no image; the study uses image problems only (img_only=True)")
        base = dict(id=r.id, image=r.image, prompt=templates.prompt(r), answers=tuple(r.answers), meta=dict(r.meta))
        if r.choices:
            out.append(Example(target=templates.target(r), candidates=tuple(templates.candidates(r)), answer=r.answer,
                               **base))
        elif r.dataset == "flickr30k" and train:
            out += [Example(**{**base, "id": f"{r.id}#{k}"}, target=c) for k, c in enumerate(r.answers)]
        else:
            if not r.answers:
                raise ValueError(f"{r.dataset} {r.id} ({r.split}): no answers to train on or score against; the "
                                 "official VizWiz test split has none: score val (test_split='val' or 'auto')")
            out.append(Example(target=templates.target(r), **base))
    return out


def scored_split(config: ExperimentConfig, task: str | None = None) -> str:
    """The split scored as the test: config.test_split, or for 'auto' the test split when it has answers, else
    val (the official VizWiz test annotations have none; LAVIS scores VizWiz on val). Training uses train."""
    if config.test_split != "auto":
        return config.test_split
    task = task or config.tasks[0]
    return "test" if _test_split_answered(task, str(benchmark_root(config, task))) else "val"


@functools.lru_cache(maxsize=None)
def _test_split_answered(task: str, root: str) -> bool:
    """Whether a benchmark's test split has answers (or is empty): read once a process, not once a call."""
    from . import data

    records = data.load(task, root, "test").records
    return not records or any(r.answers or r.choices for r in records)


def load_examples(config: ExperimentConfig) -> dict[str, list[Example]]:
    """train / val / test Examples of the config's benchmark, each cut to its limit (first N records).

    A joint benchmark ('scienceqa+iconqa') concatenates its tasks, each cut to the limit, with ids made
    unique ('<task>/<id>') and meta['task'] set, which evaluate_tasks splits by.
    """
    from . import data

    if not config.data_root:
        raise ConfigError(f"data_root is empty: point it at the {config.benchmark} root (e.g. DATA/{config.benchmark} "
                          "as `qformer-peft data synth --out DATA` writes it)")
    joint = len(config.tasks) > 1
    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for task in config.tasks:
        root = benchmark_root(config, task)
        if joint and root == Path(config.data_root):
            raise ConfigError(f"data_root {config.data_root}: the joint benchmark {config.benchmark!r} needs one root "
                              f"per task there ({', '.join(config.tasks)}), as `qformer-peft data synth` writes them")
        for split, limit in (("train", config.train_limit), ("val", config.val_limit), ("test", config.test_limit)):
            source = scored_split(config, task) if split == "test" else split
            records = data.load(task, root, source).records[:limit]
            if not records:
                raise ValueError(f"{root}: the {split} split of {task} is empty")
            examples = examples_of(records, train=split == "train")
            if joint:
                examples = [dataclasses.replace(e, id=f"{task}/{e.id}", meta={**e.meta, "task": task})
                            for e in examples]
            out[split] += examples
    if config.shuffle_answers:
        out["train"] = shuffled_answers(out["train"], config.seed)
    return out


def shuffled_answers(examples: list[Example], seed: int) -> list[Example]:
    """A null run's training set: each multiple-choice item's answer drawn uniformly from its candidates,
    open-ended targets permuted across items; a function of the seed only. Images and prompts stay."""
    rng = random.Random(seed)
    open_targets = [e.target for e in examples if not e.candidates]
    rng.shuffle(open_targets)
    targets = iter(open_targets)
    out = []
    for e in examples:
        if e.candidates:
            k = rng.randrange(len(e.candidates))
            out.append(dataclasses.replace(e, answer=k, target=e.candidates[k]))
        else:
            out.append(dataclasses.replace(e, target=next(targets)))
    return out


def records_zero_shot(config: ExperimentConfig) -> bool:
    """Reference runs (the baseline, null runs) also score the test items before training: the base model's
    zero-shot score on the same items, which says whether a cell moved from its base."""
    return config.setup == "baseline" or config.shuffle_answers


def evaluate_tasks(bundle, examples: list[Example], config: ExperimentConfig, embeds_of, **kwargs):
    """evaluate() on the config's benchmark; a joint benchmark scores each task alone and reports
    {"accuracy": the mean over tasks (each task counts equally), "n", "tasks": {task: its metrics}}."""
    if len(config.tasks) == 1:
        return evaluate(bundle, examples, config.benchmark, embeds_of, **kwargs)
    desc = kwargs.pop("desc", "eval")
    per_task, predictions = {}, []
    for task in config.tasks:
        part = [e for e in examples if e.meta.get("task") == task]
        per_task[task], preds = evaluate(bundle, part, task, embeds_of, desc=f"{desc} {task}", **kwargs)
        predictions += [{**p, "task": task} for p in preds]
    accs = [m["accuracy"] for m in per_task.values() if m.get("accuracy") is not None]
    mean = sum(accs) / len(accs) if len(accs) == len(per_task) else None
    return {"accuracy": mean, "n": sum(m["n"] for m in per_task.values()), "tasks": per_task}, predictions

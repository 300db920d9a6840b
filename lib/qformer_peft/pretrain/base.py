"""The embedded base models: small InstructBLIPs built in stages the way the real one was, cached (docs/embedded-models.md).

    qformer-peft base build --preset mini --llm t5|llama|both [--seed N] [--data DIR] [--cache DIR]
    qformer-peft base list [--cache DIR]        qformer-peft base path --preset mini --llm t5 [--seed N]

    from qformer_peft.pretrain.base import ensure_base
    path = ensure_base("mini", "t5", 0, "data/mini", "cache/base")   # builds what is missing; load_bundle(path)

A build runs the stages (pretrain/vision.py 1: vision encoder on dense labels, then frozen; pretrain/stages.py
2: language model on the world's text, optional and off by default; 3: Q-Former + queries + projection, with
the LLM, on the held-in tasks from cached encoder features; LLaMA's stage 3 starts from the
T5 build's Q-Former, which is built first when missing: see LLM_RECIPES), saves the result with its
tokenizers as an ordinary checkpoint directory (Bundle.save, read by load_bundle), and measures it
(pretrain/quality.py, pretrain/adaptability.py): build_report.json and build_report.md lie beside the weights.

Cache layout (default $QFP_CACHE/base, else ~/.cache/qformer-peft/base; outside git):
    <preset>-<llm>[-s<seed>]/     the checkpoint + build_key.json + build_report.{json,md}
    vision/<root>-s<seed>-<key>/  the stage-1 encoder and its report, shared by both LLMs and by every preset
                                  with the same vision tower and stage-1 recipe (mini, mini-wide, mini-deep):
                                  <key> hashes the vision config, not the preset's name
    features/                     the frozen encoder's outputs (features.FeatureCache), shared by both LLMs
A checkpoint is current when its build_key.json equals the key of (preset, LLM, seed, data version, recipe,
BUILD_VERSION, and the key of the build its Q-Former starts from); anything else is rebuilt in place (built in a
temporary folder, then swapped in).
The `tiny` preset on the `smoke` (or `tiny`) synthetic data is the smoke variant: it builds in seconds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .. import runs
from .heldin import read_heldin
from ..models.presets import root_preset, vision_signature
from .build_report import report_markdown
from .recipe import LLMS, Recipe, recipe_for

BUILD_VERSION = "5"  # bump when a change here or in vision/stages changes the weights a recipe builds
DEFAULT_SEED = 0


# --- names, keys, paths ---------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """$QFP_CACHE/base, else ~/.cache/qformer-peft/base (XDG_CACHE_HOME respected)."""
    if os.environ.get("QFP_CACHE"):
        return Path(os.environ["QFP_CACHE"]) / "base"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qformer-peft" / "base"


def base_name(preset: str, llm: str, seed: int = DEFAULT_SEED) -> str:
    """'mini-t5' for the default seed (the grid's {checkpoints}/mini-t5), 'mini-t5-s1' otherwise."""
    if llm not in LLMS:
        raise ValueError(f"llm must be one of {LLMS}, got {llm!r}")
    return f"{preset}-{llm}" + (f"-s{seed}" if seed != DEFAULT_SEED else "")


def base_path(preset: str, llm: str, seed: int = DEFAULT_SEED, cache_dir: str | Path | None = None) -> Path:
    """Where the checkpoint of (preset, llm, seed) lives (built or not)."""
    return Path(cache_dir or default_cache_dir()) / base_name(preset, llm, seed)


def data_version(data_dir: str | Path) -> str:
    """sha256 (16 hex) of what a build reads: the held-in tasks and text, the held-in scenes, the vocabulary
    and the generator's version. The benchmarks are not part of it (a build never reads them)."""
    root = Path(data_dir)
    h = hashlib.sha256()
    synth = root / "synth.json"
    h.update(str(json.loads(synth.read_text()).get("version") if synth.is_file() else None).encode())
    for rel in ("heldin/train.jsonl", "heldin/val.jsonl", "heldin/text_train.txt", "heldin/text_val.txt",
                "vocab.txt"):
        path = root / rel
        h.update(f"{rel}:".encode() + (path.read_bytes() if path.is_file() else b"<absent>"))
    scenes = root / "scenes.jsonl"
    if scenes.is_file():
        with open(scenes, "rb") as f:
            for line in f:
                if b'"benchmark":"heldin"' in line.replace(b" ", b""):
                    h.update(line)
    return h.hexdigest()[:16]


def build_key(preset: str, llm: str, seed: int, data_dir: str | Path, recipe: Recipe) -> dict[str, Any]:
    """What a build depends on; with recipe.qformer_from, the key of the build its Q-Former starts from too
    (so that rebuilding that one rebuilds this one)."""
    key = {"preset": preset, "llm": llm, "seed": seed, "data_version": data_version(data_dir),
           "recipe": dataclasses.asdict(recipe), "build_version": BUILD_VERSION}
    source = qformer_source(preset, llm, recipe)
    if source is not None:
        key["qformer_from"] = build_key(preset, source[1], seed, data_dir, source[2])
    return key


def qformer_source(preset: str, llm: str, recipe: Recipe) -> tuple[str, str, Recipe] | None:
    """(preset, llm, recipe) of the build whose Q-Former stage 3 starts from (recipe.qformer_from), or None.
    That build's recipe is the source LLM's own, with every change `recipe` makes to this LLM's default (so that
    `base build --llm both --set FIELD=VALUE` builds one T5, and LLaMA starts from it); it must itself start
    from scratch (no chains)."""
    if recipe.qformer_from is None:
        return None
    if recipe.qformer_from == llm:
        raise ValueError(f"{preset}-{llm}: qformer_from={llm!r} names the build itself")
    default = recipe_for(preset, llm=llm)
    changes = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)
               if f.name != "qformer_from" and getattr(recipe, f.name) != getattr(default, f.name)}
    source = recipe_for(preset, changes, llm=recipe.qformer_from)
    if source.qformer_from is not None:
        raise ValueError(f"{preset}-{llm} starts its Q-Former from {preset}-{recipe.qformer_from}, which starts "
                         f"its own from {preset}-{source.qformer_from}: chains are not supported")
    return preset, recipe.qformer_from, source


def dependencies(preset: str, llm: str) -> list[tuple[str, str]]:
    """The (preset, llm) builds that the default build of (preset, llm) reads (study.build_base_models waits
    for them before starting it)."""
    source = qformer_source(preset, llm, recipe_for(preset, llm=llm))
    return [] if source is None else [source[:2]]


def _vision_key(key: dict[str, Any]) -> str:
    """What stage 1 depends on: the vision tower's shape (not the preset's name, so that presets differing only
    above the encoder share it), the seed, the data, the stage-1 recipe fields and the build version."""
    stage1 = {k: v for k, v in key["recipe"].items() if k.startswith("vision_")}
    return runs.config_hash({"vision": vision_signature(key["preset"]), "seed": key["seed"],
                             "data": key["data_version"], "recipe": stage1, "build_version": key["build_version"]})


def vision_dir(cache_dir: Path, key: dict[str, Any]) -> Path:
    """Where the stage-1 encoder of a build key lives, shared by every build with the same vision recipe."""
    return cache_dir / "vision" / f"{root_preset(key['preset'])}-s{key['seed']}-{_vision_key(key)}"


def is_current(path: str | Path, key: dict[str, Any]) -> bool:
    """Does `path` hold a finished build of exactly this key?"""
    path = Path(path)
    try:
        return (path / "model.safetensors").is_file() and runs.read_json(path / "build_key.json") == key
    except (OSError, ValueError):
        return False


# --- building ---------------------------------------------------------------------------------------

def ensure_base(preset: str, llm: str, seed: int = DEFAULT_SEED, data_dir: str | Path = "data/mini",
                cache_dir: str | Path | None = None, *, recipe: Recipe | None = None, quality: bool = True,
                log: Callable[[str], None] | None = print) -> Path:
    """The checkpoint of (preset, llm, seed) built on data_dir, building what is missing; its path."""
    recipe = recipe or recipe_for(preset, llm=llm)
    cache_dir = Path(cache_dir or default_cache_dir())
    path = base_path(preset, llm, seed, cache_dir)
    key = build_key(preset, llm, seed, data_dir, recipe)
    if is_current(path, key):
        return path
    with runs.file_lock(path):
        if not is_current(path, key):  # another process may have built it meanwhile
            build_base(preset, llm, seed, data_dir, cache_dir, recipe=recipe, quality=quality, log=log)
    return path


def build_base(preset: str, llm: str, seed: int = DEFAULT_SEED, data_dir: str | Path = "data/mini",
               cache_dir: str | Path | None = None, *, recipe: Recipe | None = None, quality: bool = True,
               log: Callable[[str], None] | None = print) -> Path:
    """Build (or rebuild) one base model into the cache: train_base, save, measure; its checkpoint directory."""
    recipe = recipe or recipe_for(preset, llm=llm)
    cache_dir = Path(cache_dir or default_cache_dir())
    data_dir = Path(data_dir)
    final = base_path(preset, llm, seed, cache_dir)
    key = build_key(preset, llm, seed, data_dir, recipe)
    _say(log, f"[base] building {final.name} from {data_dir} (recipe {runs.config_hash(key['recipe'])})")
    with _threads(recipe.threads):
        bundle, report, images, clock = train_base(preset, llm, seed, data_dir, cache_dir, recipe=recipe, log=log)
        report = {"name": final.name, "key": key, **report}
        tmp = cache_dir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        bundle.save(tmp)
        if quality:
            with clock("quality"):
                report["quality"] = _measure(bundle, tmp, data_dir, cache_dir, images, recipe, log)
    report["time_s"], report["cpu_s"] = clock.times, clock.cpu
    report["machine"]["load_average_end"] = _loadavg()
    runs.write_json(tmp / "build_report.json", report)
    (tmp / "build_report.md").write_text(report_markdown(report), encoding="utf-8")
    runs.write_json(tmp / "build_key.json", key)
    _swap_in(tmp, final)
    _say(log, f"[base] {final.name} built in {sum(clock.times.values()):.0f} s: {final}")
    return final


def train_base(preset: str, llm: str, seed: int, data_dir: str | Path, cache_dir: str | Path, *,
               recipe: Recipe | None = None, log: Callable[[str], None] | None = print):
    """Stages 1-3 in memory: (bundle, report, images, clock). images: the frozen encoder's cached features
    (features.ImageEncoder) for the measurements; clock: wall / CPU seconds per stage so far.
    Stage 1 is read from (or written to) CACHE/vision/, the features from (or to) CACHE/features/."""
    recipe = recipe or recipe_for(preset, llm=llm)
    with _threads(recipe.threads):
        return _train_base(preset, llm, seed, Path(data_dir), Path(cache_dir), recipe, log)


def _train_base(preset, llm, seed, data_dir: Path, cache_dir: Path, recipe: Recipe, log):
    from . import stages
    from ..features import FeatureCache, ImageEncoder
    from ..models.build import build_model, default_tokenizers

    key = build_key(preset, llm, seed, data_dir, recipe)
    clock = _Clock()
    report: dict[str, Any] = {"stages": {}, "quality": {},
                              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                          "load_average_start": _loadavg()}}
    heldin = read_heldin(data_dir)
    qformer_tokenizer, llm_tokenizer = default_tokenizers(heldin_vocabulary(data_dir))

    # stage 1: shared by both LLMs (cached under vision/)
    with clock("stage1_vision"):
        vision_state, report["stages"]["stage1_vision"] = _stage1(vision_dir(cache_dir, key), preset, heldin,
                                                                  recipe, seed, log)
    bundle = build_model(preset, llm, qformer_tokenizer=qformer_tokenizer, llm_tokenizer=llm_tokenizer, seed=seed)
    bundle.model.vision_model.load_state_dict(vision_state)
    for param in bundle.model.parameters():
        param.requires_grad = False

    # stage 2: the LLM alone on text
    if recipe.text_epochs:
        with clock("stage2_text"):
            report["stages"]["stage2_text"] = stages.train_language(
                bundle.model.language_model, llm_tokenizer, llm, heldin, epochs=recipe.text_epochs,
                batch_size=recipe.text_batch, lr=recipe.text_lr, seed=seed, mc_fraction=recipe.mc_fraction,
                extra_per_picture=recipe.extra_per_picture, log=log)

    # the frozen encoder's features, once (shared by both LLMs through the disk cache)
    with clock("features"):
        cache = FeatureCache(bundle.model, bundle.image_processor, cache_dir / "features")
        cache.precompute(heldin.images("train") + heldin.images("val"))
        report["stages"]["features"] = {"stats": dict(cache.stats)}
    images = ImageEncoder(bundle.model, bundle.image_processor, cache=cache)

    # stage 3 may start from another LLM's build's Q-Former (LLM_RECIPES says why), built first if missing
    source = qformer_source(preset, llm, recipe)
    if source is not None:
        with clock("qformer_source"):
            path = ensure_base(source[0], source[1], seed, data_dir, cache_dir, recipe=source[2], log=log)
            report["stages"]["qformer_source"] = load_qformer(bundle.model, path)
        _say(log, f"[base] stage 3 starts from the Q-Former and query tokens of {path.name}")

    # stage 3: Q-Former + queries + projection (+ LLM) on the held-in tasks
    with clock("stage3_qformer"):
        report["stages"]["stage3_qformer"] = stages.train_qformer(
            bundle, heldin, images, epochs=recipe.qformer_epochs, batch_size=recipe.qformer_batch,
            lr=recipe.qformer_lr, warmup_steps=recipe.qformer_warmup, train_llm=recipe.stage3_llm == "trained",
            mc_fraction=recipe.mc_fraction, extra_per_picture=recipe.extra_per_picture,
            context_per_picture=recipe.context_per_picture, seed=seed, log=log)
    changed = [n for n, t in bundle.model.vision_model.state_dict().items()
               if not n.startswith("post_layernorm.") and not torch.equal(t, vision_state[n])]
    if changed:
        raise AssertionError(f"stage 3 changed the frozen vision encoder: {changed[:3]}")
    return bundle, report, images, clock


def load_qformer(model, checkpoint: Path) -> dict[str, Any]:
    """Copy the Q-Former and query tokens of the checkpoint in `checkpoint` into model; what was copied."""
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(checkpoint / "model.safetensors").items()
             if k.startswith("qformer.") or k == "query_tokens"}
    own = {k for k in model.state_dict() if k.startswith("qformer.") or k == "query_tokens"}
    if set(state) != own:
        raise ValueError(f"{checkpoint}: its Q-Former does not match this model's (missing "
                         f"{sorted(own - set(state))[:3]}, extra {sorted(set(state) - own)[:3]}); a Q-Former can "
                         f"only start from a build of the same preset")
    model.load_state_dict(state, strict=False)
    return {"from": checkpoint.name, "tensors": len(state),
            "build_key": runs.config_hash(runs.read_json(checkpoint / "build_key.json"))}


def _stage1(vision_dir: Path, preset, heldin, recipe: Recipe, seed: int, log):
    from safetensors.torch import load_file, save

    from . import vision

    weights, meta = vision_dir / "vision.safetensors", vision_dir / "stage1.json"
    with runs.file_lock(vision_dir):  # another build (other LLM, other size) may be training it
        if weights.is_file() and meta.is_file():
            _say(log, f"[base] stage 1: reusing the vision encoder in {vision_dir}")
            return load_file(weights), {**runs.read_json(meta), "reused": True}
        with _threads(recipe.vision_threads):
            state, report = vision.train_vision(preset, heldin, epochs=recipe.vision_epochs,
                                                batch_size=recipe.vision_batch, lr=recipe.vision_lr,
                                                flip=recipe.vision_flip, seed=seed, log=log)
            report["threads"] = torch.get_num_threads()
        runs.atomic_write(weights, save(state))
        runs.write_json(meta, report)
    return state, {**report, "reused": False}


def _measure(bundle, checkpoint: Path, data_dir: Path, cache_dir: Path, images, recipe: Recipe, log) -> dict:
    from . import adaptability, quality

    q: dict[str, Any] = {}
    limit = recipe.eval_limit
    q["heldin"] = quality.heldin_score(bundle, data_dir, limit, images=images)
    q["heldin_shuffled"] = quality.heldin_score(bundle, data_dir, limit, images=images, shuffle=True)
    q["heldin_chance"] = quality.heldin_chance(data_dir, limit)
    three = ("heldin", "heldin_shuffled", "heldin_chance")
    _say(log, "[base] held-in VQA exact match {} (shuffled images {}, blind prior {}); caption CIDEr {} (shuffled {}, "
              "prior {})".format(*(q[k]["vqa_em"] for k in three), *(q[k]["caption_cider"] for k in three)))
    for bench in ("iconqa", "scienceqa"):
        if not (data_dir / bench).is_dir():
            q[f"zero_shot_{bench}"] = {"skipped": f"{data_dir / bench} absent"}
            continue
        q[f"zero_shot_{bench}"] = adaptability.zero_shot(bundle, data_dir, bench, limit=recipe.zero_shot_limit,
                                                         images=_cached(bundle, cache_dir))
        _say(log, f"[base] zero-shot {bench} val accuracy {q[f'zero_shot_{bench}']['accuracy']} "
                  f"(chance {q[f'zero_shot_{bench}']['chance']})")
    if recipe.adapt_train and (data_dir / "iconqa").is_dir():
        work = cache_dir / f".adapt-{checkpoint.name}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            q["adaptability"] = adaptability.adaptability(
                checkpoint, data_dir, work, cache_dir=cache_dir / "features", train_limit=recipe.adapt_train,
                epochs=recipe.adapt_epochs, lr=recipe.adapt_lr, val_limit=recipe.adapt_val,
                heldin_limit=recipe.eval_limit, log=log)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return q


def _cached(bundle, cache_dir: Path):
    from ..features import FeatureCache, ImageEncoder

    return ImageEncoder(bundle.model, bundle.image_processor,
                        cache=FeatureCache(bundle.model, bundle.image_processor, cache_dir / "features"))


def heldin_vocabulary(data_dir: Path) -> list[str]:
    """The synthetic world's closed vocabulary, as run_inputs.resolve_bundle reads it."""
    vocab = data_dir / "vocab.txt"
    if vocab.is_file():
        return [w for w in vocab.read_text(encoding="utf-8").splitlines() if w]
    from ..data import synthetic

    return list(synthetic.vocabulary())


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op thread count set to n inside the block (unchanged for None)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Clock:
    """Wall and CPU seconds per named stage."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.times[name] = round(time.perf_counter() - wall, 2)
            self.cpu[name] = round(time.process_time() - cpu, 2)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _say(log, text: str) -> None:
    if log is not None:
        log(text)



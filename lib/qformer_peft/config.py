"""The experiment config: one frozen dataclass per run, validated on creation.

Unknown or mistyped keys fail loudly with the list of valid ones (papermill injects parameters by
name, so a typo there must not silently fall back to a default). The hash of the resolved config
names the run folder (runs.RunDir), so the same config always lands in the same folder.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import paper, runs

BENCHMARKS = ("scienceqa", "iconqa", "vizwiz", "flickr30k")
SETUPS = tuple(paper.SETUPS)
QF_SUBLAYERS = tuple(paper.QF_SUBLAYERS)
LLM_TARGETS = tuple(paper.LLM_TARGETS["t5"])
METHODS = ("lora", "adalora")
# A joint benchmark "scienceqa+iconqa" trains one model on several tasks (the multi-task AdaLoRA open question);
# only multiple-choice tasks, so that one validation accuracy (the mean over tasks) can pick the epoch.
MULTITASK_SEP = "+"
MULTITASK_BENCHMARKS = ("scienceqa", "iconqa")
CONNECTORS = ("qformer", "pool", "projector", "bottleneck")  # models/connectors.py

# Fields added after runs were recorded, left out of to_dict (hence of config.json and the hash) at these
# defaults, so that adding them did not turn every finished run folder into a new, unfinished config.
HASH_NEUTRAL_DEFAULTS = {"heldin_limit": 0, "test_split": "auto", "rerun_of": None, "rerun_reason": None,
                         "shuffle_answers": False, "lr_full": None, "lr_peft": None}
TEST_SPLITS = ("auto", "test", "val")
# Why a run was rerun at a lowered rate (the paper's rerun rule, reruns.RerunRule): it stopped early before the rule's
# epoch, or its validation score lies too far below its neighbours in r. Both: "stopped_early+below_neighbours".
RERUN_REASONS = ("stopped_early", "below_neighbours")


def heldin_on_first_seed(values: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """A run's config values with heldin_limit set to 0 (not measured) unless its seed is the first of its cell's
    seeds. What adapting costs on held-in VQA is reported per setup and no claim reads its spread over seeds;
    on mini the held-in passes of the other claim seeds cost ~100 of the grid's ~3,900 worker-s."""
    if values.get("heldin_limit") and seeds and values.get("seed") != seeds[0]:
        return {**values, "heldin_limit": 0}
    return values


def adalora_total_steps(steps: int) -> int:
    """AdaLoRA's total_step for a run of `steps` optimizer steps. A one-step run is scheduled as two: peft's
    final allocation reads importance scores that only steps before it gather, so with total_step=1 its first
    call would be the final one (KeyError)."""
    return max(steps, 2)


# docs/protocol.md §4: 2e-5 whenever the Q-Former is fully fine-tuned, 5e-4 otherwise.
LR_QFORMER_FULL = 2e-5
LR_PEFT = 5e-4


class ConfigError(ValueError):
    """A config that cannot describe a run; the message says which field and what is valid."""


@dataclass(frozen=True)
class ExperimentConfig:
    # --- what is trained ---------------------------------------------------------------------
    benchmark: str = "iconqa"            # one of BENCHMARKS
    data_root: str = ""                  # the benchmark's root directory, in its real on-disk layout
    model: str = "tiny"                  # preset name, local checkpoint directory, or hub id
    llm: str | None = None               # 't5' | 'llama'; None: a preset's default (t5) or the checkpoint's own
                                         # (config.json); a value that contradicts the checkpoint is an error
    connector: str = "qformer"           # one of CONNECTORS
    connector_tokens: int | None = None  # image tokens fed to the LLM (None: the connector's default)
    connector_variant: str | None = None # projector 'mlp' | 'linear'; bottleneck 'linear' | 'gelu' (None: first)
    connector_init: str | None = None    # Q-Former 'pretrained' (None) | 'scratch'; other connectors: scratch
    align_steps: int = 0                 # alignment steps on the held-in tasks before training (0: none)
    setup: str = "qf-lora"               # one of SETUPS
    method: str = "lora"                 # 'lora' | 'adalora' (AdaLoRA on all Q-Former targets)
    qf_sublayers: str | None = "all"     # Q-Former LoRA targets; None when the Q-Former has no LoRA
    llm_targets: str | None = None       # LLM LoRA targets; None when the LLM has no LoRA
    rank: int | None = 8                 # LoRA rank (also the LLM's when both are adapted)
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    adalora_init_r: int = 12
    adalora_target_r: int = 8            # the AVERAGE final rank (peft's budget: target_r x #modules)
    adalora_tinit: float = 0.1           # fraction of the optimizer steps before the budget starts to shrink
    adalora_tfinal: float = 0.2          # fraction of the steps at the end trained on the final budget
    adalora_delta_t: int = 10            # steps between two budget reallocations
    adalora_orth_reg: float = 0.5        # orthogonality penalty weight (peft's default)
    # --- how it is trained (docs/protocol.md §4) -------------------------------------------------------
    lr: float | None = None              # None: the protocol's rule, lr_full / lr_peft by setup
    lr_full: float | None = None         # the rule's rate when the Q-Former is fully fine-tuned (None: LR_QFORMER_FULL)
    lr_peft: float | None = None         # the rule's rate otherwise (None: LR_PEFT); a profile sets both for its scale
    weight_decay: float = 0.05           # on tensors with >= 2 dims
    max_epochs: int = 15
    patience: int = 3                    # early stopping: epochs without validation improvement
    batch_size: int = 16                 # per step; effective batch = batch_size * grad_accum
    grad_accum: int = 1
    schedule: str = "linear"             # 'linear' (per epoch, no warm-up) | 'cosine' (warm-up + cosine)
    warmup_steps: int = 0
    max_prompt_tokens: int = 128         # left truncation, both tokenizers, train and eval alike
    eval_batch_size: int | None = None   # questions per evaluation batch (None: batch_size)
    num_beams: int = 5                   # beam search for the open-ended sets (VizWiz, Flickr30k)
    augment: bool = False                # RandomResizedCrop + flip; disables the feature cache
    feature_cache: bool = True           # reuse the frozen vision encoder's outputs
    train_limit: int | None = None       # first N items of each split (None: all)
    val_limit: int | None = None
    test_limit: int | None = None
    precision: str = "auto"              # 'auto' | 'fp32' | 'bf16' | 'fp16'
    device: str = "auto"                 # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    seed: int = 42
    heldin_limit: int = 0                # > 0: after the test, held-in VQA exact match (pretrain.quality.heldin_score) of
                                         # the adapted model and with its LoRA switched off, on the first N held-in
                                         # val task lines (3 per picture: a caption and 2 VQA) of the synthetic world
                                         # the benchmark root lies in (DATA/heldin); 0 or no DATA/heldin: not measured
    test_split: str = "auto"             # the split scored as the test: 'test', 'val', or 'auto' (the test split
                                         # when it has answers, else val, as LAVIS scores VizWiz: its official
                                         # test annotations have none); training always uses train
    shuffle_answers: bool = False        # a null run: training answers shuffled (deterministic from seed), so the
                                         # run has the same schedule and gradients but no task signal; val/test keep
                                         # the true answers (the AdaLoRA allocations' null reference)
    tags: tuple[str, ...] = field(default=())  # free labels for the report (e.g. the grid cell)
    rerun_of: str | None = None          # config hash of the run this one reruns at a lowered lr (reruns.RerunRule)
    rerun_reason: str | None = None      # why: RERUN_REASONS joined by '+'

    def __post_init__(self) -> None:
        _check_types(self)
        _resolve_paths(self)
        _check_choice("test_split", self.test_split, TEST_SPLITS)
        _check_benchmark(self.benchmark)
        _check_choice("connector", self.connector, CONNECTORS)
        _check_choice("setup", self.setup, SETUPS)
        _check_choice("method", self.method, METHODS)
        _check_choice("schedule", self.schedule, ("linear", "cosine"))
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if self.qf_sublayers is not None:
            _check_choice("qf_sublayers", self.qf_sublayers, QF_SUBLAYERS)
        if self.llm_targets is not None:
            _check_choice("llm_targets", self.llm_targets, LLM_TARGETS)
        qf_lora = paper.SETUPS[self.setup].qformer == "lora"
        llm_lora = paper.SETUPS[self.setup].llm == "lora"
        if self.method == "adalora":
            if self.setup != "qf-lora" or self.qf_sublayers != "all":
                raise ConfigError("method='adalora' adapts all Q-Former targets: use setup='qf-lora', "
                                  "qf_sublayers='all'")
            if self.rank is not None:
                raise ConfigError("method='adalora' sets its ranks with adalora_init_r / adalora_target_r: "
                                  "set rank=None")
            if not 0 < self.adalora_target_r < self.adalora_init_r:
                # equal ranks leave AdaLoRA nothing to prune (and peft's allocator fails on an empty cut)
                raise ConfigError("adalora_target_r must be in (0, adalora_init_r): AdaLoRA prunes from init_r "
                                  "down to target_r on average")
            if not (0 <= self.adalora_tinit < 1 and 0 <= self.adalora_tfinal < 1
                    and self.adalora_tinit + self.adalora_tfinal < 1):
                raise ConfigError("adalora_tinit and adalora_tfinal are fractions of the training steps in [0, 1) "
                                  "with tinit + tfinal < 1 (the budget must have steps to shrink in)")
            if self.adalora_delta_t < 1:
                raise ConfigError("adalora_delta_t must be >= 1")
        if qf_lora != (self.qf_sublayers is not None):
            raise ConfigError(f"setup={self.setup!r} " + ("needs qf_sublayers (one of "
                              f"{', '.join(QF_SUBLAYERS)})" if qf_lora else "has no Q-Former LoRA: set qf_sublayers=None"))
        if llm_lora != (self.llm_targets is not None):
            raise ConfigError(f"setup={self.setup!r} " + ("needs llm_targets (one of "
                              f"{', '.join(LLM_TARGETS)})" if llm_lora else "has no LLM LoRA: set llm_targets=None"))
        if (qf_lora or llm_lora) and self.method == "lora" and (self.rank is None or self.rank < 1):
            raise ConfigError(f"setup={self.setup!r} needs a LoRA rank >= 1")
        if self.setup == "baseline" and self.rank is not None:
            raise ConfigError("setup='baseline' has no LoRA: set rank=None")
        for name in ("max_epochs", "batch_size", "grad_accum", "max_prompt_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError("eval_batch_size must be >= 1 (or None for batch_size)")
        for name in ("train_limit", "val_limit", "test_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (or None for the whole split)")
        if self.patience < 1 or self.warmup_steps < 0:
            raise ConfigError("patience must be >= 1 and warmup_steps >= 0")
        if self.connector != "qformer" and self.setup != "baseline" and self.qf_sublayers is not None:
            raise ConfigError(f"Q-Former LoRA needs connector='qformer', not {self.connector!r}")
        try:
            from .models.connector_spec import ConnectorSpec

            ConnectorSpec(self.connector, self.connector_tokens, self.connector_variant, self.connector_init)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.align_steps < 0:
            raise ConfigError("align_steps must be >= 0 (0: no alignment stage)")
        for name in ("lr", "lr_full", "lr_peft"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0 (or None for the protocol's rule)")
        if self.heldin_limit < 0:
            raise ConfigError("heldin_limit must be >= 0 (0: the held-in cost is not measured)")
        if (self.rerun_of is None) != (self.rerun_reason is None) or (self.rerun_of is not None and self.lr is None):
            raise ConfigError("a rerun gives rerun_of (the config hash of the run it reruns), rerun_reason and its "
                              "lowered lr; any other run gives neither rerun_of nor rerun_reason")
        if self.rerun_reason is not None:
            parts = self.rerun_reason.split("+")
            if not parts or any(r not in RERUN_REASONS for r in parts) or len(set(parts)) != len(parts):
                raise ConfigError(f"rerun_reason={self.rerun_reason!r}: one or more of {', '.join(RERUN_REASONS)} "
                                  f"joined by '+'")

    # --- derived ---------------------------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        """The benchmarks trained on: ('iconqa',), or ('scienceqa', 'iconqa') for 'scienceqa+iconqa'."""
        return tuple(self.benchmark.split(MULTITASK_SEP))

    @property
    def qformer_full(self) -> bool:
        """Is the Q-Former fully fine-tuned (baseline and qf-fft+llm-lora)?"""
        return paper.SETUPS[self.setup].qformer == "full"

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.qformer_full:
            return LR_QFORMER_FULL if self.lr_full is None else self.lr_full
        return LR_PEFT if self.lr_peft is None else self.lr_peft

    @property
    def connector_label(self) -> str:
        """'qformer', 'pool16', 'bottleneck4-gelu', 'qformer16-scratch', ... (+ '-a<steps>' when aligned)."""
        from .models.connector_spec import ConnectorSpec

        label = ConnectorSpec(self.connector, self.connector_tokens, self.connector_variant, self.connector_init).label
        return label + (f"-a{self.align_steps}" if self.align_steps else "")

    @property
    def uses_feature_cache(self) -> bool:
        return self.feature_cache and not self.augment

    def adalora_schedule(self, total_steps: int) -> dict[str, Any]:
        """peft AdaLoraConfig arguments for a run of `total_steps` optimizer steps (the real schedule)."""
        total_steps = adalora_total_steps(total_steps)
        tinit = int(self.adalora_tinit * total_steps)
        tfinal = int(self.adalora_tfinal * total_steps)
        # tiny runs: keep at least one budgeting step, and one step before the final allocation
        if tinit >= total_steps - tfinal or total_steps - tfinal < 2:
            tinit, tfinal = 0, 0
        return {"init_r": self.adalora_init_r, "target_r": self.adalora_target_r, "total_step": total_steps,
                "tinit": tinit, "tfinal": tfinal, "deltaT": self.adalora_delta_t,
                "orth_reg_weight": self.adalora_orth_reg}

    # --- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in valid]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, valid, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown config key(s) {', '.join(hints)}; valid keys: {', '.join(valid)}")
        d = dict(d)
        if "tags" in d and d["tags"] is not None:
            d["tags"] = tuple(d["tags"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tags"] = list(self.tags)
        for name, default in HASH_NEUTRAL_DEFAULTS.items():  # at its default, a later field is left out: the
            if d[name] == default:                           # configs (and run folders) from before keep their hash
                del d[name]
        return d

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @property
    def hash(self) -> str:
        return runs.config_hash(self.to_dict())

    @property
    def run_name(self) -> str:
        """A readable prefix for the run folder: benchmark, setup, targets, rank, seed."""
        parts = [self.benchmark, self.connector_label if self.connector_label != "qformer" else None, self.setup,
                 self.method if self.method != "lora" else None, self.qf_sublayers and f"qf-{self.qf_sublayers}",
                 self.llm_targets and f"llm-{self.llm_targets}", self.rank and f"r{self.rank}",
                 "null" if self.shuffle_answers else None, f"s{self.seed}", self.rerun_of and "rerun"]
        return "_".join(p for p in parts if p).replace("+", "-")


def experiment_configs(*, benchmark: str, llm: str, model: str, data_dir: str, setup: str = "qf-lora",
                       qf_sublayers: str | None = "all", llm_targets: str | None = None, method: str = "lora",
                       ranks: Sequence[int | None] = paper.RANKS, seeds: Sequence[int] = (42,),
                       hparams: Mapping[str, Any] | None = None,
                       tags: Sequence[str] = ()) -> list[ExperimentConfig]:
    """The validated configs of one notebook: every rank x seed of one grid row (AdaLoRA: every seed).

    data_dir holds one root per benchmark (as `data synth` writes it); the config gets data_dir/benchmark,
    or data_dir itself for a joint benchmark ('scienceqa+iconqa': one root per task there).
    hparams are further ExperimentConfig fields (max_epochs, train_limit, lr, ...).
    """
    joint = MULTITASK_SEP in benchmark
    base = {"benchmark": benchmark, "llm": llm, "model": str(model),
            "data_root": str(Path(data_dir) if joint else Path(data_dir) / benchmark), "setup": setup, "method": method,
            "qf_sublayers": qf_sublayers, "llm_targets": llm_targets, "tags": list(tags), **dict(hparams or {})}
    if method == "adalora":       # AdaLoRA's ranks are adalora_init_r / adalora_target_r, not a sweep
        ranks = (None,)
    elif setup == "baseline":     # no LoRA: one run per seed
        ranks = (None,)
    return [ExperimentConfig.from_dict(heldin_on_first_seed({**base, "rank": r, "seed": s}, seeds))
            for r in ranks for s in seeds]


def setup_defaults(setup: str) -> dict[str, Any]:
    """The setup-dependent fields that make `setup` valid with the study's usual choices (the CLI fills
    them in when not given): LoRA targets 'all' where a part is adapted, no rank for the baseline."""
    _check_choice("setup", setup, SETUPS)
    return {
        "baseline": {"qf_sublayers": None, "llm_targets": None, "rank": None},
        "qf-fft+llm-lora": {"qf_sublayers": None, "llm_targets": "all"},
        "qf-lora": {"qf_sublayers": "all", "llm_targets": None},
        "qf-lora+llm-lora": {"qf_sublayers": "all", "llm_targets": "all"},
    }[setup]


def _resolve_paths(cfg: ExperimentConfig) -> None:
    """Local paths made absolute (the same files always give the same config, hence the same run folder), and
    `llm` filled in: a preset's default, or the checkpoint's own kind, which a given `llm` must match."""
    from .models.presets import PRESETS

    if cfg.data_root:
        object.__setattr__(cfg, "data_root", str(Path(cfg.data_root).expanduser().resolve()))
    if cfg.model in PRESETS:
        if cfg.llm is None:
            object.__setattr__(cfg, "llm", PRESETS[cfg.model].llm or "t5")
        return _check_choice("llm", cfg.llm, ("t5", "llama"))
    from .models.sources import CheckpointError, checkpoint_llm_kind, looks_like_hub_id

    path = Path(cfg.model).expanduser()
    if (path / "config.json").is_file():
        object.__setattr__(cfg, "model", str(path.resolve()))
        try:
            kind = checkpoint_llm_kind(path)
        except CheckpointError as err:
            raise ConfigError(f"model={cfg.model!r}: {err}") from None
    elif looks_like_hub_id(cfg.model):
        name = cfg.model.lower()  # a hub id: its name says which LLM (instructblip-flan-t5-xl, -vicuna-7b)
        kind = "t5" if "t5" in name else "llama" if ("vicuna" in name or "llama" in name) else cfg.llm
        if kind is None:
            raise ConfigError(f"model={cfg.model!r}: a hub id whose name does not say its LLM; give llm='t5' or "
                              "'llama'")
    else:  # a local path not (yet) holding a checkpoint (a base model the study builds): absolute, checked on loading
        object.__setattr__(cfg, "model", str(path.resolve()))
        kind = cfg.llm or "t5"
    if cfg.llm is not None and cfg.llm != kind:
        raise ConfigError(f"llm={cfg.llm!r} contradicts the checkpoint {cfg.model}, whose LLM is {kind} "
                          f"(config.json): drop --llm or give llm={kind!r}")
    object.__setattr__(cfg, "llm", kind)
    _check_choice("llm", cfg.llm, ("t5", "llama"))


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}")


def _check_benchmark(benchmark: str) -> None:
    tasks = benchmark.split(MULTITASK_SEP)
    if len(tasks) == 1:
        return _check_choice("benchmark", benchmark, BENCHMARKS)
    bad = [t for t in tasks if t not in MULTITASK_BENCHMARKS]
    if bad or len(set(tasks)) != len(tasks):
        raise ConfigError(f"benchmark={benchmark!r}: a joint benchmark joins distinct multiple-choice benchmarks "
                          f"with '{MULTITASK_SEP}' (from {', '.join(MULTITASK_BENCHMARKS)}), e.g. 'scienceqa+iconqa'")


def _check_types(cfg: ExperimentConfig) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _is_instance(value, hints[f.name]):
            raise ConfigError(f"{f.name}={value!r} has type {type(value).__name__}; expected {hints[f.name]}")


def _is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    if tp is float:  # an int is a fine float (papermill writes 1 for 1.0), a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)

"""Applying the paper's setups (paper.py: setups, targets, ranks as data) to a model with peft.

`apply_peft` wraps the model with peft LoRA / AdaLoRA on explicit full module names, then sets the
trainable flags: query tokens, the LLM projection and the post-ViT LayerNorm are trainable in every
setup (the paper's code never froze them), the Q-Former is fully trainable where the setup says so,
the ViT and the LLM's own weights never are. With another connector (models/connectors.py) the
connector takes the Q-Former's place ("full" = the connector is trained), the unused Q-Former, queries
and projection stay frozen, and the bottleneck's LLM adapters are trained in every setup (end to end,
as the BA paper). `trainable_parameters` is the one answer to "which parameters are trainable", by group.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model

from .models.connectors import ADAPTER_ATTR, connector_of
from .models.inputs import unwrap
from .paper import ADALORA, LLM_TARGETS, LORA_ALPHA, LORA_DROPOUT, QF_SUBLAYERS, RANKS, SETUPS, Setup

GROUPS = ("qformer_full", "qformer_lora", "llm_lora", "query_tokens", "projection", "vit_layernorm", "connector",
          "llm_adapter", "other")
_LAYER = re.compile(r"^qformer\.encoder\.layer\.(\d+)\.(.+)$")


def _llm_kind(model) -> str:
    return "llama" if unwrap(model).config.use_decoder_only_language_model else "t5"


def target_module_names(model, qf_sublayers: str | None = None, llm_targets: str | None = None) -> list[str]:
    """Full module names (in the unwrapped transformers model) that LoRA adapts, in model order."""
    if qf_sublayers is not None and qf_sublayers not in QF_SUBLAYERS:
        raise ValueError(f"unknown Q-Former sublayer set {qf_sublayers!r}; choose one of {', '.join(QF_SUBLAYERS)}")
    kind = _llm_kind(model)
    if llm_targets is not None and llm_targets not in LLM_TARGETS[kind]:
        raise ValueError(f"unknown LLM target set {llm_targets!r}; choose one of {', '.join(LLM_TARGETS[kind])}")
    base = unwrap(model)
    frequency = base.config.qformer_config.cross_attention_frequency
    qf_suffixes = set(QF_SUBLAYERS[qf_sublayers]) if qf_sublayers else set()
    llm_suffixes = LLM_TARGETS[kind][llm_targets] if llm_targets else ()
    names = []
    for name, module in base.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        name = name.removesuffix(".base_layer")  # the same answer once peft has wrapped the module
        layer = _LAYER.match(name)
        if layer and layer.group(2) in qf_suffixes:
            if layer.group(2).startswith("crossattention.") and int(layer.group(1)) % frequency:
                raise AssertionError(f"{name}: cross-attention on a layer that should have none")
            names.append(name)
        elif name.startswith("language_model.") and name.endswith(tuple("." + s for s in llm_suffixes)):
            names.append(name)
    return names


def _peft_config(targets: list[str], rank: int | None, adalora: dict | None, alpha: float, dropout: float):
    if adalora is None:
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    options = {**ADALORA, **adalora}
    if "total_step" not in options:
        raise ValueError("apply_peft: AdaLoRA needs adalora={'total_step': <optimizer steps of the run>, ...}")
    return AdaLoraConfig(lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none", **options)


def apply_peft(
    model,
    setup: str,
    *,
    qf_sublayers: str | None = None,
    llm_targets: str | None = None,
    rank: int | None = None,
    adalora: dict | None = None,
    lora_alpha: float = LORA_ALPHA,
    lora_dropout: float = LORA_DROPOUT,
):
    """Adapt `model` (an InstructBlipForConditionalGeneration) for `setup` and set what is trainable.

    LoRA setups return a peft `PeftModel` (the adapters are injected into `model` in place);
    the baseline has no adapter, so it returns `model` itself (peft has no empty adapter to wrap it
    in): use `models.inputs.unwrap` / `forward`, which treat both alike. LoRA A matrices are drawn
    from torch's global RNG: seed it first. `adalora` (e.g. {"total_step": 300}) replaces LoRA by
    AdaLoRA (initial rank 12, target 8) on the Q-Former; only for setup "qf-lora".
    """
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r}; choose one of {', '.join(SETUPS)}")
    if isinstance(model, PeftModel) or any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError("apply_peft: the model already carries adapters; start from a fresh model")
    spec = SETUPS[setup]
    if (spec.qformer == "lora") != (qf_sublayers is not None):
        raise ValueError(f"setup {setup!r}: qf_sublayers must be {'given' if spec.qformer == 'lora' else 'None'}")
    if (spec.llm == "lora") != (llm_targets is not None):
        raise ValueError(f"setup {setup!r}: llm_targets must be {'given' if spec.llm == 'lora' else 'None'}")
    if adalora is not None and (setup != "qf-lora" or rank is not None):
        raise ValueError("apply_peft: AdaLoRA is defined for setup 'qf-lora' only, with rank=None (init_r/target_r set it)")
    lora = spec.qformer == "lora" or spec.llm == "lora"
    if lora and adalora is None and not (isinstance(rank, int) and rank > 0):  # the paper's grid: RANKS
        raise ValueError(f"setup {setup!r}: rank must be a positive integer (the paper's: {RANKS}), got {rank!r}")
    if not lora and rank is not None:
        raise ValueError(f"setup {setup!r} has no adapters; rank must be None")

    own_connector = connector_of(unwrap(model)) is not None
    if own_connector and spec.qformer == "lora":
        raise ValueError(f"setup {setup!r} adapts the Q-Former, which this model's connector replaces")
    if lora:
        targets = target_module_names(model, qf_sublayers, llm_targets)
        model = get_peft_model(model, _peft_config(targets, rank, adalora, lora_alpha, lora_dropout))
    for name, param in unwrap(model).named_parameters():
        param.requires_grad = _trainable(parameter_group(name), spec, own_connector)
    return model


def _trainable(group: str, spec: Setup, own_connector: bool) -> bool:
    if group in ("vit_layernorm", "qformer_lora", "llm_lora", "llm_adapter"):
        return True
    if own_connector:  # the connector in the Q-Former's place; the Q-Former's own parts are unused
        return group == "connector" and spec.qformer == "full"
    return group in ("query_tokens", "projection") or (group == "qformer_full" and spec.qformer == "full")


def parameter_group(name: str) -> str:
    """The group of a parameter of the (unwrapped or peft-wrapped) model, from its name."""
    name = name.removeprefix("base_model.model.")
    if "lora_" in name:
        return "qformer_lora" if name.startswith("qformer.") else "llm_lora" if name.startswith("language_model.") else "other"
    if name.startswith("qformer."):
        return "qformer_full"
    if name == "query_tokens":
        return "query_tokens"
    if name.startswith("language_projection."):
        return "projection"
    if name.startswith("vision_model.post_layernorm."):
        return "vit_layernorm"
    if name.startswith("connector."):
        return "connector"
    if name.startswith("language_model.") and f".{ADAPTER_ATTR}." in name:
        return "llm_adapter"
    return "other"


def named_trainable(model) -> Iterator[tuple[str, torch.nn.Parameter, str]]:
    """(name in the unwrapped model, parameter, group) for every parameter that requires grad."""
    for name, param in unwrap(model).named_parameters():
        if param.requires_grad:
            yield name, param, parameter_group(name)


def trainable_parameters(model) -> dict[str, int]:
    """Number of trainable scalars by group (GROUPS order; 'other' must stay 0 for every setup and connector)."""
    counts = dict.fromkeys(GROUPS, 0)
    for _, param, group in named_trainable(model):
        counts[group] += param.numel()
    return counts


def lora_module_names(model) -> list[str]:
    """Names (unwrapped) of the modules that carry a LoRA / AdaLoRA adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in unwrap(model).named_modules() if isinstance(module, BaseTunerLayer)]


def summarize(counts: dict[str, int], groups: Iterable[str] = GROUPS) -> str:
    return ", ".join(f"{g} {counts[g]:,}" for g in groups if counts.get(g))

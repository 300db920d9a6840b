"""Read LAVIS InstructBLIP checkpoints into the transformers model.

LAVIS (and the paper's fork of it) saves `torch.save({"model": state_dict, "optimizer": ..., ...})`,
where state_dict holds either every weight or only the trainable ones. Its names differ from
transformers'; the renaming below follows transformers' convert_instructblip_original_to_pytorch.py:
  visual_encoder.{cls_token,pos_embed,patch_embed.proj}  -> vision_model.embeddings.{class_embedding,position_embedding,patch_embedding}
  visual_encoder.blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}
                                 -> vision_model.encoder.layers.{i}.{layer_norm1,layer_norm2,self_attn.qkv,self_attn.projection,mlp.fc1,mlp.fc2}
  visual_encoder.blocks.{i}.attn.{q_bias,v_bias} -> ...self_attn.qkv.bias = [q_bias, 0, v_bias] (EVA has no key bias)
  ln_vision                      -> vision_model.post_layernorm   (the LayerNorm after the ViT)
  Qformer.bert.embeddings.LayerNorm -> qformer.embeddings.layernorm
  Qformer.bert.*                 -> qformer.*, with attention.self / crossattention.self -> .attention
  query_tokens                   -> query_tokens
  t5_proj | llm_proj             -> language_projection
  t5_model.* | llm_model.*       -> language_model.*  (a peft wrapper's base_model.model. is dropped)
LoRA factors are read too: the paper's Q-Former LoRA (loralib-style `...query.lora_A`) and peft's LLM
LoRA (`...q.lora_A.default.weight`) both land on the peft adapter of a model prepared with
`peft_setup.apply_peft` (their scaling is that of our LoraConfig, alpha 8). A checkpoint written after
`.eval()` by the paper's Q-Former LoRA has the update merged into the base weights (docs/protocol.md §5):
that cannot be detected from the file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

# keys LAVIS saves that transformers does not keep (non-persistent buffers)
IGNORED = re.compile(r"^Qformer\.bert\.embeddings\.position_ids$")
_VISION_EMBEDDINGS = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
}
_VISION_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                 "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_BLOCK = re.compile(r"^visual_encoder\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_QV_BIAS = re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)$")


def rename_key(key: str) -> str | None:
    """The transformers name (without adapter names) of a LAVIS key; None if it has no counterpart."""
    if key in _VISION_EMBEDDINGS:
        return _VISION_EMBEDDINGS[key]
    if m := _BLOCK.match(key):
        return f"vision_model.encoder.layers.{m[1]}.{_VISION_BLOCK[m[2]]}.{m[3]}"
    if key.startswith("ln_vision."):
        return "vision_model.post_layernorm." + key.removeprefix("ln_vision.")
    if key == "query_tokens":
        return key
    if key.startswith("Qformer.bert."):
        key = key.replace("Qformer.bert.embeddings.LayerNorm.", "qformer.embeddings.layernorm.")
        key = key.replace("Qformer.bert.", "qformer.")
        key = key.replace(".attention.self.", ".attention.attention.").replace(".crossattention.self.", ".crossattention.attention.")
    elif key.startswith(("t5_proj.", "llm_proj.")):
        key = "language_projection." + key.split(".", 1)[1]
    elif key.startswith(("t5_model.", "llm_model.")):
        key = "language_model." + key.split(".", 1)[1].removeprefix("base_model.model.")
    else:
        return None
    # a full file saved from a peft-wrapped LLM: the frozen weight sits in `<layer>.base_layer.weight`
    key = key.replace(".base_layer.", ".")
    # LoRA factors: loralib names them `lora_A`, peft `lora_A.<adapter>.weight`
    key = re.sub(r"\.(lora_[AB])$", r".\1.weight", key)
    key = re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1.weight", key)
    return key


def _normalized(name: str) -> str:
    """A model parameter name without peft's wrapper prefix, base_layer and adapter name."""
    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1.weight", name)


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(tensors under transformers names, their LAVIS names, LAVIS keys with no counterpart)."""
    converted, origin, unmatched, qv = {}, {}, [], {}
    for key, value in state_dict.items():
        if IGNORED.match(key):
            continue
        if m := _QV_BIAS.match(key):
            qv.setdefault(int(m[1]), {})[m[2]] = value
            continue
        new = rename_key(key)
        if new is None:
            unmatched.append(key)
        else:
            converted[new], origin[new] = value, key
    for layer, biases in sorted(qv.items()):
        if set(biases) != {"q_bias", "v_bias"}:
            unmatched += [f"visual_encoder.blocks.{layer}.attn.{b}" for b in biases]
            continue
        q, v = biases["q_bias"], biases["v_bias"]
        new = f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"
        converted[new] = torch.cat([q, torch.zeros_like(v), v])
        origin[new] = f"visual_encoder.blocks.{layer}.attn.q_bias+v_bias"
    return converted, origin, unmatched


@dataclass
class LavisReport:
    """What load_lavis_checkpoint did. Names: `loaded`/`missing` in the model, the rest in the checkpoint."""

    path: str
    loaded: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # checkpoint (LAVIS) keys with no place in the model
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (LAVIS key, checkpoint, model)
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint did not provide

    def summary(self) -> str:
        lines = [f"{self.path}: loaded {len(self.loaded)} tensors; {len(self.missing)} model tensors not in the checkpoint"]
        if self.unmatched:
            lines.append(f"  {len(self.unmatched)} checkpoint keys unmatched: {', '.join(self.unmatched[:10])}"
                         + (" ..." if len(self.unmatched) > 10 else ""))
        for key, got, want in self.shape_mismatch:
            lines.append(f"  shape mismatch {key}: checkpoint {got} vs model {want}")
        return "\n".join(lines)


def read_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside a LAVIS .pth file ({'model': state_dict, ...} or a bare state dict)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as err:  # weights_only refuses arbitrary pickled objects
        raise ValueError(f"{path}: cannot read the checkpoint safely ({err.__class__.__name__}: {str(err)[:200]}). "
                         "If you trust the file, call again with trusted=True.") from err
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict or {{'model': state_dict}}, got {type(checkpoint).__name__}")
    return state


def file_llm_kind(state_dict: dict[str, torch.Tensor]) -> str | None:
    """'t5' | 'llama' from a LAVIS state dict's names (t5_model/t5_proj vs llm_model/llm_proj); None: no LLM key."""
    kinds = {"t5" if k.startswith(("t5_model.", "t5_proj.")) else "llama" for k in state_dict
             if k.startswith(("t5_model.", "t5_proj.", "llm_model.", "llm_proj."))}
    return kinds.pop() if len(kinds) == 1 else None


def load_lavis_checkpoint(model, path: str | os.PathLike, *, trusted: bool = False) -> LavisReport:
    """Copy the tensors of a LAVIS InstructBLIP checkpoint into `model` (plain or peft-wrapped) in place.
    A file of the other LLM kind (a T5 file into a Vicuna model, or back) is refused before anything is copied."""
    state = read_checkpoint(path, trusted=trusted)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_kind = "llama" if base.config.use_decoder_only_language_model else "t5"
    kind = file_llm_kind(state)
    if kind is not None and kind != model_kind:
        raise ValueError(f"{path}: a LAVIS {kind} checkpoint ({'t5_model/t5_proj' if kind == 't5' else 'llm_model/llm_proj'} "
                         f"keys) cannot load into this {model_kind} model; load it into an InstructBLIP with a "
                         f"{'Flan-T5' if kind == 't5' else 'Vicuna'} LLM")
    converted, origin, unmatched = convert_state_dict(state)
    targets = {_normalized(name): name for name in model.state_dict()}
    report = LavisReport(path=str(path), unmatched=unmatched)
    model_state = model.state_dict()
    selected = {}
    for key, value in converted.items():
        name = targets.get(key)
        if name is None:
            report.unmatched.append(origin[key])
        elif tuple(value.shape) != tuple(model_state[name].shape):
            report.shape_mismatch.append((origin[key], tuple(value.shape), tuple(model_state[name].shape)))
        else:
            selected[name] = value
    model.load_state_dict(selected, strict=False)
    report.loaded = sorted(selected)
    report.missing = sorted(set(model_state) - set(selected))
    return report

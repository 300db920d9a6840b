"""Model sizes as data: `tiny` (tests), `mini` (the embedded default) and the paper's full-size models.

A preset fixes the vision tower, the Q-Former and the LLM's shape; `build_config` turns it into a
transformers `InstructBlipConfig`. `mini-wide` / `mini-deep` (and `tiny-wide` / `tiny-deep` for tests) are
the embedded presets with the Q-Former and LLM doubled in width or depth on the same vision tower
(SCALED_FROM, below). The full-size presets are written out here (no download) so that
`build_model(..., device="meta")` can count their parameters without weights:
  EVA ViT-g/14 at 224 px (hidden 1408, 39 layers, MLP 6144, 16 heads)
  Q-Former = BERT-base (12 layers, hidden 768, cross-attention on layers 0,2,..,10, 32 queries,
             vocabulary 30,522 + the "[DEC]" token LAVIS adds = 30,523)
  Flan-T5-XL (d_model 2048, 24+24 layers, 32 heads, gated-GELU FFN 5120) or Vicuna-7B (LLaMA-7B shape).
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported by build_config only: a config's validation reads the preset names
    from transformers import InstructBlipConfig

LLM_KINDS = ("t5", "llama")


@dataclass(frozen=True)
class Preset:
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    qformer_hidden: int
    qformer_layers: int
    qformer_heads: int
    qformer_intermediate: int
    num_query_tokens: int
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_intermediate: int
    cross_attention_frequency: int = 2
    llm: str | None = None  # fixed for the full-size presets, chosen by the caller otherwise
    qformer_vocab_size: int | None = None  # None: taken from the tokenizer
    llm_vocab_size: int | None = None
    image_token_index: int | None = None
    max_text_positions: int = 512
    # BERT's and T5's 0.1 at full size. On a CPU, dropout's random masks cost about a third of a small
    # model's step (measured), so the small presets may turn it down.
    qformer_dropout: float = 0.1
    llm_dropout: float = 0.1


PRESETS: dict[str, Preset] = {
    # 2 layers, 64 wide everywhere; 32 px images in 8 px patches (16 patches + CLS), 8 queries.
    "tiny": Preset(
        image_size=32, patch_size=8, vision_hidden=64, vision_layers=2, vision_heads=4, vision_intermediate=128,
        qformer_hidden=64, qformer_layers=2, qformer_heads=4, qformer_intermediate=128, num_query_tokens=8,
        llm_hidden=64, llm_layers=2, llm_heads=4, llm_intermediate=128, qformer_dropout=0.0, llm_dropout=0.0,
    ),
    # The embedded default, sized for a CPU study (step times: docs/performance.md): 64 px images in 8 px patches
    # (64 patches + CLS); a 4-layer Q-Former keeps the paper's structure (cross-attention on layers 0 and 2, both
    # FFN branches) with 16 queries; dropout off (its random masks are a large share of a small model's step);
    # a 2-layer LLM.
    "mini": Preset(
        image_size=64, patch_size=8, vision_hidden=128, vision_layers=4, vision_heads=4, vision_intermediate=512,
        qformer_hidden=64, qformer_layers=4, qformer_heads=4, qformer_intermediate=256, num_query_tokens=16,
        llm_hidden=64, llm_layers=2, llm_heads=4, llm_intermediate=256, qformer_dropout=0.0, llm_dropout=0.0,
    ),
    "flan-t5-xl": Preset(
        image_size=224, patch_size=14, vision_hidden=1408, vision_layers=39, vision_heads=16, vision_intermediate=6144,
        qformer_hidden=768, qformer_layers=12, qformer_heads=12, qformer_intermediate=3072, num_query_tokens=32,
        llm_hidden=2048, llm_layers=24, llm_heads=32, llm_intermediate=5120,
        llm="t5", qformer_vocab_size=30523, llm_vocab_size=32128, image_token_index=32100,  # a spare T5 row
    ),
    "vicuna-7b": Preset(
        image_size=224, patch_size=14, vision_hidden=1408, vision_layers=39, vision_heads=16, vision_intermediate=6144,
        qformer_hidden=768, qformer_layers=12, qformer_heads=12, qformer_intermediate=3072, num_query_tokens=32,
        llm_hidden=4096, llm_layers=32, llm_heads=32, llm_intermediate=11008,
        # LLaMA's 32,000 + the "[PAD]" LAVIS adds + the image placeholder
        llm="llama", qformer_vocab_size=30523, llm_vocab_size=32002, image_token_index=32001,
    ),
}


# --- model-size axis (the scaling open question: embedded model width and depth) -------------------------------
# The embedded presets scaled up in width or in depth, for the open question "does the gap between Q-Former
# LoRA and full fine-tuning change with model size?" at the embedded scale (the mini profile's opt-in
# --model-scaling). Only the Q-Former and the LLM change: the vision tower stays exactly the base preset's,
# so that every size is built on the same frozen stage-1 encoder (pretrain/base.py shares it between presets
# whose vision tower and stage-1 recipe agree) and the comparison varies the adapted parts alone.
#   width: hidden and intermediate sizes doubled, heads doubled so the head size stays the base's (16)
#   depth: Q-Former and LLM layers doubled (cross-attention frequency unchanged, so the deeper Q-Former keeps
#          the paper's alternation: cross-attention on every other layer)
SCALED_FROM: dict[str, tuple[str, str]] = {  # name -> (base preset, axis)
    "tiny-wide": ("tiny", "width"), "tiny-deep": ("tiny", "depth"),
    "mini-wide": ("mini", "width"), "mini-deep": ("mini", "depth"),
}
VISION_FIELDS = ("image_size", "patch_size", "vision_hidden", "vision_layers", "vision_heads", "vision_intermediate")


def scaled(p: Preset, axis: str, factor: int = 2) -> Preset:
    """`p` with its Q-Former and LLM `factor` times as wide ('width') or as deep ('depth'); vision unchanged."""
    import dataclasses

    if axis == "width":
        return dataclasses.replace(
            p, qformer_hidden=p.qformer_hidden * factor, qformer_heads=p.qformer_heads * factor,
            qformer_intermediate=p.qformer_intermediate * factor, llm_hidden=p.llm_hidden * factor,
            llm_heads=p.llm_heads * factor, llm_intermediate=p.llm_intermediate * factor)
    if axis == "depth":
        return dataclasses.replace(p, qformer_layers=p.qformer_layers * factor, llm_layers=p.llm_layers * factor)
    raise ValueError(f"axis must be 'width' or 'depth', got {axis!r}")


PRESETS.update({name: scaled(PRESETS[src], axis) for name, (src, axis) in SCALED_FROM.items()})


def root_preset(name: str) -> str:
    """The preset a scaled one derives from ('mini-wide' -> 'mini'); the name itself otherwise."""
    return SCALED_FROM[name][0] if name in SCALED_FROM else name


def vision_signature(name: str) -> dict[str, int]:
    """What fixes a preset's vision tower (build_config adds only constants to it)."""
    p = get_preset(name)
    return {f: getattr(p, f) for f in VISION_FIELDS}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_llm(preset: str, llm: str | None) -> str:
    """The LLM kind of a preset: fixed for full-size presets, required ('t5' | 'llama') for the others."""
    fixed = get_preset(preset).llm
    if llm is None:
        if fixed is None:
            raise ValueError(f"preset {preset!r} needs llm='t5' or llm='llama'")
        return fixed
    if llm not in LLM_KINDS:
        raise ValueError(f"llm must be one of {LLM_KINDS}, got {llm!r}")
    if fixed is not None and llm != fixed:
        raise ValueError(f"preset {preset!r} is a {fixed} model; llm={llm!r} does not fit it")
    return llm


def build_config(
    preset: str,
    llm: str | None = None,
    *,
    llm_vocab_size: int | None = None,
    qformer_vocab_size: int | None = None,
    image_token_index: int | None = None,
    llm_special_ids: dict[str, int] | None = None,
) -> "InstructBlipConfig":
    """The InstructBlipConfig of `preset` with a T5-style or LLaMA-style LLM.

    Vocabulary sizes and the image placeholder id come from the tokenizers for `tiny`/`mini`
    (arguments) and from the preset for the full-size models. `llm_special_ids` (pad/bos/eos ids of
    the LLM tokenizer) defaults to the ids of `tokenizers.word_tokenizer(role="llm")`.
    """
    from transformers import (InstructBlipConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig, LlamaConfig,
                              T5Config)

    p = get_preset(preset)
    llm = resolve_llm(preset, llm)
    llm_vocab_size = llm_vocab_size or p.llm_vocab_size
    qformer_vocab_size = qformer_vocab_size or p.qformer_vocab_size
    image_token_index = image_token_index if image_token_index is not None else p.image_token_index
    if llm_vocab_size is None or qformer_vocab_size is None or image_token_index is None:
        raise ValueError(f"preset {preset!r}: give llm_vocab_size, qformer_vocab_size and image_token_index "
                         "(build_model takes them from the tokenizers)")
    if not 0 <= image_token_index < llm_vocab_size:
        raise ValueError(f"image_token_index {image_token_index} is outside the LLM vocabulary ({llm_vocab_size})")
    if p.llm is not None:  # real tokenizers: T5 pad 0 / eos 1; LLaMA bos 1 / eos 2 / LAVIS's [PAD] 32000
        ids = {"pad": 0, "eos": 1, "bos": 1} if llm == "t5" else {"pad": 32000, "bos": 1, "eos": 2}
    else:  # tokenizers.word_tokenizer(role="llm")
        ids = {"pad": 0, "eos": 1, "bos": 3}
    ids.update(llm_special_ids or {})

    vision = InstructBlipVisionConfig(
        hidden_size=p.vision_hidden, intermediate_size=p.vision_intermediate, num_hidden_layers=p.vision_layers,
        num_attention_heads=p.vision_heads, image_size=p.image_size, patch_size=p.patch_size,
        # transformers' default 1e-10 makes a vision tower built from scratch output ~0 (docs/protocol.md §1)
        initializer_range=0.02,
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=qformer_vocab_size, hidden_size=p.qformer_hidden, num_hidden_layers=p.qformer_layers,
        num_attention_heads=p.qformer_heads, intermediate_size=p.qformer_intermediate,
        cross_attention_frequency=p.cross_attention_frequency, max_position_embeddings=p.max_text_positions,
        encoder_hidden_size=p.vision_hidden, pad_token_id=0,
        hidden_dropout_prob=p.qformer_dropout, attention_probs_dropout_prob=p.qformer_dropout,
    )
    if llm == "t5":
        text = T5Config(
            vocab_size=llm_vocab_size, d_model=p.llm_hidden, d_kv=p.llm_hidden // p.llm_heads, d_ff=p.llm_intermediate,
            num_layers=p.llm_layers, num_decoder_layers=p.llm_layers, num_heads=p.llm_heads,
            # Flan-T5's gated FFN (wi_0, wi_1, wo); plain GELU as LAVIS and the transformers conversion set it
            feed_forward_proj="gated-gelu", dense_act_fn="gelu", tie_word_embeddings=False,
            pad_token_id=ids["pad"], eos_token_id=ids["eos"], bos_token_id=ids["bos"],
            decoder_start_token_id=ids["pad"], dropout_rate=p.llm_dropout,
        )
    else:
        text = LlamaConfig(
            vocab_size=llm_vocab_size, hidden_size=p.llm_hidden, intermediate_size=p.llm_intermediate,
            num_hidden_layers=p.llm_layers, num_attention_heads=p.llm_heads, num_key_value_heads=p.llm_heads,
            max_position_embeddings=2048 if p.llm else p.max_text_positions, rms_norm_eps=1e-6,
            tie_word_embeddings=False, pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        )
    return InstructBlipConfig(
        vision_config=vision, qformer_config=qformer, text_config=text,
        num_query_tokens=p.num_query_tokens, image_token_index=image_token_index,
    )

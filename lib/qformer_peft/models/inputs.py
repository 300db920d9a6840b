"""Turn images, prompts and targets into the tensors `InstructBlipForConditionalGeneration` takes,
and run the model from cached vision-encoder outputs.

Sequence layout (LAVIS's, which produced the paper's numbers; Q = image tokens: the Q-Former's query count,
or what another connector feeds the LLM, models/connectors.py):
  Q-Former text:  [CLS] prompt [SEP]                       (BERT's specials; the query tokens come first inside the model)
  T5 encoder:     <image>xQ prompt </s>        labels: target </s>
  LLaMA:          <image>xQ <s> prompt target </s>  labels -100 everywhere except target </s>
The Q image placeholders are where transformers 5 scatters the projected query outputs.
Prompts are cut from the LEFT to `max_prompt_tokens` (special tokens included) for both tokenizers,
in training and evaluation alike (docs/protocol.md §3). Padding is on the RIGHT: for LLaMA that keeps the
position ids of every real token equal to the unpadded ones (transformers numbers positions 0..L-1
regardless of the mask), so a padded batch gives each sample the loss it has alone; padded label
positions are -100. Without targets (generation) LLaMA batches are padded on the LEFT instead, so
that every prompt ends where generation starts.
"""
from __future__ import annotations

import weakref

import torch
from peft import AdaLoraModel, PeftModel
from transformers import InstructBlipForConditionalGeneration
from transformers.models.instructblip.modeling_instructblip import BaseModelOutputWithVisionQformerOutputs

from .connectors import connector_of, image_token_count, vision_layers

IGNORE = -100


def unwrap(model) -> InstructBlipForConditionalGeneration:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _entry(model):
    # Through peft's tuner (LoraModel / AdaLoraModel) rather than PeftModel.forward: AdaLoraModel.forward
    # adds the orthogonality penalty to the loss, which PeftModel.forward would skip (docs/protocol.md §6).
    # An AdaLoRA adapter loaded for inference has no trainable adapter, hence no penalty to add:
    # its tuner's forward would fail looking for one, so go straight to the adapted model.
    if not isinstance(model, PeftModel):
        return model
    tuner = model.base_model
    if isinstance(tuner, AdaLoraModel) and not hasattr(tuner, "trainable_adapter_name"):
        return tuner.model
    return tuner


# Token ids per tokenizer and text: every epoch, every rank and seed of a notebook, and every evaluation would
# re-tokenize the same prompts; the lists are never mutated (callers slice or concatenate), so the cache hands
# out the same objects.
_TOKEN_CACHE: "weakref.WeakKeyDictionary[object, dict[str, list[int]]]" = weakref.WeakKeyDictionary()
_TOKEN_CACHE_MAX = 200_000  # texts per tokenizer; past it the cache is cleared (a mini study stays far below)


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids without special tokens, cached per tokenizer (prompts repeat across epochs)."""
    cache = _TOKEN_CACHE.setdefault(tokenizer, {})
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    if missing:
        if len(cache) + len(missing) > _TOKEN_CACHE_MAX:
            cache.clear()
        cache.update(zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"]))
    return [cache[t] for t in texts]


def _left_cut(ids: list[int], keep: int) -> list[int]:
    return ids[-keep:] if keep > 0 else []


def pad_rows(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """Token rows padded with `value` to the longest, on the right (or the left), as one tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows],
                        dtype=torch.long)


def _mask(rows: list[list[int]], left: bool = False) -> torch.Tensor:
    return pad_rows([[1] * len(r) for r in rows], 0, left)


def make_batch(
    bundle,
    pixel_values: torch.Tensor | None,
    prompts: list[str],
    targets: list[str] | None = None,
    *,
    max_prompt_tokens: int = 128,
) -> dict[str, torch.Tensor]:
    """Tensors ready for `bundle.model(**batch)` (or `forward(model, batch, image_embeds=...)`).

    pixel_values: [B, 3, H, W] or None when the vision features come from a cache.
    Returns qformer_input_ids/attention_mask [B, Lq], input_ids/attention_mask [B, L] and, with
    targets, labels ([B, L] for LLaMA, [B, T] for T5, plus decoder_attention_mask [B, T]).
    """
    if targets is not None and len(targets) != len(prompts):
        raise ValueError(f"make_batch: {len(prompts)} prompts but {len(targets)} targets")
    if max_prompt_tokens < 3:
        raise ValueError("make_batch: max_prompt_tokens must leave room for the special tokens (>= 3)")
    config = bundle.model.config
    qtok, ltok = bundle.qformer_tokenizer, bundle.llm_tokenizer
    image = [config.image_token_index] * image_token_count(unwrap(bundle.model))

    # Q-Former text: [CLS] prompt [SEP] (BERT), cut from the left so that [CLS] + prompt + [SEP] fits
    q_head = [qtok.cls_token_id] if qtok.cls_token_id is not None else []
    q_tail = [qtok.sep_token_id] if qtok.sep_token_id is not None else []
    keep = max_prompt_tokens - len(q_head) - len(q_tail)
    q_rows = [q_head + _left_cut(ids, keep) + q_tail for ids in token_ids(qtok, prompts)]
    batch = {"qformer_input_ids": pad_rows(q_rows, qtok.pad_token_id), "qformer_attention_mask": _mask(q_rows)}

    prompt_ids = [_left_cut(ids, max_prompt_tokens - 1) for ids in token_ids(ltok, prompts)]  # room for <s> or </s>
    target_ids = None if targets is None else [ids + [ltok.eos_token_id] for ids in token_ids(ltok, targets)]
    if bundle.llm_kind == "t5":
        rows = [image + ids + [ltok.eos_token_id] for ids in prompt_ids]
        batch.update(input_ids=pad_rows(rows, ltok.pad_token_id), attention_mask=_mask(rows))
        if target_ids is not None:
            batch.update(labels=pad_rows(target_ids, IGNORE), decoder_attention_mask=_mask(target_ids))
    elif bundle.llm_kind == "llama":
        bos = [ltok.bos_token_id]
        if target_ids is None:  # generation: left padding so every prompt ends at the last position
            rows = [image + bos + ids for ids in prompt_ids]
            batch.update(input_ids=pad_rows(rows, ltok.pad_token_id, left=True), attention_mask=_mask(rows, left=True))
        else:
            rows = [image + bos + p + t for p, t in zip(prompt_ids, target_ids)]
            labels = [[IGNORE] * (len(image) + 1 + len(p)) + t for p, t in zip(prompt_ids, target_ids)]
            batch.update(input_ids=pad_rows(rows, ltok.pad_token_id), attention_mask=_mask(rows),
                         labels=pad_rows(labels, IGNORE))
    else:
        raise ValueError(f"make_batch: unknown llm_kind {bundle.llm_kind!r} (expected 't5' or 'llama')")
    if pixel_values is not None:
        batch["pixel_values"] = pixel_values
        batch = {k: v.to(pixel_values.device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The frozen ViT's output BEFORE the post-ViT LayerNorm: [B, patches + 1, vision_hidden], or, for a
    connector that reads CLS tokens per layer (bottleneck), those tokens: [B, n_layers, vision_hidden].

    This is what a feature cache may store: the LayerNorm after it (LAVIS's ln_vision,
    transformers' vision_model.post_layernorm) is trainable in every setup, so it runs each step.
    """
    m = unwrap(model)
    vision = m.vision_model
    hidden = vision.embeddings(pixel_values)
    layers = vision_layers(m)
    if layers is None:
        return vision.encoder(inputs_embeds=hidden).last_hidden_state
    cls = []
    for depth, layer in enumerate(vision.encoder.layers[: max(layers)], start=1):  # the encoder's own loop
        hidden = layer(hidden)
        if depth in layers:
            cls.append(hidden[:, 0])
    return torch.stack(cls, dim=1)


def image_features(model, image_embeds: torch.Tensor, qformer_input_ids: torch.Tensor,
                   qformer_attention_mask: torch.Tensor | None = None) -> BaseModelOutputWithVisionQformerOutputs:
    """Steps 2-3 of transformers' get_image_features, from cached ViT outputs (encode_images).

    post-ViT LayerNorm -> Q-Former (queries + instruction, cross-attending to the image) ->
    language_projection of the query outputs: pooler_output [B, Q, llm_hidden]. With another connector
    attached (models/connectors.py): post-ViT LayerNorm -> that connector, pooler_output [B, T, llm_hidden];
    qformer_outputs is None then (the instruction does not reach the connector).
    """
    m = unwrap(model)
    image_embeds = m.vision_model.post_layernorm(image_embeds)  # [B, P+1, Dv] (bottleneck: [B, n, Dv])
    connector = connector_of(m)
    if connector is not None:
        return BaseModelOutputWithVisionQformerOutputs(
            last_hidden_state=image_embeds, pooler_output=connector(image_embeds), qformer_outputs=None,
            vision_outputs=None)
    batch_size = image_embeds.shape[0]
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    queries = m.query_tokens.expand(batch_size, -1, -1)  # [B, Q, Dq]
    query_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=image_embeds.device)
    if qformer_attention_mask is None:
        qformer_attention_mask = torch.ones_like(qformer_input_ids)
    qformer_outputs = m.qformer(
        input_ids=qformer_input_ids,
        attention_mask=torch.cat([query_mask, qformer_attention_mask.to(query_mask.device)], dim=1),
        query_embeds=queries,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask,
        return_dict=True,
    )
    features = m.language_projection(qformer_outputs.last_hidden_state[:, : queries.shape[1], :])  # [B, Q, Dl]
    return BaseModelOutputWithVisionQformerOutputs(
        last_hidden_state=image_embeds, pooler_output=features, qformer_outputs=qformer_outputs, vision_outputs=None
    )


def forward(model, batch: dict[str, torch.Tensor], *, image_embeds: torch.Tensor | None = None):
    """Run the (possibly peft-wrapped) model on a make_batch batch.

    With image_embeds (cached `encode_images` output) the ViT is skipped; the rest of the model, the
    post-ViT LayerNorm included, runs as in the pixel path and gives the same loss and logits. A model
    with a connector other than the Q-Former always goes this way (transformers' forward knows only the
    Q-Former), encoding the pixels first.
    """
    m = unwrap(model)
    if image_embeds is None and connector_of(m) is not None:
        image_embeds = encode_images(m, batch["pixel_values"])
    if image_embeds is None:
        return _entry(model)(**batch)
    features = image_features(model, image_embeds, batch["qformer_input_ids"], batch.get("qformer_attention_mask"))
    placeholders = int((batch["input_ids"] == m.config.image_token_index).sum())
    if placeholders != features.pooler_output.shape[0] * features.pooler_output.shape[1]:
        # masked_scatter would silently use the first features and drop the rest
        raise ValueError(f"forward: {placeholders} image placeholders in the batch but the connector gives "
                         f"{tuple(features.pooler_output.shape[:2])} tokens; build the batch with make_batch on "
                         "the model that carries the connector")
    rest = {k: v for k, v in batch.items() if k != "pixel_values"}
    return _entry(model)(pixel_values=None, mm_encoder_outputs={"image": features}, **rest)


def forward_from_image_embeds(model, image_embeds: torch.Tensor, batch: dict[str, torch.Tensor]):
    """forward(model, batch, image_embeds=image_embeds)."""
    return forward(model, batch, image_embeds=image_embeds)

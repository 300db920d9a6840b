"""The three training stages of an embedded base model, each with its own direct signal (docs/embedded-models.md).

  stage 1  vision encoder (stands in for EVA-CLIP) on dense labels of the held-in pictures, then frozen
           for good: vision.py
  stage 2  language model (stands in for Flan-T5 / Vicuna): the LLM alone on the world's held-in text
           (captions, questions with answers, facts and lectures): prefix LM for T5, causal LM for LLaMA.
  stage 3  Q-Former + query tokens + projection (+ the post-ViT LayerNorm, trainable as in every setup)
           on the held-in tasks (captioning, open VQA) with the ordinary InstructBLIP loss through the
           engine's training loop (train.fit), from cached encoder features; optionally the LLM too. The
           LLaMA build's Q-Former starts from the T5 build's (pretrain.base, Recipe.qformer_from; why below).
Only DATA/heldin and the held-in lines of DATA/scenes.jsonl are read here: never a benchmark.

Why each stage and epoch count is what it is, with the measurements: docs/embedded-models.md.
"""
from __future__ import annotations

import math
import random
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .heldin import HeldIn, heldin_examples, training_tasks


def _log(log: Callable[[str], None] | None, text: str) -> None:
    if log is not None:
        log(text)


# --- stage 2: the language model --------------------------------------------------------------------

def text_corpus(heldin: HeldIn, split: str, mc_fraction: float = 0.0, seed: int = 0,
                extra_per_picture: int = 0) -> list[tuple[str, str]]:
    """(prefix, continuation) pairs of the held-in text: every task as (prompt, answer) (with the share
    mc_fraction of the questions also asked with options, as stage 3 will: the format skill Flan-T5 and
    Vicuna bring from text), and every fact, lecture and caption as itself with an empty prefix (the
    caller cuts it)."""
    tasks = training_tasks(heldin, split, extra_per_picture=extra_per_picture, mc_fraction=mc_fraction, seed=seed)
    pairs = [(t["prompt"], t["answer"]) for t in tasks]
    pairs += [("", t["answer"]) for t in heldin.tasks[split] if t["task"] == "caption"]
    pairs += [("", s) for s in heldin.text[split]]
    return pairs


def _cut(words: list[str], rng: random.Random) -> tuple[str, str]:
    """Prefix-LM: a random cut point, at least one word on each side where possible."""
    if len(words) < 2:
        return "", " ".join(words)
    k = rng.randint(1, len(words) - 1)
    return " ".join(words[:k]), " ".join(words[k:])


def lm_batch(tokenizer, llm_kind: str, pairs: list[tuple[str, str]], max_tokens: int = 128) -> dict[str, torch.Tensor]:
    """T5: encoder prefix + </s>, decoder labels = continuation + </s>. LLaMA: <s> prefix continuation </s>,
    loss on every token after <s> (causal LM pretraining has no prompt mask)."""
    from ..models.inputs import IGNORE, pad_rows

    prefixes = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    targets = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if llm_kind == "t5":
        enc = [p[-(max_tokens - 1):] + [eos] for p in prefixes]
        dec = [t[:max_tokens - 1] + [eos] for t in targets]
        return {"input_ids": pad_rows(enc, pad), "attention_mask": pad_rows([[1] * len(r) for r in enc], 0),
                "labels": pad_rows(dec, IGNORE), "decoder_attention_mask": pad_rows([[1] * len(r) for r in dec], 0)}
    rows = [([tokenizer.bos_token_id] + p + t + [eos])[:max_tokens] for p, t in zip(prefixes, targets)]
    labels = [[IGNORE] + r[1:] for r in rows]
    return {"input_ids": pad_rows(rows, pad), "attention_mask": pad_rows([[1] * len(r) for r in rows], 0),
            "labels": pad_rows(labels, IGNORE)}


def _lm_examples(pairs: list[tuple[str, str]], llm_kind: str, rng: random.Random) -> list[tuple[str, str]]:
    """One epoch's training pairs: text without a prompt is cut at a random point for T5 (prefix LM);
    LLaMA reads prompt and answer as one text."""
    out = []
    for prefix, text in pairs:
        if not prefix and llm_kind == "t5":
            out.append(_cut(text.split(), rng))
        else:
            out.append((prefix, text))
    return out


@torch.no_grad()
def lm_perplexity(language_model, tokenizer, llm_kind: str, pairs: list[tuple[str, str]], batch: int = 64) -> float:
    """exp(mean NLL per predicted token) on held-out text; unprompted text is cut in half for T5."""
    language_model.eval()
    examples = [(p, t) if p or llm_kind != "t5" else
                (" ".join(t.split()[: len(t.split()) // 2]), " ".join(t.split()[len(t.split()) // 2:]))
                for p, t in pairs]
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        b = lm_batch(tokenizer, llm_kind, examples[i:i + batch])
        logits = language_model(**b).logits  # T5 derives its decoder inputs from the labels
        labels = b["labels"]
        if llm_kind != "t5":
            logits, labels = logits[:, :-1], labels[:, 1:]
        nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((labels != -100).sum())
    return round(math.exp(total / max(1, count)), 4)


def train_language(language_model, tokenizer, llm_kind: str, heldin: HeldIn, *, epochs: int, batch_size: int,
                   lr: float, seed: int, mc_fraction: float = 0.0, extra_per_picture: int = 0,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Stage 2: the LLM alone on the held-in text, in place. Returns held-out perplexity before and after."""
    from ..train import adamw, optimizer_update, param_groups

    start = time.perf_counter()
    train_pairs = text_corpus(heldin, "train", mc_fraction, seed, extra_per_picture)
    val_pairs = text_corpus(heldin, "val", mc_fraction, seed, extra_per_picture)
    before = lm_perplexity(language_model, tokenizer, llm_kind, val_pairs)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    for param in language_model.parameters():
        param.requires_grad = True
    optimizer = adamw(param_groups(language_model, 0.05), lr)
    per_epoch = max(1, len(train_pairs) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, per_epoch * epochs),
                                                    pct_start=0.05, anneal_strategy="cos")
    losses = []
    for epoch in range(epochs):
        language_model.train()
        examples = _lm_examples(train_pairs, llm_kind, rng)
        rng.shuffle(examples)
        for b in range(per_epoch):
            batch = lm_batch(tokenizer, llm_kind, examples[b * batch_size:(b + 1) * batch_size])
            loss = language_model(**batch).loss
            loss.backward()
            optimizer_update(optimizer, scheduler)
            losses.append(loss.item())
        _log(log, f"[base] stage 2 epoch {epoch + 1}/{epochs}: loss {np.mean(losses[-per_epoch:]):.3f} "
                  f"({time.perf_counter() - start:.0f} s)")
    language_model.eval()
    for param in language_model.parameters():
        param.requires_grad = False
    after = lm_perplexity(language_model, tokenizer, llm_kind, val_pairs)
    _log(log, f"[base] stage 2 held-out perplexity {before} -> {after}")
    return {"quality": {"perplexity_before": before, "perplexity": after, "n_val_texts": len(val_pairs)},
            "objective": "prefix LM" if llm_kind == "t5" else "causal LM", "epochs": epochs,
            "steps": per_epoch * epochs, "batch_size": batch_size, "lr": lr, "n_train_texts": len(train_pairs),
            "time_s": {"total": round(time.perf_counter() - start, 2)}}


# --- stage 3: Q-Former between them ---------------------------------------------------------------

def set_stage3_trainable(model, train_llm: bool) -> dict[str, int]:
    """Q-Former, query tokens, projection and post-ViT LayerNorm trainable (+ the LLM if asked); the vision
    encoder never. Returns trainable scalars per part."""
    counts = {"qformer": 0, "query_tokens": 0, "projection": 0, "vit_layernorm": 0, "llm": 0}
    for name, param in model.named_parameters():
        part = ("qformer" if name.startswith("qformer.") else "query_tokens" if name == "query_tokens"
                else "projection" if name.startswith("language_projection.")
                else "vit_layernorm" if name.startswith("vision_model.post_layernorm.")
                else "llm" if name.startswith("language_model.") else "vision")
        param.requires_grad = part != "vision" and (part != "llm" or train_llm)
        if param.requires_grad:
            counts[part] += param.numel()
    return counts


def train_qformer(bundle, heldin: HeldIn, images, *, epochs: int, batch_size: int, lr: float, warmup_steps: int,
                  train_llm: bool, seed: int, mc_fraction: float = 0.0, extra_per_picture: int = 0,
                  context_per_picture: int = 0, val_limit: int = 256,
                  max_prompt_tokens: int = 128, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Stage 3 with the engine's loop (train.fit: AdamW, weight decay on >= 2-dim tensors, warm-up + cosine
    per step). images: features.ImageEncoder over the frozen encoder (cached features). mc_fraction: share of
    the held-in questions also asked as multiple choice (multiple_choice). Validation each epoch is the mean
    held-in loss of the first `val_limit` val tasks; the best epoch's weights are kept."""
    from ..train import fit, seed_everything
    from ..models.inputs import forward, make_batch

    start = time.perf_counter()
    model = bundle.model
    trainable = set_stage3_trainable(model, train_llm)
    tasks = training_tasks(heldin, "train", extra_per_picture=extra_per_picture, mc_fraction=mc_fraction, seed=seed,
                           context_per_picture=context_per_picture)
    train_set = heldin_examples(tasks)
    val_set = heldin_examples(heldin.tasks["val"][:val_limit])

    @torch.no_grad()
    def validate():
        model.eval()
        total, n = 0.0, 0
        for i in range(0, len(val_set), 64):
            chunk = val_set[i:i + 64]
            batch = make_batch(bundle, None, [e.prompt for e in chunk], [e.target for e in chunk],
                               max_prompt_tokens=max_prompt_tokens)
            total += float(forward(model, batch, image_embeds=images([e.image for e in chunk])).loss) * len(chunk)
            n += len(chunk)
        return {"neg_val_loss": -total / n}, []

    def epoch_end(st: dict[str, Any]) -> None:
        last = st["history"][-1]
        _log(log, f"[base] stage 3 epoch {st['epoch']}/{epochs}: train loss {last['train_loss']:.3f}, "
                  f"val loss {-last['val']['neg_val_loss']:.3f} ({time.perf_counter() - start:.0f} s)")

    seed_everything(seed)
    fitted = fit(model, bundle, train_set, validate=validate, primary="neg_val_loss", images=images, lr=lr,
                 weight_decay=0.05, max_epochs=epochs, patience=epochs, batch_size=batch_size, schedule="cosine",
                 warmup_steps=warmup_steps, max_prompt_tokens=max_prompt_tokens, seed=seed, device="cpu",
                 progress=False, on_epoch_end=epoch_end)
    for param in model.parameters():
        param.requires_grad = False
    model.eval()
    return {"epochs": epochs, "steps": fitted.global_step, "batch_size": batch_size, "lr": lr,
            "warmup_steps": warmup_steps, "llm": "trained" if train_llm else "frozen", "trainable": trainable,
            "best_epoch": fitted.best_epoch,
            "history": [{"epoch": h["epoch"], "train_loss": round(h["train_loss"], 4),
                         "val_loss": round(-h["val"]["neg_val_loss"], 4)} for h in fitted.history],
            "n_train_tasks": len(train_set), "n_multiple_choice": sum(t["task"] == "vqa_mc" for t in tasks),
            "n_extra": sum(t["qtype"].startswith("extra_") and t["task"] == "vqa" for t in tasks),
            "time_s": {"train": round(fitted.train_time_s, 2), "total": round(time.perf_counter() - start, 2)}}

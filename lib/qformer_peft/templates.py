"""The paper's instruction templates (docs/protocol.md §3), option lettering, targets, cleaning and left truncation.

The exact strings follow the paper's public code (its dataset classes), which produced the published numbers:
  ScienceQA  Context: {<hint> <lecture>} Question: {<question>} Options: {<options>} Answer:
             literal braces; context = hint + " " + lecture (so an empty hint leaves a leading space);
             each option is "(a) text" FOLLOWED by a newline, the last one too, so the options field ends
             with "\\n}" (the paper's figure shows "}. Answer:"; the code has no period and wins).
  IconQA     <Image> Question: <question> Options: (a) x (b) y. Short answer:     (options joined by a space)
  VizWiz     <Image> Question: <question> Short answer:
  Flickr30k  <Image> A short image description:
The whole prompt is cleaned like the code's text processor: remove ! * # ; and trailing spaces, keep case.
Targets are not cleaned (the code did not clean them): "(<letter>) <choice>" for multiple choice; for VizWiz
the most common of the 10 answers (ties: the earliest; the code trained on answers[0]); for Flickr30k the
first caption (the code trained on each caption as its own sample and evaluated against the first).
The same prompt text goes to the Q-Former and to the LLM; both truncate it from the LEFT to 128 tokens.
"""
from __future__ import annotations

import re
from collections import Counter

from .data.records import MAX_CHOICES, Record

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MAX_PROMPT_TOKENS = 128
_CLEAN = re.compile(r"[!*#;]")


def letter(i: int) -> str:
    """The bare letter of option i: 0 -> "a"."""
    if not 0 <= i < MAX_CHOICES:
        raise ValueError(f"option index {i} has no letter (a)-(z)")
    return LETTERS[i]


def candidates(record: Record) -> list[str]:
    """Every option as a target string: ["(a) text", "(b) text", ...]."""
    return [f"({letter(i)}) {choice}" for i, choice in enumerate(record.choices)]


def options_text(record: Record) -> str:
    """The options field as the template inserts it (newline-terminated for ScienceQA, space-joined for IconQA)."""
    if record.dataset == "scienceqa":
        return "".join(c + "\n" for c in candidates(record))
    return " ".join(candidates(record))


def clean(text: str) -> str:
    """The code's text processor: drop ! * # ; and trailing spaces; keep case and newlines."""
    return _CLEAN.sub("", text).rstrip(" ")


def prompt(record: Record) -> str:
    """The instruction for this record, cleaned, untruncated."""
    if record.dataset == "scienceqa":
        context = f"{record.context} {record.lecture}"
        text = f"Context: {{{context}}} Question: {{{record.question}}} Options: {{{options_text(record)}}} Answer:"
    elif record.dataset == "iconqa":
        text = f"<Image> Question: {record.question} Options: {options_text(record)}. Short answer:"
    elif record.dataset == "vizwiz":
        text = f"<Image> Question: {record.question} Short answer:"
    elif record.dataset == "flickr30k":
        text = "<Image> A short image description:"
    else:
        raise ValueError(f"no template for dataset {record.dataset!r}")
    return clean(text)


def target(record: Record) -> str:
    """The gold output text (see the module docstring for the open-ended sets)."""
    if record.choices:
        if record.answer is None:
            raise ValueError(f"{record.dataset} {record.id}: multiple-choice record without an answer index")
        return candidates(record)[record.answer]
    if not record.answers:
        raise ValueError(f"{record.dataset} {record.id}: no answers to take a target from")
    if record.dataset == "flickr30k":
        return record.answers[0]
    counts = Counter(record.answers)
    best = max(counts.values())
    return next(a for a in record.answers if counts[a] == best)  # earliest among the most common


def truncate_left(text: str, tokenizer, max_tokens: int = MAX_PROMPT_TOKENS) -> str:
    """Keep the last `max_tokens` tokens of `text` (no special tokens counted), returned as text.

    Cuts the original string at the first kept token's character offset, so what survives is verbatim;
    tokenizers without offsets fall back to decoding the kept tokens. Callers that add special tokens
    (BOS/EOS) subtract them from max_tokens, or tokenise with truncation_side="left" themselves.
    """
    if max_tokens <= 0:
        return ""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else tokenizer.decode(ids[-max_tokens:])
    if len(offsets) <= max_tokens:
        return text
    return text[offsets[-max_tokens][0]:]

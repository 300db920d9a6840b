"""Where a model comes from, decided without torch or transformers (a config's validation uses it).

A string names a preset, a local checkpoint directory, or a hub id; it is a hub id only when no such path
exists and it reads `owner/name`. A checkpoint directory says which LLM it holds in its config.json.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint directory that cannot feed the model: the message names the directory, the piece and the fix."""


# Files that hold a tokenizer (fast tokenizers' tokenizer.json, SentencePiece models, WordPiece/BPE vocabularies).
LLM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")
QFORMER_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
PAPER_CHECKPOINT_LAYOUT = ("config.json, model*.safetensors (sharded or not), processor_config.json or "
                           "preprocessor_config.json, the LLM tokenizer (tokenizer.json or tokenizer.model) and "
                           "qformer_tokenizer/ (the BERT tokenizer with [DEC]): the layout of "
                           "Salesforce/instructblip-* on the hub")


def looks_like_hub_id(text: str) -> bool:
    """`owner/name` exactly (one slash, neither part a dot-path): the only strings ever sent to the hub."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w-]*(?:\.[\w-]+)*/[\w][\w.-]*", text)) and ".." not in text


def resolve_source(source: str | os.PathLike) -> str:
    """A model string as it is stored: a local path made absolute when it exists; an `owner/name` hub id
    when it does not; anything else is an error that names the path looked for."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    if looks_like_hub_id(text) and not text.startswith((".", "~", os.sep)):
        return text
    raise FileNotFoundError(f"checkpoint directory {text!r} does not exist (looked for {path.resolve()}); give a "
                            "directory in the hub layout (" + PAPER_CHECKPOINT_LAYOUT + ") or a hub id such as "
                            "Salesforce/instructblip-flan-t5-xl")


def hub_offline_error(hub_id: str) -> str | None:
    """Why `hub_id` cannot be fetched now (HF_HUB_OFFLINE set, or no route to the hub), else None: checked at
    once, so that a missing local directory that looks like `owner/name` does not spend a minute in retries."""
    import socket

    looked = f"{Path(hub_id).resolve()} is not a local directory, and "
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return f"model {hub_id!r}: {looked}the hub id {hub_id} cannot be fetched: HF_HUB_OFFLINE is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError as err:
        return f"model {hub_id!r}: {looked}the hub id {hub_id} cannot be fetched: no network ({err})"
    return None


def checkpoint_llm_kind(directory: str | os.PathLike) -> str:
    """'t5' | 'llama', read from a checkpoint directory's config.json (no weights read)."""
    import json

    config = Path(directory) / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{directory}: no config.json; a checkpoint directory holds {PAPER_CHECKPOINT_LAYOUT}")
    data = json.loads(config.read_text())
    text = data.get("text_config") or {}
    if "use_decoder_only_language_model" in data:
        return "llama" if data["use_decoder_only_language_model"] else "t5"
    kind = text.get("model_type", "")
    if kind in ("t5", "mt5", "umt5"):
        return "t5"
    if kind in ("llama", "mistral", "vicuna"):
        return "llama"
    raise CheckpointError(f"{config}: text_config.model_type {kind!r} is neither a T5 nor a LLaMA language model")

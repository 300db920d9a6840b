"""Build, save and load an InstructBLIP model together with its tokenizers and image processor.

`build_model` makes a randomly initialised model of a preset (models/presets.py), on the CPU or on
the meta device (full size, no memory); `Bundle.save` writes an ordinary transformers checkpoint
directory (model.safetensors + config.json + processor_config.json + the LLM tokenizer at the top +
qformer_tokenizer/), the layout of the Salesforce InstructBLIP checkpoints on the hub; `load_bundle`
reads such a directory, or a hub id, back. A local directory never touches the network.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor, PreTrainedTokenizerBase
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from .presets import build_config, get_preset, resolve_llm
from .sources import (LLM_TOKENIZER_FILES, PAPER_CHECKPOINT_LAYOUT, QFORMER_TOKENIZER_FILES,  # noqa: F401
                      CheckpointError, checkpoint_llm_kind, hub_offline_error, looks_like_hub_id, resolve_source)
from .tokenizers import IMAGE_TOKEN, split_words, word_tokenizer

QUERY_TOKEN_STD = 0.02  # BLIP-2 draws the query tokens from N(0, 0.02); transformers starts them at 0
# The words of the paper's templates (docs/protocol.md §3), letters and digits: the vocabulary of the default
# tokenizers of the tiny/mini presets when the caller brings none (tests; real runs pass their own).
DEFAULT_TEXT = (
    "Context: {} Question: {} Options: {} Answer: Short answer: A short image description: <Image> "
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9 . , ; ? ! ( ) { } the is what"
)


class ImageProcessor:
    """list[PIL.Image] -> FloatTensor [B, 3, H, W]: transformers' PIL BLIP processor (no torchvision).

    Resize to the model's size (bicubic), scale to [0, 1], normalise with the CLIP mean/std as the
    InstructBLIP checkpoints do. `hf` is the transformers processor that is saved with the model.
    """

    def __init__(self, hf: BlipImageProcessorPil):
        self.hf = hf

    @classmethod
    def for_size(cls, image_size: int) -> "ImageProcessor":
        return cls(BlipImageProcessorPil(size={"height": image_size, "width": image_size}))

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.hf(images, return_tensors="pt")["pixel_values"]  # [B, 3, H, W] float32


@dataclass
class Bundle:
    """A model with everything needed to feed it. llm_kind: 't5' (encoder-decoder) | 'llama' (decoder-only)."""

    model: InstructBlipForConditionalGeneration
    qformer_tokenizer: PreTrainedTokenizerBase | None
    llm_tokenizer: PreTrainedTokenizerBase | None
    image_processor: ImageProcessor | None
    llm_kind: str

    def save(self, directory: str | os.PathLike) -> Path:
        """Write an ordinary checkpoint directory that `load_bundle` (or transformers) reads back."""
        if any("lora_" in name for name, _ in self.model.named_parameters()):
            raise ValueError("Bundle.save writes base checkpoints; this model carries LoRA adapters: save the "
                             "adapters with peft's save_pretrained, or merge_and_unload() a copy first")
        if self.qformer_tokenizer is None or self.llm_tokenizer is None or self.image_processor is None:
            raise ValueError("Bundle.save needs both tokenizers and the image processor (a meta-device bundle has none)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with no_progress_bars(True):  # transformers' "Writing model shards" bar, in the build log
            self.model.save_pretrained(directory)  # model.safetensors + config.json
        InstructBlipProcessor(
            image_processor=self.image_processor.hf, tokenizer=self.llm_tokenizer,
            qformer_tokenizer=self.qformer_tokenizer, num_query_tokens=self.model.config.num_query_tokens,
        ).save_pretrained(directory)
        return directory


def llm_kind_of(model: InstructBlipForConditionalGeneration) -> str:
    return "llama" if model.config.use_decoder_only_language_model else "t5"


def default_tokenizers(words: list[str] | None = None):
    """(qformer_tokenizer, llm_tokenizer): word-level, over the template vocabulary plus `words`."""
    words = split_words([DEFAULT_TEXT, *(words or [])])
    return word_tokenizer(words, role="qformer"), word_tokenizer(words, role="llm")


def init_query_tokens(model: InstructBlipForConditionalGeneration, seed: int) -> None:
    """Draw the query tokens from N(0, 0.02) as BLIP-2 does (all-zero queries would be identical)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(model.query_tokens.shape, generator=generator) * QUERY_TOKEN_STD
    with torch.no_grad():
        model.query_tokens.copy_(values.to(model.query_tokens.dtype))


def build_model(
    preset: str,
    llm: str | None = None,
    *,
    qformer_tokenizer: PreTrainedTokenizerBase | None = None,
    llm_tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Bundle:
    """A randomly initialised InstructBLIP of `preset` with a 't5' or 'llama' LLM.

    tiny/mini: the tokenizers fix the vocabularies (defaults: `default_tokenizers()`);
    flan-t5-xl/vicuna-7b: full-size configs; use device="meta" to count parameters without memory
    (no tokenizers or image processor then: the real ones come with a checkpoint, see load_bundle).
    Same preset, tokenizers and seed give the same weights.
    """
    llm = resolve_llm(preset, llm)
    p = get_preset(preset)
    full_size = p.llm is not None
    if full_size:
        config = build_config(preset, llm)
    else:
        if qformer_tokenizer is None or llm_tokenizer is None:
            default_qf, default_llm = default_tokenizers()
            qformer_tokenizer = qformer_tokenizer or default_qf
            llm_tokenizer = llm_tokenizer or default_llm
        image_token_index = llm_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_token_index is None or image_token_index == llm_tokenizer.unk_token_id:
            raise ValueError(f"the LLM tokenizer has no {IMAGE_TOKEN!r} token; build it with word_tokenizer(role='llm')")
        special = {"pad": llm_tokenizer.pad_token_id, "eos": llm_tokenizer.eos_token_id,
                   "bos": llm_tokenizer.bos_token_id if llm_tokenizer.bos_token_id is not None else llm_tokenizer.eos_token_id}
        config = build_config(preset, llm, llm_vocab_size=len(llm_tokenizer), qformer_vocab_size=len(qformer_tokenizer),
                              image_token_index=image_token_index, llm_special_ids=special)
    meta = torch.device(device).type == "meta"
    if meta:
        with torch.device("meta"):
            model = InstructBlipForConditionalGeneration(config)
    else:
        torch.manual_seed(seed)
        model = InstructBlipForConditionalGeneration(config)
        init_query_tokens(model, seed)
        model.to(device)
    model.eval()  # callers switch to train(); eval keeps outputs deterministic by default
    processor = None if full_size or meta else ImageProcessor.for_size(p.image_size)
    return Bundle(model=model, qformer_tokenizer=qformer_tokenizer, llm_tokenizer=llm_tokenizer,
                  image_processor=processor, llm_kind=llm)


@contextlib.contextmanager
def no_progress_bars(quiet: bool):
    """transformers' progress bars off inside the block when quiet: an embedded model loads ("Loading
    weights") and saves ("Writing model shards") in milliseconds, and the bars only filled every executed
    notebook of the report and the study log; a hub download keeps its bar."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if quiet and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_on:
            hf_logging.enable_progress_bar()


def check_tokenizer_files(directory: str | os.PathLike) -> None:
    """The tokenizer files are there (transformers would otherwise fall back to an empty tokenizer silently)."""
    directory = Path(directory)
    if not any((directory / f).is_file() for f in LLM_TOKENIZER_FILES):
        raise CheckpointError(f"{directory}: the LLM tokenizer is missing (none of {', '.join(LLM_TOKENIZER_FILES)}); "
                              "copy the tokenizer files of the checkpoint's LLM into this directory (the hub "
                              "checkpoint has them at its top level)")
    if not any((directory / "qformer_tokenizer" / f).is_file() for f in QFORMER_TOKENIZER_FILES):
        raise CheckpointError(f"{directory}: the Q-Former tokenizer is missing (qformer_tokenizer/ with one of "
                              f"{', '.join(QFORMER_TOKENIZER_FILES)}); copy qformer_tokenizer/ from the hub "
                              "checkpoint (BERT's WordPiece vocabulary with [DEC])")


def check_tokenizers(directory: str | os.PathLike, config, qformer_tokenizer, llm_tokenizer) -> None:
    """The loaded tokenizers fit the model's config: vocabularies within the embeddings, the image token at the
    config's id, pad/eos (LLM) and CLS/SEP (Q-Former) defined."""
    where = str(directory)
    rows = config.text_config.vocab_size
    if len(llm_tokenizer) > rows:
        raise CheckpointError(f"{where}: the LLM tokenizer has {len(llm_tokenizer)} tokens but the LLM's embeddings "
                              f"have {rows} rows; the tokenizer belongs to another model: copy this checkpoint's own")
    if len(llm_tokenizer) < 8:
        raise CheckpointError(f"{where}: the LLM tokenizer has only {len(llm_tokenizer)} tokens (an empty "
                              "tokenizer); copy the checkpoint's tokenizer files into the directory")
    qrows = config.qformer_config.vocab_size
    if not 8 <= len(qformer_tokenizer) <= qrows:
        raise CheckpointError(f"{where}: the Q-Former tokenizer has {len(qformer_tokenizer)} tokens against {qrows} "
                              "embedding rows; copy the checkpoint's own qformer_tokenizer/")
    image_id = llm_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is None or image_id == llm_tokenizer.unk_token_id or image_id != config.image_token_index:
        raise CheckpointError(f"{where}: the LLM tokenizer gives {IMAGE_TOKEN!r} the id {image_id}, the config's "
                              f"image_token_index is {config.image_token_index}; add {IMAGE_TOKEN!r} to the "
                              "tokenizer as a special token at that id (as the hub checkpoints do) or fix config.json")
    for role, tok, names in (("LLM", llm_tokenizer, ("pad_token_id", "eos_token_id")),
                             ("Q-Former", qformer_tokenizer, ("cls_token_id", "sep_token_id"))):
        undefined = [n.removesuffix("_id") for n in names if getattr(tok, n) is None]
        if undefined:
            raise CheckpointError(f"{where}: the {role} tokenizer defines no {' / '.join(undefined)}; set it in "
                                  f"{'qformer_tokenizer/' if role == 'Q-Former' else ''}tokenizer_config.json "
                                  "(special tokens as in the hub checkpoint)")


def load_bundle(source: str | os.PathLike, *, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = torch.float32, llm: str | None = None) -> Bundle:
    """Model, tokenizers and image processor from a checkpoint directory (Bundle.save's layout) or a hub id.

    A local directory is read with local_files_only=True (no network) and checked before the weights load
    (check_tokenizer_files, check_tokenizers). A string is a hub id only when no such path exists and it
    reads `owner/name`; offline, that fails at once. The LLM kind is the checkpoint's: `llm`, when given,
    must agree. Weights load in `dtype` (default fp32 whatever the stored dtype; None keeps the stored one).
    """
    from transformers import InstructBlipConfig

    source = resolve_source(source)
    local = Path(source).exists()
    if local:
        check_tokenizer_files(source)
        checkpoint_llm_kind(source)  # a config.json that names a T5 or LLaMA language model
    else:
        reason = hub_offline_error(source)
        if reason:
            raise FileNotFoundError(reason)
    kwargs = {"local_files_only": True} if local else {}
    processor = InstructBlipProcessor.from_pretrained(source, **kwargs)
    config = InstructBlipConfig.from_pretrained(source, **kwargs)
    if config.image_token_index is None:
        raise CheckpointError(f"{source}: config has no image_token_index; transformers>=5 needs the image "
                              "placeholder token in the LLM vocabulary (re-save the checkpoint with a recent "
                              "transformers)")
    check_tokenizers(source, config, processor.qformer_tokenizer, processor.tokenizer)
    kind = "llama" if config.use_decoder_only_language_model else "t5"
    if llm is not None and llm != kind:
        raise CheckpointError(f"{source}: the checkpoint's LLM is {kind} (config.json), but llm={llm!r} was asked "
                              f"for; drop --llm or give llm={kind!r}")
    with no_progress_bars(local):
        model = InstructBlipForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs)
    model.to(device).eval()
    return Bundle(model=model, qformer_tokenizer=processor.qformer_tokenizer, llm_tokenizer=processor.tokenizer,
                  image_processor=ImageProcessor(processor.image_processor), llm_kind=llm_kind_of(model))

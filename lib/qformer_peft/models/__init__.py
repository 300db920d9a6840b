"""InstructBLIP models (transformers' InstructBlipForConditionalGeneration) with a T5 or LLaMA LLM.

presets     tiny / mini / flan-t5-xl / vicuna-7b as data; build_config
build       build_model (random init, CPU or meta), Bundle (+ save), load_bundle
tokenizers  offline word-level tokenizers for the embedded presets
inputs      make_batch (sequence layout, labels, left truncation), forward (pixels or cached ViT features)
lavis       load_lavis_checkpoint: LAVIS .pth state dicts onto the transformers layout
"""
from .build import Bundle, ImageProcessor, build_model, load_bundle
from .inputs import encode_images, forward, forward_from_image_embeds, make_batch, unwrap
from .lavis import load_lavis_checkpoint
from .presets import PRESETS, build_config
from .tokenizers import word_tokenizer

__all__ = [
    "PRESETS", "Bundle", "ImageProcessor", "build_config", "build_model", "encode_images", "forward",
    "forward_from_image_embeds", "load_bundle", "load_lavis_checkpoint", "make_batch", "unwrap", "word_tokenizer",
]

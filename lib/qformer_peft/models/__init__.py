"""InstructBLIP models (transformers' InstructBlipForConditionalGeneration) with a T5 or LLaMA LLM.

presets     tiny / mini / flan-t5-xl / vicuna-7b as data; build_config
build       build_model (random init, CPU or meta), Bundle (+ save), load_bundle
tokenizers  offline word-level tokenizers for the embedded presets
inputs      make_batch (sequence layout, labels, left truncation), forward (pixels or cached ViT features)
lavis       load_lavis_checkpoint: LAVIS .pth state dicts onto the transformers layout
connector_spec  ConnectorSpec (torch-free); connectors: the connector modules

Names are imported on first use (PEP 562), so that importing one light submodule (connector_spec, presets)
does not import torch, transformers and peft through this package.
"""
import importlib

_WHERE = {
    "Bundle": "build", "ImageProcessor": "build", "build_model": "build", "load_bundle": "build",
    "encode_images": "inputs", "forward": "inputs", "forward_from_image_embeds": "inputs", "make_batch": "inputs",
    "unwrap": "inputs", "load_lavis_checkpoint": "lavis", "PRESETS": "presets", "build_config": "presets",
    "word_tokenizer": "tokenizers",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

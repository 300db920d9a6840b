"""Images -> the frozen vision encoder's outputs, with a cache so each image is encoded once.

The ViT is frozen in every setup, so with augmentation off its output for an image never changes:
the cache computes it once and reuses it across epochs, runs and setups, in memory (shared by every
cache in the process) and on disk (safetensors shards). What is cached is the encoder's last hidden
state BEFORE the post-ViT LayerNorm, which is trainable (models.inputs.encode_images).

A cached vector is keyed by everything that determines it:
  image content   sha256 of the decoded RGB pixels (two files with the same picture share one entry)
  preprocessing   hash of the image processor's settings (size, resampling, mean, std)
  encoder         hash of the vision tower's weights (embeddings + encoder), plus device type and precision
  what            the last hidden state, or the CLS token of chosen layers (a bottleneck connector)
so a different checkpoint, resolution, precision or connector can never be served a stale entry.

Augmentation (docs/protocol.md §4: RandomResizedCrop(scale 0.5-1) + horizontal flip, as the paper's code
trained) changes the pixels every epoch, so it bypasses the cache; written here on PIL, without
torchvision (which does not import beside the CPU torch build).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .data.records import load_image
from .models.connectors import vision_layers
from .models.inputs import encode_images, unwrap

# In-process memory shared by every FeatureCache: prefix -> {image digest -> [P+1, Dv] tensor (CPU)}.
_MEMORY: dict[str, OrderedDict[str, torch.Tensor]] = {}
_MEMORY_BYTES = [0]
MEMORY_LIMIT = int(os.environ.get("QFORMER_PEFT_FEATURE_MEMORY", 4 << 30))  # bytes; oldest entries go first
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (image ref, mtime_ns, size) -> content digest


# --- identities -------------------------------------------------------------------------------------

def image_digest(ref: str) -> str:
    """sha256 (24 hex) of an image's decoded RGB pixels and size; memoised per file version."""
    path = ref.split("::", 1)[0]  # parquet refs are "<file>.parquet::<row>"
    st = os.stat(path)
    memo = (ref, st.st_mtime_ns, st.st_size)
    if memo not in _DIGESTS:
        img = load_image(ref)
        h = hashlib.sha256(f"{img.size[0]}x{img.size[1]}:".encode())
        h.update(img.tobytes())
        _DIGESTS[memo] = h.hexdigest()[:24]
    return _DIGESTS[memo]


def encoder_identity(model) -> str:
    """sha256 (16 hex) of the vision tower's frozen weights (everything before the post-ViT LayerNorm)."""
    vision = unwrap(model).vision_model
    h = hashlib.sha256()
    for prefix, module in (("embeddings", vision.embeddings), ("encoder", vision.encoder)):
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def preprocess_identity(image_processor) -> str:
    """sha256 (12 hex) of the image processor's settings."""
    hf = getattr(image_processor, "hf", image_processor)
    settings = hf.to_dict() if hasattr(hf, "to_dict") else repr(hf)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- augmentation -----------------------------------------------------------------------------------

def random_resized_crop_flip(img: Image.Image, rng: random.Random, scale: tuple[float, float] = (0.5, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop box sampling (10 tries, then a centre crop) and a flip with p=0.5.

    The crop is returned at its own size; the image processor resizes it to the model's resolution.
    """
    width, height = img.size
    area = width * height
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            box = (left, top, left + w, top + h)
            break
    if box is None:  # fallback: the largest centre crop within the ratio range
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            w, h = int(round(height * ratio[1])), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    out = img.crop(box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


# --- the cache ----------------------------------------------------------------------------------------

class FeatureCache:
    """image refs -> the frozen ViT's outputs [B, P+1, Dv], computed once per image.

    directory=None keeps it in memory only. Entries computed since the last `flush()` are written to
    disk as one new shard (atomic, so parallel runs sharing the directory never see half a file);
    `precompute` flushes every SHARD_BYTES so that a full-size dataset never sits in memory twice.
    """

    SHARD_BYTES = 512 << 20

    def __init__(self, model, image_processor, directory: str | Path | None = None, *,
                 device: torch.device | str = "cpu",
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 precision: str = "fp32", batch_size: int = 64):
        self.model, self.image_processor = model, image_processor
        self.device, self.autocast, self.batch_size = torch.device(device), autocast, batch_size
        self.prefix = f"{encoder_identity(model)}-{preprocess_identity(image_processor)}-{self.device.type}-{precision}"
        layers = vision_layers(unwrap(model))
        if layers is not None:  # CLS tokens of these layers, not the last hidden state
            self.prefix += "-cls" + "_".join(map(str, layers))
        self.memory = _MEMORY.setdefault(self.prefix, OrderedDict())
        self.directory = None if directory is None else Path(directory) / self.prefix
        self.pending: dict[str, torch.Tensor] = {}
        self.stats = {"memory": 0, "disk": 0, "computed": 0}
        self._shards: dict[str, Path] = {}  # digest -> shard file holding it
        self._open: dict[Path, Any] = {}  # shard -> open safetensors handle (its header parsed once)
        if self.directory is not None and self.directory.exists():
            for shard in sorted(self.directory.glob("*.safetensors")):
                for key in self._handle(shard).keys():
                    self._shards.setdefault(key, shard)

    def __call__(self, refs: Sequence[str]) -> torch.Tensor:
        """[len(refs), P+1, Dv] (bottleneck: [len(refs), n_layers, Dv]) on the cache's device."""
        digests = [image_digest(r) for r in refs]
        missing = {d: r for d, r in zip(digests, refs) if self._lookup(d) is None}
        if missing:
            self._compute(list(missing.values()), list(missing))
        return torch.stack([self._lookup(d) for d in digests]).to(self.device)

    def precompute(self, refs: Sequence[str], *, progress: bool = False) -> None:
        """Encode every image not cached yet (in batches), then flush to disk."""
        from tqdm import tqdm  # the terminal bar: in a notebook (no ipywidgets) tqdm.auto only warns

        todo: dict[str, str] = {}
        for r in refs:
            d = image_digest(r)
            if d not in todo and self._lookup(d) is None:
                todo[d] = r
        keys = list(todo)
        for i in tqdm(range(0, len(keys), self.batch_size), desc="vision features", disable=not progress, leave=False):
            chunk = keys[i:i + self.batch_size]
            self._compute([todo[k] for k in chunk], chunk)
            if sum(t.numel() * t.element_size() for t in self.pending.values()) > self.SHARD_BYTES:
                self.flush()
        self.flush()

    def flush(self) -> None:
        if self.directory is None or not self.pending:
            self.pending.clear()
            return
        from safetensors.torch import save_file

        keys = sorted(self.pending)
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        shard = self.directory / f"{name}.safetensors"
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = shard.with_name(f".{shard.name}.{os.getpid()}.tmp")
        save_file({k: self.pending[k].contiguous() for k in keys}, tmp)
        os.replace(tmp, shard)  # atomic: readers see the old state or the whole shard
        for k in keys:
            self._shards[k] = shard
        self.pending.clear()

    # --- internals ---------------------------------------------------------------------------------
    def _lookup(self, digest: str) -> torch.Tensor | None:
        t = self.memory.get(digest)
        if t is not None:
            self.stats["memory"] += 1
            return t
        shard = self._shards.get(digest)
        if shard is None:
            return None
        t = self._handle(shard).get_tensor(digest)
        self.stats["disk"] += 1
        self._remember(digest, t)
        return t

    def _handle(self, shard: Path):
        if shard not in self._open:
            from safetensors import safe_open

            self._open[shard] = safe_open(shard, framework="pt")
        return self._open[shard]

    def _compute(self, refs: list[str], digests: list[str]) -> None:
        pixels = self.image_processor([load_image(r) for r in refs]).to(self.device)
        with self.autocast():
            out = encode_images(self.model, pixels)  # [B, P+1, Dv]
        for d, t in zip(digests, out.detach().cpu()):
            t = t.clone()  # own storage: a view would keep the whole batch alive
            self._remember(d, t)
            self.pending[d] = t
        self.stats["computed"] += len(refs)

    def _remember(self, digest: str, t: torch.Tensor) -> None:
        if digest in self.memory:
            return
        self.memory[digest] = t
        _MEMORY_BYTES[0] += t.numel() * t.element_size()
        while _MEMORY_BYTES[0] > MEMORY_LIMIT and any(_MEMORY.values()):
            store = max(_MEMORY.values(), key=len)  # evict from the largest store, oldest entry first
            _, old = store.popitem(last=False)
            _MEMORY_BYTES[0] -= old.numel() * old.element_size()


def clear_memory() -> None:
    """Forget every in-memory entry (tests and benchmarks measure the uncached path with it)."""
    for store in _MEMORY.values():
        store.clear()
    _MEMORY_BYTES[0] = 0


class ImageEncoder:
    """Examples' image refs -> [B, P+1, Dv] for models.inputs.forward(image_embeds=...).

    Training with augmentation (rng given): crop + flip, then the processor and the ViT, every step.
    Otherwise: the cache when there is one, else the processor and the ViT.
    """

    def __init__(self, model, image_processor, *, device: torch.device | str = "cpu",
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 cache: FeatureCache | None = None, augment: bool = False):
        if cache is not None and augment:
            raise ValueError("augmentation changes the pixels every epoch: it cannot use the feature cache")
        self.model, self.image_processor, self.device = model, image_processor, torch.device(device)
        self.autocast, self.cache, self.augment = autocast, cache, augment

    def __call__(self, refs: Sequence[str], *, rng: random.Random | None = None) -> torch.Tensor:
        if self.cache is not None:
            return self.cache(refs)
        images = [load_image(r) for r in refs]
        if self.augment and rng is not None:
            images = [random_resized_crop_flip(img, rng) for img in images]
        pixels = self.image_processor(images).to(self.device)
        with self.autocast():
            return encode_images(self.model, pixels)

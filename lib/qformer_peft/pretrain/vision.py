"""Stage 1 of an embedded base model: the vision encoder (stands in for EVA-CLIP), alone, on dense labels.

The preset's InstructBLIP vision tower learns from the held-in pictures with dense labels from the scenes side
file: per patch the shape, colour, size class and region (row, column) of the object covering it (or
background), its centre and extent, and its outline inside the patch (4x4 coverage: local edges, the raw
material of shape); the object count from the CLS token. Linear heads, thrown away afterwards, so that every
attribute the benchmarks ask about is linearly readable from the patch tokens. Then frozen for good.
Stages 2 and 3 (language model, Q-Former): stages.py; why each is what it is: docs/embedded-models.md.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic_world import COLOR_NAMES, SHAPES, SIZE_NAMES, object_coverage, patch_labels
from ..models.presets import build_config, get_preset
from .heldin import HeldIn

# per-patch classification targets (class 0 = background, k + 1 = the k-th value) and their class counts
PATCH_ATTRIBUTES = {"shape": len(SHAPES), "color": len(COLOR_NAMES), "size": len(SIZE_NAMES), "row": 3, "col": 3}
GEOMETRY = ("cx", "cy", "extent")  # per-patch regression of the covering object's centre and extent
MAX_COUNT = 9  # the CLS head predicts 0..MAX_COUNT objects
EXTENT_SCALE = 27.0  # the largest object extent in px (synthetic_world.SIZES)
OUTLINE = 4  # outline target: the covering object's coverage on a 4x4 grid inside each patch
# Loss weights, set by measurement on mini: shape is the slowest attribute to learn (colour is read off one
# pixel, shape needs the whole outline), so it weighs 3x; geometry is in fractions of the picture, so 10x.
SHAPE_WEIGHT, GEOMETRY_WEIGHT, OUTLINE_WEIGHT = 3.0, 10.0, 1.0


def load_pixels(paths: list[str], image_processor, batch: int = 512) -> torch.Tensor:
    """[N, 3, H, W] float32, preprocessed as the model sees them."""
    from ..data.records import load_image

    out = [image_processor([load_image(p) for p in paths[i:i + batch]]) for i in range(0, len(paths), batch)]
    return torch.cat(out)


def vision_config(preset: str):
    """The preset's vision tower config (independent of the LLM and of the vocabularies)."""
    return build_config(preset, "t5", llm_vocab_size=8, qformer_vocab_size=8, image_token_index=4).vision_config


def dense_labels(scenes: list[dict], preset: str) -> dict[str, torch.Tensor]:
    """Per-picture labels on the model's patch grid (synthetic_world.patch_labels): attributes and the
    covering object's index [N, G*G] (-1 background), geometry [N, G*G, 3] (cx, cy, extent scaled to
    ~[0, 1]; 0 on background), outline [N, G*G, 16] (coverage in [0, 1]) and count [N]."""
    p = get_preset(preset)
    grid = p.image_size // p.patch_size
    out: dict[str, list] = {k: [] for k in (*PATCH_ATTRIBUTES, "object", "geometry", "outline", "count")}
    for sc in scenes:
        patch = sc["size"] // grid
        if sc["size"] % grid or patch % OUTLINE:
            raise ValueError(f"a {sc['size']} px scene does not split into the model's {grid}x{grid} patch grid "
                             f"with a {OUTLINE}x{OUTLINE} outline per patch")
        labels = patch_labels(sc, patch=patch)
        for k in (*PATCH_ATTRIBUTES, "object"):
            out[k].append(labels[k].reshape(-1))
        owner = labels["object"].reshape(-1)
        geometry = np.zeros((grid * grid, 3), dtype=np.float32)
        outline = np.zeros((grid * grid, OUTLINE * OUTLINE), dtype=np.float32)
        cover = object_coverage(sc)  # [n, size, size]
        cell = patch // OUTLINE
        # [n, G, OUTLINE, G, OUTLINE] mean coverage of each outline cell -> [n, G*G, 16]
        cells = cover.reshape(len(cover), grid, OUTLINE, cell, grid, OUTLINE, cell).mean(axis=(3, 6))
        cells = cells.transpose(0, 1, 3, 2, 4).reshape(len(cover), grid * grid, OUTLINE * OUTLINE)
        for i, obj in enumerate(sc["objects"]):
            geometry[owner == i] = (obj["cx"] / sc["size"], obj["cy"] / sc["size"], obj["extent"] / EXTENT_SCALE)
            outline[owner == i] = cells[i][owner == i]
        out["geometry"].append(geometry)
        out["outline"].append(outline)
        out["count"].append(min(int(labels["count"]), MAX_COUNT))
    return {k: torch.as_tensor(np.stack(v)) if k != "count" else torch.tensor(v) for k, v in out.items()}


def flip_labels(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The labels of the horizontally mirrored pictures (every shape of the world is left-right symmetric)."""
    n, cells = labels["shape"].shape
    grid = math.isqrt(cells)

    def mirror(t):  # [N, G*G, ...] -> columns reversed
        return t.reshape(n, grid, grid, *t.shape[2:]).flip(2).reshape(t.shape)

    out = {k: mirror(labels[k]) for k in (*PATCH_ATTRIBUTES, "object")}
    outline = mirror(labels["outline"])  # and each patch's outline mirrored inside the patch
    out["outline"] = outline.reshape(n, cells, OUTLINE, OUTLINE).flip(-1).reshape(outline.shape)
    out["col"] = torch.where(out["col"] >= 0, 2 - out["col"], out["col"])
    geometry = mirror(labels["geometry"]).clone()
    on_object = out["shape"] >= 0
    geometry[..., 0] = torch.where(on_object, 1 - geometry[..., 0], geometry[..., 0])
    out["geometry"] = geometry
    out["count"] = labels["count"]
    return out


class DenseHeads(nn.Module):
    """Linear read-outs of the post-LayerNorm ViT tokens: per patch attributes and geometry, count from CLS."""

    def __init__(self, hidden: int):
        super().__init__()
        self.attributes = nn.ModuleDict({k: nn.Linear(hidden, n + 1) for k, n in PATCH_ATTRIBUTES.items()})
        self.geometry = nn.Linear(hidden, len(GEOMETRY))
        self.outline = nn.Linear(hidden, OUTLINE * OUTLINE)
        self.count = nn.Linear(hidden, MAX_COUNT + 1)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens [B, 1 + P, D] -> logits per attribute [B, P, n + 1], geometry [B, P, 3], outline logits
        [B, P, 16], count [B, MAX_COUNT + 1]."""
        patches = tokens[:, 1:]
        out = {k: head(patches) for k, head in self.attributes.items()}
        out["geometry"] = self.geometry(patches)
        out["outline"] = self.outline(patches)
        out["count"] = self.count(tokens[:, 0])
        return out


def dense_loss(pred: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted sum of the attribute cross-entropies (background = class 0), the geometry error on object
    patches, the outline's binary cross-entropy (soft targets) and the count cross-entropy."""
    loss = sum((SHAPE_WEIGHT if k == "shape" else 1.0) * F.cross_entropy(pred[k].flatten(0, 1), labels[k].flatten() + 1)
               for k in PATCH_ATTRIBUTES)
    on_object = labels["shape"] >= 0  # [B, P]
    if on_object.any():
        loss = loss + GEOMETRY_WEIGHT * ((pred["geometry"] - labels["geometry"]) ** 2).sum(-1)[on_object].mean()
    loss = loss + OUTLINE_WEIGHT * F.binary_cross_entropy_with_logits(pred["outline"], labels["outline"])
    return loss + F.cross_entropy(pred["count"], labels["count"])


@torch.no_grad()
def vision_quality(vision, heads: DenseHeads, pixels: torch.Tensor, labels: dict[str, torch.Tensor],
                   batch: int = 256) -> dict[str, float]:
    """Held-out attribute accuracy: per attribute on the patches an object covers; per object (shape and
    size by the majority of its patches: what a reader attending to the whole object gets); background vs
    object on all patches; the count from CLS; the mean centre error in px of a 64 px picture."""
    vision.eval()
    hits: dict[str, list[torch.Tensor]] = {k: [] for k in (*PATCH_ATTRIBUTES, "background", "count")}
    objects: dict[str, list[bool]] = {"shape_object": [], "size_object": []}
    centre_err: list[torch.Tensor] = []
    for i in range(0, len(pixels), batch):
        sl = slice(i, i + batch)
        pred = heads(vision(pixel_values=pixels[sl]).last_hidden_state)
        obj = labels["shape"][sl] >= 0
        for k in PATCH_ATTRIBUTES:
            hits[k].append((pred[k].argmax(-1) - 1 == labels[k][sl])[obj])
        hits["background"].append(((pred["shape"].argmax(-1) == 0) == ~obj).flatten())
        hits["count"].append(pred["count"].argmax(-1) == labels["count"][sl])
        err = (pred["geometry"][..., :2] - labels["geometry"][sl][..., :2]).norm(dim=-1)[obj]
        centre_err.append(err * 64)
        owners = labels["object"][sl]
        for k in ("shape", "size"):
            votes = pred[k][..., 1:].argmax(-1)  # [B, P] best non-background class
            for b in range(len(owners)):
                for o in owners[b].unique().tolist():
                    if o < 0:
                        continue
                    mine = owners[b] == o
                    objects[f"{k}_object"].append(int(votes[b][mine].mode().values) == int(labels[k][sl][b][mine][0]))
    out = {f"{k}_acc": round(float(torch.cat(v).float().mean()), 4) for k, v in hits.items()}
    out.update({f"{k}_acc": round(sum(v) / len(v), 4) for k, v in objects.items() if v})
    out["centre_error_px"] = round(float(torch.cat(centre_err).mean()), 3)
    return out


def train_vision(preset: str, heldin: HeldIn, *, epochs: int, batch_size: int, lr: float, flip: bool, seed: int,
                 log: Callable[[str], None] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Stage 1. Returns the vision tower's state dict (embeddings, encoder, post_layernorm) and a report:
    held-out attribute accuracy (vision_quality), the majority-class reference, steps and time."""
    from transformers import InstructBlipVisionModel

    from ..train import adamw, optimizer_update, param_groups
    from ..models.build import ImageProcessor

    say = log or (lambda text: None)
    start = time.perf_counter()
    p = get_preset(preset)
    processor = ImageProcessor.for_size(p.image_size)
    data = {}
    for split in ("train", "val"):
        paths, scenes = zip(*heldin.scenes[split])
        data[split] = (load_pixels(list(paths), processor), dense_labels(list(scenes), preset))
    pixels, labels = data["train"]
    mirrored = (pixels.flip(-1), flip_labels(labels)) if flip else None
    prep_s = time.perf_counter() - start

    torch.manual_seed(seed)
    vision = InstructBlipVisionModel(vision_config(preset))
    heads = DenseHeads(vision.config.hidden_size)
    optimizer = adamw(param_groups(nn.ModuleList([vision, heads]), 0.05), lr)
    n = len(pixels)
    per_epoch = n // batch_size
    total = max(1, per_epoch * epochs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1,
                                                    anneal_strategy="cos")
    generator = torch.Generator().manual_seed(seed)
    step, losses = 0, []
    train_start = time.perf_counter()
    vision.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for b in range(per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            source = mirrored if mirrored is not None and step % 2 else (pixels, labels)
            pred = heads(vision(pixel_values=source[0][idx]).last_hidden_state)
            loss = dense_loss(pred, {k: v[idx] for k, v in source[1].items()})
            loss.backward()
            optimizer_update(optimizer, scheduler)
            step += 1
            losses.append(loss.item())
        say(f"[base] stage 1 epoch {epoch + 1}/{epochs}: loss {np.mean(losses[-per_epoch:]):.3f} "
            f"({time.perf_counter() - train_start:.0f} s)")
    train_s = time.perf_counter() - train_start
    quality = vision_quality(vision, heads, *data["val"])
    quality["majority"] = _majority(data["train"][1], data["val"][1])
    report = {"quality": quality, "steps": step, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "flip": flip,
              "final_loss": round(float(np.mean(losses[-max(1, per_epoch // 4):])), 4) if losses else None,
              "n_train_images": n, "n_val_images": len(data["val"][0]),
              "time_s": {"prepare": round(prep_s, 2), "train": round(train_s, 2),
                         "total": round(time.perf_counter() - start, 2)}}
    say(f"[base] stage 1 held-out: " + ", ".join(f"{k} {v}" for k, v in quality.items() if k != "majority"))
    state = {k: v.detach().clone().contiguous() for k, v in vision.state_dict().items()}
    return state, report


def _majority(train: dict[str, torch.Tensor], val: dict[str, torch.Tensor]) -> dict[str, float]:
    """What always answering the training set's most common value scores (the floor of vision_quality)."""
    out = {}
    for k in PATCH_ATTRIBUTES:
        obj_train, obj_val = train[k][train[k] >= 0], val[k][val[k] >= 0]
        common = int(torch.mode(obj_train).values) if len(obj_train) else 0
        out[f"{k}_acc"] = round(float((obj_val == common).float().mean()), 4) if len(obj_val) else None
    common = int(torch.mode(train["count"]).values)
    out["count_acc"] = round(float((val["count"] == common).float().mean()), 4)
    return out

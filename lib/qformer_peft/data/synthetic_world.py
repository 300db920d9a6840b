"""The synthetic visual world: scenes of simple objects, drawn with PIL at 64x64, with dense labels.

A scene is a plain dict (it is written to scenes.jsonl as is):
    {"size": 64, "background": [r, g, b], "quality": "ok" | "blur" | "dark",
     "objects": [{"shape", "color", "size" (class), "extent" (px), "cx", "cy", "bbox": [x0, y0, x1, y1],
                  "region": "top left" | ... | "center"}, ...]}
Objects are 13-27 px across (a 64-px image cut in 8-px patches sees every object over several patches; a trial
with 3-px objects at 32 px learned colours but never shapes), never overlap, and are drawn at 4x then
box-filtered down, so edges are anti-aliased and the output is a deterministic function of the scene.
`object_coverage` and `patch_labels` turn a scene into per-pixel / per-patch labels for encoder pretraining.
"""
from __future__ import annotations

import math
import random
import re

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

IMAGE_SIZE = 64
SCALE = 4  # supersampling factor for anti-aliased edges

SHAPES = ("circle", "square", "triangle", "star", "diamond")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
                 "diamond": "diamonds"}
COLORS = {  # well separated hues; names are the answer words
    "red": (215, 40, 40), "orange": (240, 140, 30), "yellow": (230, 205, 30),
    "green": (45, 160, 65), "blue": (45, 95, 215), "purple": (135, 60, 185),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": (13, 15), "medium": (18, 20), "large": (24, 27)}  # extent in px, inclusive ranges
SIZE_NAMES = tuple(SIZES)
# Filled area as a fraction of extent**2 (circle pi/4, square 0.85**2, diamond/triangle 1/2, star ~0.33):
# size questions demand a clear gap in BOTH extent and area, so neither reading is ambiguous.
AREA_FACTOR = {"circle": math.pi / 4, "square": 0.7225, "triangle": 0.5, "star": 0.33, "diamond": 0.5}
COLS = ("left", "center", "right")
ROWS = ("top", "middle", "bottom")
REGIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Every text the world writes is split like the embedded tokenizers split it: whitespace, then each ASCII
# punctuation character on its own (models/tokenizers.py: WhitespaceSplit + Punctuation isolated).
WORD_PATTERN = r"[A-Za-z0-9]+|[^\sA-Za-z0-9]"
_WORDS = re.compile(WORD_PATTERN)


def words(text: str) -> list[str]:
    """The tokens of `text` for the closed vocabulary: "(a) red." -> ["(", "a", ")", "red", "."]."""
    return _WORDS.findall(text)


def region_of(cx: float, cy: float, size: int = IMAGE_SIZE) -> str:
    col = COLS[min(2, int(3 * cx / size))]
    row = ROWS[min(2, int(3 * cy / size))]
    if row == "middle":
        return col
    return row if col == "center" else f"{row} {col}"


def area(obj: dict) -> float:
    return AREA_FACTOR[obj["shape"]] * obj["extent"] ** 2


def make_object(shape: str, color: str, size: str, extent: int, cx: int, cy: int) -> dict:
    half = extent / 2
    return {"shape": shape, "color": color, "size": size, "extent": extent, "cx": cx, "cy": cy,
            "bbox": [round(cx - half), round(cy - half), round(cx + half), round(cy + half)],
            "region": region_of(cx, cy)}


def sample_extent(rng: random.Random, size: str) -> int:
    lo, hi = SIZES[size]
    return rng.randint(lo, hi)


def place(rng: random.Random, specs: list[tuple[str, str, str, int]], *, margin: int = 2,
          tries: int = 400) -> list[dict] | None:
    """Put objects (shape, color, size class, extent) at random non-overlapping spots; None if they do not fit."""
    result: list[dict | None] = [None] * len(specs)  # in the caller's order
    for i in sorted(range(len(specs)), key=lambda i: -specs[i][3]):  # big first: fits more often
        shape, color, size, extent = specs[i]
        half = extent / 2
        lo, hi = math.ceil(half) + 1, IMAGE_SIZE - math.ceil(half) - 1
        placed = [o for o in result if o is not None]
        for _ in range(tries):
            cx, cy = rng.randint(lo, hi), rng.randint(lo, hi)
            if all(abs(cx - o["cx"]) >= half + o["extent"] / 2 + margin or
                   abs(cy - o["cy"]) >= half + o["extent"] / 2 + margin for o in placed):
                result[i] = make_object(shape, color, size, extent, cx, cy)
                break
        else:
            return None
    return result  # type: ignore[return-value]


def scene(objects: list[dict], rng: random.Random, quality: str = "ok") -> dict:
    """Wrap objects with a light, slightly tinted background (never close to any object colour)."""
    background = [rng.randint(228, 255) for _ in range(3)]
    return {"size": IMAGE_SIZE, "background": background, "quality": quality, "objects": objects}


def random_scene(rng: random.Random, n: int, *, distinct_shapes: bool = False, distinct_colors: bool = False,
                 sizes: tuple[str, ...] = SIZE_NAMES) -> dict:
    """n random objects; retries with smaller sizes until they fit."""
    for attempt in range(50):
        allowed = sizes if attempt < 20 else ("small",)
        shapes = rng.sample(SHAPES, n) if distinct_shapes else [rng.choice(SHAPES) for _ in range(n)]
        colors = rng.sample(COLOR_NAMES, n) if distinct_colors else [rng.choice(COLOR_NAMES) for _ in range(n)]
        specs = []
        for shape, color in zip(shapes, colors):
            size = rng.choice(allowed)
            specs.append((shape, color, size, sample_extent(rng, size)))
        objects = place(rng, specs)
        if objects is not None:
            return scene(objects, rng)
    raise RuntimeError(f"cannot place {n} objects in {IMAGE_SIZE} px")  # pragma: no cover - n <= 6 always fits


def row_scene(rng: random.Random, shapes: list[str], colors: list[str]) -> dict:
    """Objects in one horizontal row, left to right (pattern questions)."""
    n = len(shapes)
    extent = 13 if n >= 4 else 15
    gap = (IMAGE_SIZE - n * extent) / (n + 1)
    cy = rng.randint(20, 44)
    objects = [make_object(s, c, "small", extent, round(gap + extent / 2 + i * (extent + gap)), cy)
               for i, (s, c) in enumerate(zip(shapes, colors))]
    return scene(objects, rng)


def weighted(rng: random.Random, weights: dict[str, int]) -> str:
    """A key of `weights`, drawn with probability proportional to its value."""
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def clearly_bigger(x: dict, y: dict) -> bool:
    """x is bigger than y by 30% in extent AND in filled area (no doubt for a viewer or a label)."""
    return x["extent"] >= 1.3 * y["extent"] and area(x) >= 1.3 * area(y)


def views(sc: dict | None) -> dict:
    """What partial-image rules may see: the colors present, the shapes present, the number of objects."""
    if sc is None:
        return {"colors": [], "shapes": [], "n_objects": 0}
    objs = sc["objects"]
    return {"colors": sorted({o["color"] for o in objs}), "shapes": sorted({o["shape"] for o in objs}),
            "n_objects": len(objs)}


# ----------------------------------------------------------------------------------------------- drawing

def _polygon(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]] | None:
    r = extent / 2
    if shape == "triangle":  # base = height = extent
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":  # five points, inner radius 0.45 of the outer
        pts = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + 0.1 * r))
        return pts
    return None


def _draw(draw: ImageDraw.ImageDraw, obj: dict, fill) -> None:
    cx, cy, e = obj["cx"] * SCALE, obj["cy"] * SCALE, obj["extent"] * SCALE
    if obj["shape"] == "circle":
        draw.ellipse([cx - e / 2, cy - e / 2, cx + e / 2, cy + e / 2], fill=fill)
    elif obj["shape"] == "square":
        h = 0.85 * e / 2
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon(_polygon(obj["shape"], cx, cy, e), fill=fill)


def render(sc: dict) -> Image.Image:
    """The scene as a 64x64 RGB image."""
    big = Image.new("RGB", (sc["size"] * SCALE,) * 2, tuple(sc["background"]))
    draw = ImageDraw.Draw(big)
    for obj in sc["objects"]:
        _draw(draw, obj, COLORS[obj["color"]])
    img = big.resize((sc["size"],) * 2, Image.Resampling.BOX)
    if sc.get("quality") == "blur":
        img = img.filter(ImageFilter.GaussianBlur(radius=6))
    elif sc.get("quality") == "dark":
        img = ImageEnhance.Brightness(img).enhance(0.1)
    return img


def object_coverage(sc: dict) -> np.ndarray:
    """Per-object pixel coverage in [0, 1]: float32 array (n_objects, size, size)."""
    out = np.zeros((len(sc["objects"]), sc["size"], sc["size"]), dtype=np.float32)
    for i, obj in enumerate(sc["objects"]):
        big = Image.new("L", (sc["size"] * SCALE,) * 2, 0)
        _draw(ImageDraw.Draw(big), obj, 255)
        out[i] = np.asarray(big.resize((sc["size"],) * 2, Image.Resampling.BOX), dtype=np.float32) / 255.0
    return out


def patch_labels(sc: dict, patch: int = 8, min_cover: float = 0.15) -> dict[str, np.ndarray]:
    """Dense labels per patch for encoder pretraining: int64 arrays (grid, grid), -1 = background.

    A patch belongs to the object covering most of it, if that object covers at least `min_cover` of it.
    Keys: "object" (index into objects), "shape", "color", "size" (indices into SHAPES / COLOR_NAMES /
    SIZE_NAMES), "row" and "col" (the object's region, 0-2; position labels), plus "count" (0-d array).
    """
    grid = sc["size"] // patch
    cover = object_coverage(sc)  # (n, size, size)
    labels = {k: np.full((grid, grid), -1, dtype=np.int64) for k in ("object", "shape", "color", "size", "row",
                                                                      "col")}
    if len(sc["objects"]):
        per_patch = cover.reshape(len(cover), grid, patch, grid, patch).mean(axis=(2, 4))  # (n, grid, grid)
        best = per_patch.argmax(axis=0)
        hit = per_patch.max(axis=0) >= min_cover
        for i, obj in enumerate(sc["objects"]):
            mask = hit & (best == i)
            labels["object"][mask] = i
            labels["shape"][mask] = SHAPES.index(obj["shape"])
            labels["color"][mask] = COLOR_NAMES.index(obj["color"])
            labels["size"][mask] = SIZE_NAMES.index(obj["size"])
            labels["row"][mask] = min(2, int(3 * obj["cy"] / sc["size"]))
            labels["col"][mask] = min(2, int(3 * obj["cx"] / sc["size"]))
    labels["count"] = np.array(len(sc["objects"]), dtype=np.int64)
    return labels

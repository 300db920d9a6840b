"""Flickr30k loader, Karpathy split.

    ROOT/dataset_flickr30k.json   {"images": [{filename, imgid, split, sentids, sentences: [{raw, tokens, imgid,
                                   sentid}] x 5}], "dataset": "flickr30k"}
    ROOT/flickr30k-images/{filename}   (also accepted: ROOT/images/, ROOT/)
One record per image, id = the file name without extension, `answers` = the raw captions in file order.
Karpathy's "restval" images (a COCO convention some copies carry) are loaded as train, as is customary;
`meta["karpathy_split"]` keeps the original label.
"""
from __future__ import annotations

from pathlib import Path

from .records import Collector, DataError, Loaded, Problem, Record, check_split, read_json

SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_FIX_ROOT = "point --root at the folder holding dataset_flickr30k.json and flickr30k-images/"


def load(root: str | Path, split: str, *, skip_bad: bool = False, img_only: bool = True) -> Loaded:
    root = Path(root)
    check_split(split, "flickr30k")
    ann_file = root / "dataset_flickr30k.json"
    data = read_json(ann_file, _FIX_ROOT)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(Problem(str(ann_file), None, "no 'images' list (not a Karpathy split file)", _FIX_ROOT))
    image_dirs = [root / "flickr30k-images", root / "images", root]
    report = Collector(skip_bad)
    records: list[Record] = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            report(ann_file, f"#{i}", "image entry is not an object", "restore the entry")
            continue
        name = entry.get("filename")
        pid = Path(name).stem if isinstance(name, str) else f"#{i}"
        raw_split = entry.get("split")
        if raw_split not in SPLIT_OF:
            report(ann_file, pid, f"unknown split {raw_split!r}", "split must be train, restval, val or test")
            continue
        if SPLIT_OF[raw_split] != split:
            continue
        if not isinstance(name, str):
            report(ann_file, pid, "no 'filename'", "restore the entry's filename")
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences or not all(
                isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences):
            report(ann_file, pid, "no captions ('sentences' must be a non-empty list of {raw, tokens})",
                   "restore the image's sentences")
            continue
        image = next((d / name for d in image_dirs if (d / name).is_file()), None)
        if image is None:
            report(image_dirs[0] / name, pid, "image file missing", "extract the Flickr30k images into "
                   "ROOT/flickr30k-images/")
            continue
        meta = {"imgid": entry.get("imgid"), "filename": name, "karpathy_split": raw_split}
        records.append(Record(id=pid, dataset="flickr30k", split=split, image=str(image), question="",
                              answers=tuple(s["raw"] for s in sentences), meta=meta))
    return Loaded(records, report.problems)

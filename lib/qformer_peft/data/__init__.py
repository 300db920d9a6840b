"""The four benchmarks, read from their real on-disk layouts into one `Record` type.

    from qformer_peft.data import load
    loaded = load("iconqa", "/data/IconQA", "train")          # strict: the first bad record raises DataError
    loaded = load("scienceqa", root, "test", skip_bad=True)   # skip bad records, list them in loaded.problems

Splits are "train", "val" and "test" for every benchmark (IconQA's choose_txt_train etc.; Flickr30k's Karpathy
"restval" counts as train). `synthetic` writes the embedded benchmarks in exactly these layouts.
"""
from __future__ import annotations

from pathlib import Path

from . import flickr30k, iconqa, scienceqa, vizwiz
from .records import DATASETS, SPLITS, DataError, Loaded, Problem, Record, load_image

LOADERS = {"scienceqa": scienceqa.load, "iconqa": iconqa.load, "vizwiz": vizwiz.load, "flickr30k": flickr30k.load}

__all__ = ["DATASETS", "SPLITS", "DataError", "Loaded", "Problem", "Record", "load", "load_image", "LOADERS"]


def load(dataset: str, root: str | Path, split: str, *, skip_bad: bool = False, img_only: bool = True) -> Loaded:
    """Read one split of one benchmark. img_only matters for ScienceQA only (True keeps the IMG subset)."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    return LOADERS[dataset](root, split, skip_bad=skip_bad, img_only=img_only)

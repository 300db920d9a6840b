"""VizWiz VQA loader, layout as distributed (Annotations.zip + train.zip / val.zip / test.zip).

    ROOT/Annotations/{train,val,test}.json   a list of {image, question, answers: [{answer, answer_confidence}] x 10,
                                              answer_type, answerable}; the official test file has no answers
    ROOT/{train,val,test}/VizWiz_{split}_00000000.jpg
Images are also looked for in ROOT/images/{split}/ and ROOT/Images/. The record id is the image name without
extension (VizWiz has one question per image); `answers` holds the 10 human answers, empty when absent.
"""
from __future__ import annotations

from pathlib import Path

from .records import Collector, DataError, Loaded, Problem, Record, check_split, read_json

_FIX_ROOT = "point --root at the folder holding Annotations/{split}.json and the image folders train/ val/ test/"


def annotation_file(root: Path, split: str) -> Path:
    for candidate in (root / "Annotations" / f"{split}.json", root / f"{split}.json"):
        if candidate.exists():
            return candidate
    return root / "Annotations" / f"{split}.json"


def load(root: str | Path, split: str, *, skip_bad: bool = False, img_only: bool = True) -> Loaded:
    root = Path(root)
    check_split(split, "vizwiz")
    ann_file = annotation_file(root, split)
    entries = read_json(ann_file, _FIX_ROOT)
    if not isinstance(entries, list):
        raise DataError(Problem(str(ann_file), None, "top level is not a list of questions", _FIX_ROOT))
    image_dirs = [root / split, root / "images" / split, root / "Images"]
    report = Collector(skip_bad)
    records: list[Record] = []
    for i, entry in enumerate(entries):
        name = entry.get("image") if isinstance(entry, dict) else None
        pid = Path(name).stem if isinstance(name, str) else f"#{i}"
        if not isinstance(name, str) or not isinstance(entry.get("question"), str):
            report(ann_file, pid, f"entry {i} lacks an 'image' or 'question' string", "restore the entry's fields")
            continue
        raw_answers = entry.get("answers", [])
        if not isinstance(raw_answers, list) or not all(isinstance(a, dict) and isinstance(a.get("answer"), str)
                                                        for a in raw_answers):
            report(ann_file, pid, "'answers' is not a list of {answer, answer_confidence}", "restore the entry")
            continue
        image = next((d / name for d in image_dirs if (d / name).is_file()), None)
        if image is None:
            report(image_dirs[0] / name, pid, "image file missing", f"extract {split}.zip into ROOT/{split}/")
            continue
        meta = {"answerable": entry.get("answerable"), "answer_type": entry.get("answer_type", ""),
                "answer_confidence": tuple(a.get("answer_confidence", "") for a in raw_answers)}
        records.append(Record(id=pid, dataset="vizwiz", split=split, image=str(image), question=entry["question"],
                              answers=tuple(a["answer"] for a in raw_answers), meta=meta))
    return Loaded(records, report.problems)

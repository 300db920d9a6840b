"""ScienceQA loader: the repository layout (problems.json, pid_splits.json, images/) or the HF parquet export.

Repository layout (github lupantech/ScienceQA, data/scienceqa):
    ROOT/problems.json      {pid: {question, choices, answer, hint, image, task, grade, subject, topic,
                                   category, skill, lecture, solution, split}}
    ROOT/pid_splits.json    {"train": [pid, ...], "val": [...], "test": [...], "minitrain": ..., ...}
    ROOT/images/{split}/{pid}/image.png     for problems whose "image" is "image.png" (null: no image)
Hugging Face export (e.g. derek-thomas/ScienceQA): one parquet file per split with the same fields and the
image as inline bytes, named {train,validation,test}-*.parquet directly in ROOT or in ROOT/data; it has no
pid, so ids are "{split}-{row}". Reading parquet needs pyarrow (or fastparquet).

The study keeps the IMG subset (problems with an image); img_only=False keeps all. `meta["categories"]`
lists the official evaluator's groups each problem counts in: NAT/SOC/LAN (subject), TXT (non-empty hint),
IMG (has image), NO (neither), G1-6 / G7-12 (grade).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import Collector, Loaded, Record, check_choices, check_split, \
    listed_problems, parquet_image_ref, read_parquet

SUBJECT_CODES = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
PARQUET_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
_FIX_ROOT = ("point --root at the folder holding problems.json, pid_splits.json and images/ "
             "(ScienceQA repository: data/scienceqa), or at the Hugging Face parquet files")


def categories(subject: str, has_hint: bool, has_image: bool, grade: str) -> tuple[str, ...]:
    """The official evaluator's category labels for one problem."""
    cats = [SUBJECT_CODES.get(subject, subject)]
    if has_hint:
        cats.append("TXT")
    if has_image:
        cats.append("IMG")
    if not has_hint and not has_image:
        cats.append("NO")
    digits = "".join(ch for ch in str(grade) if ch.isdigit())
    if digits:
        cats.append("G1-6" if int(digits) <= 6 else "G7-12")
    return tuple(cats)


def _record(pid: str, split: str, prob: dict, image: str | None, has_image: bool) -> Record:
    hint = prob.get("hint") or ""
    subject = prob.get("subject", "")
    grade = prob.get("grade", "")
    meta = {
        "subject": subject, "grade": grade, "topic": prob.get("topic", ""),
        "category": prob.get("category", ""), "skill": prob.get("skill", ""), "task": prob.get("task", ""),
        "solution": prob.get("solution", ""),
        "has_hint": bool(hint.strip()), "has_image": has_image,
        "no_context": not hint.strip() and not has_image,
        "categories": categories(subject, bool(hint.strip()), has_image, grade),
    }
    return Record(id=pid, dataset="scienceqa", split=split, image=image, question=prob.get("question", ""),
                  choices=tuple(prob["choices"]), answer=int(prob["answer"]), context=hint,
                  lecture=prob.get("lecture") or "", meta=meta)


def _parquet_files(root: Path, split: str) -> list[Path]:
    found: list[Path] = []
    for folder in (root, root / "data"):
        for name in PARQUET_SPLIT_NAMES[split]:
            found += sorted(folder.glob(f"{name}-*.parquet")) + sorted(folder.glob(f"{name}.parquet"))
        if found:
            break
    return found


def load(root: str | Path, split: str, *, skip_bad: bool = False, img_only: bool = True) -> Loaded:
    root = Path(root)
    check_split(split, "scienceqa")
    if not (root / "problems.json").exists() and _parquet_files(root, split):
        return _load_parquet(root, split, skip_bad=skip_bad, img_only=img_only)
    problems_file, splits_file = root / "problems.json", root / "pid_splits.json"
    report = Collector(skip_bad)
    records: list[Record] = []
    for pid, prob in listed_problems(problems_file, splits_file, split, report, fix_root=_FIX_ROOT,
                                     splits_fix="pid_splits.json must map 'train', 'val' and 'test' to lists of pids"):
        if not check_choices(report, problems_file, pid, prob.get("choices"), prob.get("answer")):
            continue
        image_name = prob.get("image")
        if not image_name:
            if not img_only:
                records.append(_record(pid, split, prob, None, False))
            continue
        # Images live under the problem's own split folder (its "split" field), as distributed.
        image = root / "images" / str(prob.get("split") or split) / pid / str(image_name)
        if not image.is_file():
            report(image, pid, "image file missing", "extract the ScienceQA images (train.zip, val.zip, test.zip) "
                   "into ROOT/images/")
            continue
        records.append(_record(pid, split, prob, str(image), True))
    return Loaded(records, report.problems)


def _load_parquet(root: Path, split: str, *, skip_bad: bool, img_only: bool) -> Loaded:
    report = Collector(skip_bad)
    records: list[Record] = []
    offset = 0  # ids count rows across the split's files (the export has no pid)
    for file in _parquet_files(root, split):
        frame = read_parquet(file)
        has_image_col = "image" in frame.columns
        for row, prob in enumerate(frame.drop(columns=["image"], errors="ignore").to_dict("records")):
            pid = f"{split}-{offset + row}"
            prob = {k: _plain(v) for k, v in prob.items()}
            if not isinstance(prob.get("question"), str):
                report(file, pid, f"row {row} has no 'question' string", "re-download the parquet export")
                continue
            if not check_choices(report, file, pid, prob.get("choices"), prob.get("answer")):
                continue
            cell = frame["image"].iloc[row] if has_image_col else None
            has_image = bool(cell.get("bytes")) if isinstance(cell, dict) else bool(cell)
            if not has_image:
                if not img_only:
                    records.append(_record(pid, split, prob, None, False))
                continue
            records.append(_record(pid, split, prob, parquet_image_ref(file, row), True))
        offset += len(frame)
    return Loaded(records, report.problems)


def _plain(value: Any) -> Any:
    """numpy scalars / arrays from parquet -> Python ints / lists, so validation treats them like JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value

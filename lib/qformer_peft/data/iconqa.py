"""IconQA loader, multi-text-choice sub-task (choose_txt) only, from the distributed layout.

    ROOT/iconqa_data/problems.json     {pid: {question, choices, answer, ques_type, grade, ...}}
    ROOT/iconqa_data/pid_splits.json   {"choose_txt_train": [pid, ...], "choose_txt_val": ..., "choose_txt_test": ...}
    ROOT/iconqa_data/pid2skills.json   optional: {pid: ["counting", ...]} (skill accuracies)
    ROOT/iconqa_data/iconqa/{split}/choose_txt/{pid}/image.png
ROOT may also be the iconqa_data folder itself.
"""
from __future__ import annotations

from pathlib import Path

from .records import Collector, Loaded, Record, check_choices, check_split, listed_problems, read_json

TASK = "choose_txt"
_FIX_ROOT = "point --root at the folder that holds iconqa_data/ (problems.json, pid_splits.json, iconqa/)"


def data_dir(root: str | Path) -> Path:
    root = Path(root)
    return root if (root / "problems.json").exists() and not (root / "iconqa_data").exists() else root / "iconqa_data"


def load(root: str | Path, split: str, *, skip_bad: bool = False, img_only: bool = True) -> Loaded:
    check_split(split, "iconqa")
    data = data_dir(root)
    problems_file, splits_file = data / "problems.json", data / "pid_splits.json"
    key = f"{TASK}_{split}"
    skills_file = data / "pid2skills.json"
    skills = read_json(skills_file, "") if skills_file.exists() else {}
    report = Collector(skip_bad)
    records: list[Record] = []
    for pid, prob in listed_problems(problems_file, splits_file, key, report, fix_root=_FIX_ROOT,
                                     splits_fix=f"pid_splits.json must hold {TASK}_train, {TASK}_val and {TASK}_test"):
        if prob.get("ques_type", TASK) != TASK:
            report(problems_file, pid, f"ques_type is {prob.get('ques_type')!r}, not {TASK!r}",
                   f"list only {TASK} problems under {key}")
            continue
        if not check_choices(report, problems_file, pid, prob.get("choices"), prob.get("answer")):
            continue
        image = data / "iconqa" / split / TASK / pid / "image.png"
        if not image.is_file():
            report(image, pid, "image file missing", "extract iconqa_data.zip completely into ROOT")
            continue
        meta = {"ques_type": TASK, "grade": prob.get("grade", ""), "skills": tuple(skills.get(pid, ())),
                "n_choices": len(prob["choices"])}
        records.append(Record(id=pid, dataset="iconqa", split=split, image=str(image), question=prob["question"],
                              choices=tuple(prob["choices"]), answer=int(prob["answer"]), meta=meta))
    return Loaded(records, report.problems)

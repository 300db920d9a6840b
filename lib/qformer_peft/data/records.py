"""One record type for the four benchmarks, the problems a loader can find, and image reading.

Every loader turns its benchmark's real on-disk layout into `Record`s and reports anything wrong as a
`Problem` (file, pid, what is wrong, how to fix it). In strict mode the first per-record problem raises
`DataError`; with skip_bad=True the loader skips such records and returns the problems instead.
Problems that make a whole file unusable (missing, malformed JSON, a missing split key) always raise.

Images stay on disk: `Record.image` is a path string, or, for the Hugging Face parquet export of
ScienceQA whose images are inline bytes, "<file>.parquet::<row>". `load_image` reads either; the
parquet column is read once per file and kept (one file at a time), so records stay light.
"""
from __future__ import annotations

import functools
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from PIL import Image

DATASETS = ("scienceqa", "iconqa", "vizwiz", "flickr30k")
SPLITS = ("train", "val", "test")
MAX_CHOICES = 26  # options are lettered (a)..(z)


@dataclass(frozen=True)
class Record:
    """One benchmark item. `meta` is a plain dict (picklable for data-loader workers); do not mutate it."""

    id: str
    dataset: str
    split: str
    image: str | None  # path, "<file>.parquet::<row>", or None (ScienceQA problems without image)
    question: str
    choices: tuple[str, ...] = ()  # empty for open-ended sets
    answer: int | None = None  # index into choices; None for open-ended sets
    answers: tuple[str, ...] = ()  # VizWiz: the 10 human answers; Flickr30k: the captions
    context: str = ""  # ScienceQA hint
    lecture: str = ""  # ScienceQA lecture
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file or one record: where, what, and the fix."""

    file: str
    pid: str | None
    what: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}" + (f" [pid {self.pid}]" if self.pid is not None else "")
        return f"{where}: {self.what}" + (f". Fix: {self.fix}" if self.fix else "")


class DataError(Exception):
    """A benchmark file or record is unusable; the message names the file, the pid, the problem and the fix."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class Loaded:
    """What a loader returns: the usable records and the problems of the records it skipped."""

    records: list[Record]
    problems: list[Problem]


class Collector:
    """Strict mode raises on the first record problem; skip-bad mode keeps them for the report."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.problems: list[Problem] = []

    def __call__(self, file: Path | str, pid: Any, what: str, fix: str = "") -> None:
        problem = Problem(str(file), None if pid is None else str(pid), what, fix)
        if not self.skip_bad:
            raise DataError(problem)
        self.problems.append(problem)


def read_json(path: Path, fix: str) -> Any:
    """json.load with errors that say which file, where in it, and what to do."""
    if not path.is_file():
        raise DataError(Problem(str(path), None, "file not found", fix))
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(Problem(str(path), None, f"malformed JSON at line {err.lineno}, column {err.colno}: "
                                f"{err.msg}", "re-download or re-extract the file; it must be valid JSON")) from err
    except UnicodeDecodeError as err:
        raise DataError(Problem(str(path), None, f"not UTF-8 text ({err.reason} at byte {err.start})",
                                "re-download the file")) from err


def listed_problems(problems_file: Path, splits_file: Path, key: str, report: Collector, *, fix_root: str,
                    splits_fix: str):
    """(pid, problem) for each pid of pid_splits.json[key] that problems.json holds with a question string.

    The ScienceQA/IconQA layout: a problems.json keyed by pid and a pid_splits.json of pid lists. A file that
    cannot describe the split raises; a bad record is reported (or skipped and counted) and left out.
    """
    problems, splits = read_json(problems_file, fix_root), read_json(splits_file, fix_root)
    if not isinstance(problems, dict):
        raise DataError(Problem(str(problems_file), None, "top level is not an object keyed by pid", fix_root))
    if not isinstance(splits, dict) or key not in splits:
        raise DataError(Problem(str(splits_file), None, f"no {key!r} list of pids", splits_fix))
    for pid in splits[key]:
        pid = str(pid)
        prob = problems.get(pid)
        if prob is None:
            report(splits_file, pid, f"listed in pid_splits.json[{key!r}] but absent from problems.json",
                   "use the problems.json and pid_splits.json of the same release")
        elif not isinstance(prob, dict) or not isinstance(prob.get("question"), str):
            report(problems_file, pid, "problem has no 'question' string", "restore the problem's fields")
        else:
            yield pid, prob


def check_choices(report: Collector, file: Path, pid: str, choices: Any, answer: Any) -> bool:
    """Validate a multiple-choice item; report and return False when it cannot be used."""
    if not isinstance(choices, (list, tuple)) or len(choices) == 0:
        report(file, pid, "empty choices", "every multiple-choice problem needs at least one option")
        return False
    if len(choices) > MAX_CHOICES:
        report(file, pid, f"{len(choices)} choices, more than the {MAX_CHOICES} letters (a)-(z)",
               "drop this problem (skip_bad=True) or shorten its option list")
        return False
    if not all(isinstance(c, str) for c in choices):
        report(file, pid, "a choice is not a string", "choices must be a list of strings")
        return False
    if isinstance(answer, bool) or not isinstance(answer, int):
        report(file, pid, f"answer {answer!r} is not an integer index", "answer must be the 0-based index of the "
               "correct choice")
        return False
    if not 0 <= answer < len(choices):
        report(file, pid, f"answer index {answer} out of range for {len(choices)} choices",
               f"answer must be between 0 and {len(choices) - 1}")
        return False
    return True


def check_split(split: str, dataset: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"{dataset}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


_PARQUET_ROW = re.compile(r"^(?P<file>.+\.parquet)::(?P<row>\d+)$")


def parquet_image_ref(file: Path, row: int) -> str:
    return f"{file}::{row}"


def read_parquet(path: Path, columns: list[str] | None = None):
    """pandas.read_parquet with a clear error when no parquet engine is installed."""
    import pandas as pd

    try:
        return pd.read_parquet(path, columns=columns)
    except ImportError as err:
        raise DataError(Problem(str(path), None, f"cannot read parquet: {err}",
                                "pip install pyarrow (or use the repository layout with problems.json)")) from err


@functools.lru_cache(maxsize=1)
def _parquet_images(file: str) -> list:
    # One file's image column; kept while consecutive reads hit the same split file.
    return list(read_parquet(Path(file), columns=["image"])["image"])


def load_image(record_or_path: Record | str) -> Image.Image:
    """The record's image as an RGB PIL image (from a file or from inline parquet bytes)."""
    ref = record_or_path.image if isinstance(record_or_path, Record) else record_or_path
    if ref is None:
        rid = record_or_path.id if isinstance(record_or_path, Record) else "?"
        raise DataError(Problem("<record>", rid, "this record has no image",
                                "load with img_only=True, or do not ask for its image"))
    match = _PARQUET_ROW.match(ref)
    if match:
        cell = _parquet_images(match["file"])[int(match["row"])]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise DataError(Problem(match["file"], match["row"], "no image bytes in this row",
                                    "re-download the parquet export"))
        return Image.open(io.BytesIO(data)).convert("RGB")
    with Image.open(ref) as img:
        return img.convert("RGB")

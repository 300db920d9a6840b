"""Write the synthetic world's benchmarks in exactly the real on-disk formats, plus the held-in tasks.

    synthesize(out, size="smoke" | "mini", seed=0) writes
      out/scienceqa/   problems.json, pid_splits.json, images/{split}/{pid}/image.png  (+ problems without image)
      out/iconqa/      iconqa_data/{problems.json, pid_splits.json, pid2skills.json, iconqa/{split}/choose_txt/{pid}/image.png}
      out/vizwiz/      Annotations/{train,val,test}.json, {train,val,test}/VizWiz_{split}_{i:08d}.jpg
      out/flickr30k/   dataset_flickr30k.json, flickr30k-images/{id}.jpg
      out/heldin/      {train,val}.jsonl ({image: path relative to out/heldin, task: caption | vqa, qtype, prompt,
                       answer}), images/{split}/{i:06d}.png, text_{train,val}.txt (the world's facts, for the LM)
      out/scenes.jsonl one line per image: {image: path relative to out, benchmark, split, id, qtype, scene}
                       (objects with shape, color, size class, extent, centre, bbox, region: dense labels)
      out/vocab.txt    every token of every prompt, target, caption, lecture and option (closed vocabulary)
      out/synth.json   version, size, seed, complete (false while writing), counts
Each benchmark folder is a valid --root for its loader; side files sit outside them. Same (size, seed, version):
same bytes (no timestamps anywhere). The held-in images are separate draws from the benchmarks' and the held-in
questions use other phrasings (data/synthetic_questions.py), so base models never see a benchmark item.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

from .records import Record
from .synthetic_open import flickr_item, heldin_image, vizwiz_item
from .synthetic_questions import iconqa_item, scienceqa_item
from .synthetic_text import FILL_WORDS, PHRASE_BANKS, knowledge_sentences
from .synthetic_world import render, words

SYNTH_VERSION = "1"  # bump when the generated data changes, so cached base models are rebuilt
BENCHMARKS = ("scienceqa", "iconqa", "vizwiz", "flickr30k")
# items per split (train, val, test); held-in: pictures per split (train, val), each with 1 caption + 2 questions
SIZES = {
    "tiny": {"iconqa": (24, 8, 8), "scienceqa": (24, 8, 8), "vizwiz": (16, 6, 6), "flickr30k": (10, 4, 4),
             "heldin": (30, 10)},  # for tests
    "smoke": {"iconqa": (240, 60, 60), "scienceqa": (200, 50, 50), "vizwiz": (120, 40, 40),
              "flickr30k": (80, 20, 20), "heldin": (500, 100)},
    "mini": {"iconqa": (3000, 300, 1000), "scienceqa": (2000, 300, 1000), "vizwiz": (1500, 300, 300),
             "flickr30k": (1000, 200, 200), "heldin": (6000, 600)},
}
SCIENCEQA_NO_IMAGE = 0.12  # extra problems without a picture (the NO / TXT-only part of ScienceQA)
SPLITS = ("train", "val", "test")
HELDIN_SPLITS = ("train", "val")


def _rng(seed: int, *parts: str) -> random.Random:
    # String seeds hash with SHA-512 inside random, independent of PYTHONHASHSEED.
    return random.Random("/".join(("qformer-peft-synth", SYNTH_VERSION, str(seed)) + parts))


def build_items(size: str, seed: int, benchmarks: tuple[str, ...] = BENCHMARKS + ("heldin",)) -> dict:
    """All items as dicts, no pixels: {benchmark: {split: [item, ...]}}. Fast; tests and analyses use it."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {', '.join(SIZES)}")
    spec = SIZES[size]
    out: dict[str, dict[str, list[dict]]] = {}
    for bench in benchmarks:
        out[bench] = {}
        splits = HELDIN_SPLITS if bench == "heldin" else SPLITS
        for split, n in zip(splits, spec[bench]):
            rng = _rng(seed, bench, split)
            if bench == "iconqa":
                items = [iconqa_item(rng) for _ in range(n)]
            elif bench == "scienceqa":
                items = [scienceqa_item(rng) for _ in range(n)]
                items += [scienceqa_item(rng, with_image=False) for _ in range(round(SCIENCEQA_NO_IMAGE * n))]
                rng.shuffle(items)
            elif bench == "vizwiz":
                items = [vizwiz_item(rng) for _ in range(n)]
            elif bench == "flickr30k":
                items = [flickr_item(rng) for _ in range(n)]
            else:
                items = [heldin_image(rng) for _ in range(n)]
            out[bench][split] = items
    return out


def vocabulary() -> list[str]:
    """The closed vocabulary (sorted tokens) of everything the world writes, computed without generating data."""
    from ..templates import prompt  # late import: templates imports data.records

    texts: list[str] = []

    def collect(value) -> None:
        if isinstance(value, str):
            texts.append(re.sub(r"\{[A-Za-z0-9_]+\}", " ", value))  # drop {placeholders}
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, (tuple, list)):
            for v in value:
                collect(v)

    collect(PHRASE_BANKS)
    texts += list(FILL_WORDS) + [w[:1].upper() + w[1:] for w in FILL_WORDS]
    texts += [f"({letter})" for letter in "abcdefghijklmnopqrstuvwxyz"]  # option labels
    for dataset in BENCHMARKS:  # the templates' own words and punctuation
        texts.append(prompt(Record(id="", dataset=dataset, split="train", image=None, question="")))
    return sorted({tok for text in texts for tok in words(text)})


def load_scenes(out: str | Path) -> dict[str, dict]:
    """scenes.jsonl as {image path relative to out: line}, e.g. lines["iconqa/iconqa_data/iconqa/train/..."]."""
    lines = {}
    with open(Path(out) / "scenes.jsonl", encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            lines[entry["image"]] = entry
    return lines


def question_types(out: str | Path) -> dict[tuple[str, str], str]:
    """{(benchmark, record id): question type} for per-type accuracies (held-in pictures excluded)."""
    return {(e["benchmark"], e["id"]): e["qtype"] for e in load_scenes(out).values() if e["benchmark"] != "heldin"}


def scene_key(out: str | Path, image_path: str | Path) -> str:
    """The scenes.jsonl key of a record's image path."""
    return Path(image_path).resolve().relative_to(Path(out).resolve()).as_posix()


# ------------------------------------------------------------------------------------------------ writing

def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=None, separators=(",", ":"))


def _save(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, format="JPEG", quality=95, subsampling=0)
    else:
        img.save(path, format="PNG", compress_level=1)


def _prepare(out: Path) -> None:
    """Refuse to write into a folder that holds anything but an earlier synthesis; clear an earlier one."""
    if out.exists() and any(out.iterdir()):
        if not (out / "synth.json").exists():
            raise FileExistsError(f"{out} is not empty and holds no earlier synthesis (synth.json); "
                                  "give an empty or new folder")
        for name in BENCHMARKS + ("heldin",):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("scenes.jsonl", "vocab.txt", "synth.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def synthesize(out: str | Path, size: str = "smoke", seed: int = 0) -> dict[str, Path]:
    """Generate and write everything; returns the paths (benchmark roots, heldin, scenes, vocab, manifest)."""
    out = Path(out)
    items = build_items(size, seed)
    _prepare(out)
    # Written first, so an interrupted run leaves a folder the next run recognises and clears.
    _dump(out / "synth.json", {"version": SYNTH_VERSION, "size": size, "seed": seed, "complete": False})
    scenes: list[dict] = []
    counts: dict[str, dict[str, int]] = {}

    def picture(item: dict, path: Path, bench: str, split: str, pid: str) -> None:
        _save(render(item["scene"]), path)
        scenes.append({"image": path.relative_to(out).as_posix(), "benchmark": bench, "split": split, "id": pid,
                       "qtype": item["qtype"], "scene": item["scene"]})

    counts["scienceqa"] = _write_scienceqa(out / "scienceqa", items["scienceqa"], picture)
    counts["iconqa"] = _write_iconqa(out / "iconqa", items["iconqa"], picture)
    counts["vizwiz"] = _write_vizwiz(out / "vizwiz", items["vizwiz"], picture)
    counts["flickr30k"] = _write_flickr(out / "flickr30k", items["flickr30k"], picture)
    counts["heldin"] = _write_heldin(out / "heldin", items["heldin"], out, scenes, seed)
    with open(out / "scenes.jsonl", "w", encoding="utf-8") as f:
        for line in scenes:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    (out / "vocab.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    _dump(out / "synth.json", {"version": SYNTH_VERSION, "size": size, "seed": seed, "complete": True,
                               "counts": counts})
    paths = {name: out / name for name in BENCHMARKS + ("heldin",)}
    paths.update(scenes=out / "scenes.jsonl", vocab=out / "vocab.txt", manifest=out / "synth.json")
    return paths


def _write_scienceqa(root: Path, splits: dict, picture) -> dict:
    problems, pid_splits, counts, pid = {}, {}, {}, 0
    for split in SPLITS:
        pid_splits[split] = []
        for item in splits[split]:
            pid += 1
            key = str(pid)
            has_image = item["scene"] is not None
            problems[key] = {
                "question": item["question"], "choices": item["choices"], "answer": item["answer"],
                "hint": item["hint"], "image": "image.png" if has_image else None, "task": item["task"],
                "grade": item["grade"], "subject": item["subject"], "topic": item["topic"],
                "category": item["category"], "skill": item["skill"], "lecture": item["lecture"],
                "solution": item["solution"], "split": split,
            }
            pid_splits[split].append(key)
            if has_image:
                picture(item, root / "images" / split / key / "image.png", "scienceqa", split, key)
        counts[split] = len(pid_splits[split])
    pid_splits["trainval"] = pid_splits["train"] + pid_splits["val"]
    for split in SPLITS:  # ScienceQA ships small subsets too
        pid_splits[f"mini{split}"] = pid_splits[split][: max(1, len(pid_splits[split]) // 10)]
    _dump(root / "problems.json", problems)
    _dump(root / "pid_splits.json", pid_splits)
    return counts


def _write_iconqa(root: Path, splits: dict, picture) -> dict:
    data = root / "iconqa_data"
    problems, pid_splits, skills, counts, pid = {}, {}, {}, {}, 0
    for split in SPLITS:
        key_list = pid_splits[f"choose_txt_{split}"] = []
        for item in splits[split]:
            pid += 1
            key = str(pid)
            problems[key] = {"question": item["question"], "choices": item["choices"], "answer": item["answer"],
                             "ques_type": "choose_txt"}
            skills[key] = item["skills"]
            key_list.append(key)
            picture(item, data / "iconqa" / split / "choose_txt" / key / "image.png", "iconqa", split, key)
        counts[split] = len(key_list)
    _dump(data / "problems.json", problems)
    _dump(data / "pid_splits.json", pid_splits)
    _dump(data / "pid2skills.json", skills)
    return counts


def _write_vizwiz(root: Path, splits: dict, picture) -> dict:
    counts = {}
    for split in SPLITS:
        entries = []
        for i, item in enumerate(splits[split]):
            name = f"VizWiz_{split}_{i:08d}.jpg"
            entries.append({"image": name, "question": item["question"], "answers": item["answers"],
                            "answer_type": item["answer_type"], "answerable": item["answerable"]})
            picture(item, root / split / name, "vizwiz", split, Path(name).stem)
        _dump(root / "Annotations" / f"{split}.json", entries)
        counts[split] = len(entries)
    return counts


def _write_flickr(root: Path, splits: dict, picture) -> dict:
    images, counts, imgid, sentid = [], {}, 0, 0
    for split in SPLITS:
        for item in splits[split]:
            name = f"{1000000000 + imgid}.jpg"
            sentences = []
            for raw in item["captions"]:
                tokens = [t for t in words(raw.lower()) if t.isalnum()]
                sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
                sentid += 1
            images.append({"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                           "split": split, "filename": name})
            picture(item, root / "flickr30k-images" / name, "flickr30k", split, Path(name).stem)
            imgid += 1
        counts[split] = len(splits[split])
    _dump(root / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    return counts


def _write_heldin(root: Path, splits: dict, out: Path, scenes: list, seed: int) -> dict:
    counts = {}
    facts = knowledge_sentences()
    _rng(seed, "heldin", "text").shuffle(facts)
    n_val = max(1, len(facts) // 10)
    texts = {"val": facts[:n_val], "train": facts[n_val:]}
    for split in HELDIN_SPLITS:
        lines = []
        for i, item in enumerate(splits[split]):
            rel = f"images/{split}/{i:06d}.png"
            _save(render(item["scene"]), root / rel)
            scenes.append({"image": f"heldin/{rel}", "benchmark": "heldin", "split": split, "id": f"{i:06d}",
                           "qtype": "heldin", "scene": item["scene"]})
            lines += [{"image": rel, **task} for task in item["tasks"]]
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
        (root / f"text_{split}.txt").write_text("\n".join(texts[split]) + "\n", encoding="utf-8")
        counts[split] = len(lines)
    return counts

"""The held-in tasks the base builds train on (DATA/heldin, never a benchmark item): reading them, and the
questions stage 3 adds about the held-in pictures (extra binding questions, context questions, the same asked
again with lettered options)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..data.synthetic_text import HELDIN_PROMPTS
from ..data.synthetic_world import clearly_bigger

# --- held-in data ---------------------------------------------------------------------------------

@dataclass
class HeldIn:
    """DATA/heldin: the tasks (caption / vqa lines), the world's text, and the scenes of its pictures."""

    root: Path                                 # DATA
    tasks: dict[str, list[dict]]               # split -> [{image (absolute), task, qtype, prompt, answer}]
    text: dict[str, list[str]]                 # split -> facts and lectures
    scenes: dict[str, list[tuple[str, dict]]]  # split -> [(image path, scene)], one per picture

    def images(self, split: str) -> list[str]:
        return [path for path, _ in self.scenes[split]]


def _fix(root: Path) -> str:
    return f"write the synthetic world with `qformer-peft data synth --out {root}`"


def heldin_tasks(data_dir: str | Path, split: str) -> list[dict]:
    """DATA/heldin/<split>.jsonl alone (what scoring needs: read_heldin also reads the training set and the
    scenes, ~0.5 s on mini): [{image (absolute), task, qtype, prompt, answer}]."""
    root = Path(data_dir)
    path = root / "heldin" / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the base models train on the held-in tasks; {_fix(root)}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            rows.append({**row, "image": str(path.parent / row["image"]), "prompt": str(row["prompt"]),
                         "answer": str(row["answer"]), "task": row["task"]})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} line {n}: not a held-in task ({err!r}); expected JSON with image, task, "
                             f"prompt, answer; {_fix(root)}") from None
    if not rows:
        raise ValueError(f"{path} is empty; {_fix(root)}")
    return rows


def read_heldin(data_dir: str | Path) -> HeldIn:
    """Read DATA/heldin/{train,val}.jsonl, text_{train,val}.txt and the held-in lines of DATA/scenes.jsonl."""
    root = Path(data_dir)
    heldin = root / "heldin"
    fix = _fix(root)
    tasks: dict[str, list[dict]] = {}
    text: dict[str, list[str]] = {}
    for split in ("train", "val"):
        tasks[split] = heldin_tasks(root, split)
        text_path = heldin / f"text_{split}.txt"
        lines = text_path.read_text(encoding="utf-8").splitlines() if text_path.is_file() else []
        text[split] = [t for t in lines if t]
    scenes_path = root / "scenes.jsonl"
    if not scenes_path.is_file():
        raise FileNotFoundError(f"{scenes_path} not found: stage 1 reads the held-in pictures' dense labels from it; "
                                f"{fix}")
    scenes: dict[str, list[tuple[str, dict]]] = {"train": [], "val": []}
    with open(scenes_path, encoding="utf-8") as f:
        for line in f:
            if '"benchmark":"heldin"' not in line.replace(" ", ""):
                continue  # a benchmark picture: never read here
            entry = json.loads(line)
            scenes[entry["split"]].append((str(root / entry["image"]), entry["scene"]))
    for split in ("train", "val"):
        if not scenes[split]:
            raise ValueError(f"{scenes_path}: no held-in {split} pictures; {fix}")
    return HeldIn(root=root, tasks=tasks, text=text, scenes=scenes)


# Held-in questions beyond the generator's nine kinds, asked about the held-in pictures in held-in style and in the
# world's own words (never a benchmark template): the words and bindings the benchmarks ask about that the
# generator's held-in questions never use, as the real InstructBLIP met them in its held-in sets
# (docs/embedded-models.md, "The measurements behind the stages").
EXTRA_QUESTIONS = {
    "color_of": "What is the color of the {shape}?",
    "shape_of": "What is the shape of the {color} object?",
    "count_shapes": "How many shapes can you see?",
    "count_color_shapes": "How many {color} shapes can you see?",
    "largest": "What is the {word} shape?",                       # word: largest | biggest | smallest
    "than": "In the picture, is the {color} {shape} bigger or smaller next to the {color2} {shape2}?",
    "extreme": "What is the shape {word} to the {side}?",         # word: farthest | closest
    "left_of": "In the picture, is the {color} {shape} on the left or on the right of the {color2} {shape2}?",
}


# Counting always has an answer, the others only in some pictures: weights even out what gets asked, and the
# comparison kinds answer in the words the benchmarks' options use (bigger / smaller, left / right).
EXTRA_WEIGHTS = {"color_of": 5, "shape_of": 5, "count_shapes": 1, "count_color_shapes": 2, "largest": 5, "than": 5,
                 "extreme": 5, "left_of": 3}


def _others(objs: list[dict], target: dict, attr: str) -> list[str]:
    """The values of `attr` in the picture other than the target's: distractors only binding can rule out."""
    return sorted({o[attr] for o in objs} - {target[attr]})


def extra_question(rng: random.Random, sc: dict, kind: str) -> tuple[str, str, str, list[str]] | None:
    """(kind, question, answer, distractors) about a held-in scene, or None when this kind has no clear answer
    here. distractors: the wrong answers the picture itself offers (the other objects' colours or shapes, the
    opposite word), what multiple_choice asks against; [] where the question type's pool serves (counts)."""
    objs = sc["objects"]
    q = EXTRA_QUESTIONS[kind]
    unique_shape = [o for o in objs if sum(x["shape"] == o["shape"] for x in objs) == 1]
    pair = [o for o in objs if sum(x["shape"] == o["shape"] and x["color"] == o["color"] for x in objs) == 1]
    if kind == "color_of" and unique_shape:
        o = rng.choice(unique_shape)
        return kind, q.format(shape=o["shape"]), o["color"], _others(objs, o, "color")
    if kind == "shape_of":
        unique_color = [o for o in objs if sum(x["color"] == o["color"] for x in objs) == 1]
        if unique_color:
            o = rng.choice(unique_color)
            return kind, q.format(color=o["color"]), o["shape"], _others(objs, o, "shape")
        return None
    if kind == "count_shapes":
        return kind, q, str(len(objs)), []
    if kind == "count_color_shapes":
        color = rng.choice(objs)["color"]
        return kind, q.format(color=color), str(sum(o["color"] == color for o in objs)), []
    if kind == "largest" and len(objs) >= 2:
        word = rng.choice(("largest", "biggest", "smallest"))
        ranked = sorted(objs, key=lambda o: o["extent"], reverse=word != "smallest")
        top = ranked[0]
        clear = all(clearly_bigger(top, o) if word != "smallest" else clearly_bigger(o, top) for o in ranked[1:])
        if clear and top in unique_shape:
            return kind, q.format(word=word), top["shape"], _others(objs, top, "shape")
    if kind == "than" and len(pair) >= 2:
        a, b = rng.sample(pair, 2)
        if clearly_bigger(a, b) or clearly_bigger(b, a):
            answer, other = ("bigger", "smaller") if clearly_bigger(a, b) else ("smaller", "bigger")
            return kind, q.format(color=a["color"], shape=a["shape"], color2=b["color"], shape2=b["shape"]), \
                answer, [other]
    if kind == "extreme" and len(objs) >= 2:
        word = rng.choice(("farthest", "closest"))
        side = rng.choice(("left", "right") if word == "farthest" else ("top", "bottom"))
        key = "cx" if side in ("left", "right") else "cy"
        ranked = sorted(objs, key=lambda o: o[key], reverse=side in ("right", "bottom"))
        if abs(ranked[0][key] - ranked[1][key]) >= 8 and ranked[0] in unique_shape:
            return kind, q.format(word=word, side=side), ranked[0]["shape"], _others(objs, ranked[0], "shape")
    if kind == "left_of" and len(pair) >= 2:
        a, b = rng.sample(pair, 2)
        if abs(a["cx"] - b["cx"]) >= 10:
            answer, other = ("left", "right") if a["cx"] < b["cx"] else ("right", "left")
            return kind, q.format(color=a["color"], shape=a["shape"], color2=b["color"], shape2=b["shape"]), \
                answer, [other]
    return None


def extra_questions(heldin: "HeldIn", split: str, per_picture: int, seed: int) -> list[dict]:
    """Up to `per_picture` EXTRA_QUESTIONS per held-in picture, as held-in task lines (prompt, answer)."""
    rng = random.Random(f"extra/{split}/{seed}")
    out = []
    for image, sc in heldin.scenes[split]:
        found = {kind: extra_question(rng, sc, kind) for kind in sorted(EXTRA_QUESTIONS)}
        kinds = [k for k, qa in found.items() if qa is not None]
        for _ in range(min(per_picture, len(kinds))):
            kind = rng.choices(kinds, weights=[EXTRA_WEIGHTS[k] for k in kinds])[0]
            kinds.remove(kind)
            _, question, answer, distractors = found[kind]
            out.append({"image": image, "task": "vqa", "qtype": f"extra_{kind}",
                        "prompt": HELDIN_PROMPTS["vqa"].format(q=question), "answer": answer,
                        "distractors": distractors})
    return out


# Reading a context against the picture (ScienceQA's skill, never its items): the context names each object by
# one attribute and a label, the question asks for another attribute of a label, so the answer needs the text
# (label -> colour or shape) and then the picture (that colour -> its shape, or that shape -> its colour).
CONTEXT_QUESTIONS = {
    "context_shape": ("The {color} shape is called {label}.", "Which shape is called {label}?"),
    "context_color": ("The {shape} is called {label}.", "What color is the shape called {label}?"),
}


def _context_question(rng: random.Random, sc: dict, kind: str) -> dict | None:
    """One context question about a held-in scene, or None when fewer than two objects are named apart by the
    attribute the context uses (a unique colour for context_shape, a unique shape for context_color)."""
    objs = sc["objects"]
    key, asked = ("color", "shape") if kind == "context_shape" else ("shape", "color")
    named = [o for o in objs if sum(x[key] == o[key] for x in objs) == 1]
    if len(named) < 2:
        return None
    sentence, question = CONTEXT_QUESTIONS[kind]
    labels = rng.sample("123456789", len(named))
    facts = [sentence.format(label=label, **{key: o[key]}) for o, label in zip(named, labels)]
    rng.shuffle(facts)
    i = rng.randrange(len(named))
    target = named[i]
    return {"context": " ".join(facts), "question": question.format(label=labels[i]), "answer": target[asked],
            "distractors": sorted({o[asked] for o in named} - {target[asked]})}


def context_questions(heldin: "HeldIn", split: str, per_picture: int, seed: int) -> list[dict]:
    """Up to `per_picture` CONTEXT_QUESTIONS per held-in picture, as held-in task lines:
        <Image> Context: The red shape is called 4. The blue shape is called 7. Question: Which shape is called 7? Answer:
    """
    rng = random.Random(f"context/{split}/{seed}")
    out = []
    for image, sc in heldin.scenes[split]:
        kinds = sorted(CONTEXT_QUESTIONS)
        rng.shuffle(kinds)
        found = [qa for qa in (_context_question(rng, sc, k) for k in kinds) if qa is not None][:per_picture]
        for qa in found:
            prompt = HELDIN_PROMPTS["vqa"].format(q=qa["question"])
            prompt = prompt.replace("<Image> ", f"<Image> Context: {qa['context']} ", 1)
            out.append({"image": image, "task": "vqa", "qtype": "context", "prompt": prompt, "answer": qa["answer"],
                        "distractors": qa["distractors"]})
    return out


def training_tasks(heldin: "HeldIn", split: str, *, extra_per_picture: int = 0, mc_fraction: float = 0.0,
                   seed: int = 0, context_per_picture: int = 0) -> list[dict]:
    """What stages 2 and 3 train on: the held-in tasks, the extra questions, and a share of all their
    questions again with lettered options."""
    tasks = (heldin.tasks[split] + extra_questions(heldin, split, extra_per_picture, seed)
             + context_questions(heldin, split, context_per_picture, seed))
    return tasks + multiple_choice(tasks, mc_fraction, seed)


def multiple_choice(tasks: list[dict], fraction: float, seed: int) -> list[dict]:
    """Held-in questions re-asked with lettered options, as extra stage-3 tasks (InstructBLIP's held-in
    mixture has multiple-choice sets too; without any, "(a) red" is a format the model has never written and
    zero-shot ranking measures letter priors). The question and picture stay held-in; the options are the
    gold answer and 1-3 wrong ones in random order: for the extra questions, what the picture itself offers
    (the other objects' colours or shapes, the opposite word: its "distractors"), else other answers its
    question type has in the training tasks:
        <Image> Question: What color is the circle? Options: (a) blue (b) red. Answer:   ->   (b) red
    Options from the pool can be ruled out by what is present at all ("blue" when nothing is blue); options
    from the picture only by binding the colour to its shape, which is what IconQA's options demand
    (the measurements: docs/embedded-models.md).
    """
    if fraction <= 0:
        return []
    pools: dict[str, set[str]] = {}
    for t in tasks:
        if t["task"] == "vqa":
            pools.setdefault(t["qtype"], set()).add(t["answer"])
    rng = random.Random(f"mc/{seed}")
    out = []
    for t in tasks:
        others = t.get("distractors")
        if not others:
            others = sorted(pools.get(t.get("qtype"), set()) - {t["answer"]}) if t["task"] == "vqa" else []
        if not others or rng.random() >= fraction or not t["prompt"].endswith(" Answer:"):
            continue
        options = rng.sample(others, min(len(others), rng.randint(1, 3))) + [t["answer"]]
        rng.shuffle(options)
        letters = "abcdefghijklmnopqrstuvwxyz"
        text = " ".join(f"({letters[i]}) {o}" for i, o in enumerate(options))
        gold = options.index(t["answer"])
        prompt = t["prompt"].removesuffix(" Answer:") + f" Options: {text}. Answer:"
        out.append({**t, "task": "vqa_mc", "prompt": prompt, "answer": f"({letters[gold]}) {t['answer']}"})
    return out


def heldin_examples(tasks: list[dict]):
    """Held-in task lines -> evaluate.Example (prompt and target as the engine feeds them)."""
    from ..evaluate import Example

    return [Example(id=f"{i}", image=t["image"], prompt=t["prompt"], target=t["answer"], answers=(t["answer"],),
                    meta={"task": t["task"], "qtype": t.get("qtype", t["task"])}) for i, t in enumerate(tasks)]

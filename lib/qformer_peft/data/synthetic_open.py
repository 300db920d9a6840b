"""Open-ended synthetic items: VizWiz questions with 10 human-like answers, Flickr30k captions, held-in tasks.

VizWiz: one object photographed close up (or a few, for counting); annotators mostly agree, some confuse
neighbouring colors or shapes, and 15% of the pictures are blurred or dark, answered "unanswerable".
Flickr30k: five annotators, five caption styles (a list, a count, sizes, shapes, colors), in random order.
Held-in (base-model pretraining, never a benchmark): a caption naming every object with its size, color, shape
and place, and open questions phrased unlike any benchmark question.
"""
from __future__ import annotations

import random

from .synthetic_text import (COLOR_CONFUSIONS, FLICKR_TEXT, HELDIN_PROMPTS, HELDIN_QUESTIONS, REGION_PHRASES,
                             SHAPE_CONFUSIONS, VW_ANSWER_TYPE, VW_QUESTIONS, VW_UNANSWERABLE_RATE, VW_WEIGHTS,
                             article, join_and, sentence)
from .synthetic_world import (COLOR_NAMES, NUMBER_WORDS, SHAPE_PLURALS, SHAPES, clearly_bigger, random_scene,
                              weighted)


# ------------------------------------------------------------------------------------------------ VizWiz

def vizwiz_item(rng: random.Random) -> dict:
    qtype = weighted(rng, VW_WEIGHTS)
    unanswerable = rng.random() < VW_UNANSWERABLE_RATE
    if qtype == "count":
        sc = random_scene(rng, rng.randint(1, 5), sizes=("small", "medium"))
    else:  # one object, photographed close up
        sc = random_scene(rng, 1, sizes=("medium", "large"))
    obj = sc["objects"][0]
    if qtype == "color":
        gold, q = obj["color"], rng.choice(VW_QUESTIONS["color"])
    elif qtype == "shape":
        gold, q = obj["shape"], rng.choice(VW_QUESTIONS["shape"])
    elif qtype == "count":
        gold, q = str(len(sc["objects"])), rng.choice(VW_QUESTIONS["count"])
    elif qtype == "yesno_shape":
        asked = obj["shape"] if rng.random() < 0.5 else rng.choice([s for s in SHAPES if s != obj["shape"]])
        gold, q = ("yes" if asked == obj["shape"] else "no"), VW_QUESTIONS["yesno_shape"][0].format(shape=asked)
    else:
        asked = obj["color"] if rng.random() < 0.5 else rng.choice([c for c in COLOR_NAMES if c != obj["color"]])
        gold, q = ("yes" if asked == obj["color"] else "no"), VW_QUESTIONS["yesno_color"][0].format(color=asked)
    if unanswerable:
        sc["quality"] = rng.choice(("blur", "dark"))
        answers = _vw_unanswerable_answers(rng, qtype, gold)
        return {"qtype": qtype, "scene": sc, "question": q, "answers": answers, "answer_type": "unanswerable",
                "answerable": 0}
    return {"qtype": qtype, "scene": sc, "question": q, "answers": _vw_answers(rng, qtype, gold),
            "answer_type": VW_ANSWER_TYPE[qtype], "answerable": 1}


def _vw_wrong(rng, qtype, gold):
    if qtype == "color":
        return rng.choice(COLOR_CONFUSIONS[gold])
    if qtype == "shape":
        return rng.choice(SHAPE_CONFUSIONS[gold])
    if qtype == "count":
        return str(max(1, int(gold) + rng.choice((-1, 1))))
    return "no" if gold == "yes" else "yes"


def _vw_answers(rng, qtype, gold):
    agree = rng.uniform(0.55, 0.95)  # questions differ in how much annotators agree
    answers = []
    for _ in range(10):
        u = rng.random()
        if u < agree:
            answers.append({"answer": gold, "answer_confidence": "yes"})
        elif u < agree + 0.03:
            answers.append({"answer": "unanswerable", "answer_confidence": "maybe"})
        else:
            answers.append({"answer": _vw_wrong(rng, qtype, gold), "answer_confidence": rng.choice(("maybe", "no"))})
    # The gold answer stays strictly the most common one (the VQA target is the majority answer).
    while True:
        counts = {}
        for a in answers:
            counts[a["answer"]] = counts.get(a["answer"], 0) + 1
        if counts.get(gold, 0) > max((c for ans, c in counts.items() if ans != gold), default=0):
            return answers
        next(a for a in answers if a["answer"] != gold).update(answer=gold, answer_confidence="yes")


def _vw_unanswerable_answers(rng, qtype, gold):
    answers = []
    for i in range(10):
        if i < 6 or rng.random() < 0.5:
            answers.append({"answer": "unanswerable", "answer_confidence": "yes"})
        else:  # a guess
            guess = gold if rng.random() < 0.3 else _vw_wrong(rng, qtype, gold)
            answers.append({"answer": guess, "answer_confidence": "no"})
    rng.shuffle(answers)
    return answers


# --------------------------------------------------------------------------------------------- Flickr30k

def flickr_item(rng: random.Random) -> dict:
    sc = random_scene(rng, rng.randint(1, 4))
    objs = sorted(sc["objects"], key=lambda o: o["cx"])  # captions read left to right
    n = len(objs)
    styles = ["list", "count", "sizes", "shapes", "colors"]
    rng.shuffle(styles)  # five annotators, five styles, in random order
    return {"qtype": "caption", "scene": sc, "captions": [_flickr_caption(rng, s, objs) for s in styles], "n": n}


def _flickr_caption(rng, style, objs):
    n = len(objs)
    if style == "list":
        parts = [f"{article(o['color'])} {o['color']} {o['shape']}" for o in objs]
        return sentence(FLICKR_TEXT["list"].format(objects=join_and(parts)))
    if style == "count":
        if n == 1:
            return FLICKR_TEXT["count"][1]
        return FLICKR_TEXT["count"][0].format(Number=sentence(NUMBER_WORDS[n]))
    if style == "sizes":
        by_size = sorted(objs, key=lambda o: -o["extent"])
        a = by_size[0]
        if n == 1:
            return FLICKR_TEXT["sizes"][1].format(A=sentence(article(a["size"])), size=a["size"], color=a["color"],
                                                  shape=a["shape"])
        b = by_size[1]
        return FLICKR_TEXT["sizes"][0].format(A=sentence(article(a["size"])), size=a["size"], color=a["color"],
                                              shape=a["shape"], a=article(b["size"]), size2=b["size"],
                                              color2=b["color"], shape2=b["shape"])
    if style == "shapes":
        if n == 1:
            return FLICKR_TEXT["shapes"][1].format(shape=objs[0]["shape"])
        return FLICKR_TEXT["shapes"][0].format(shapes=join_and([f"{article(o['shape'])} {o['shape']}" for o in objs]))
    colors = list(dict.fromkeys(o["color"] for o in objs))
    if n == 1:
        return FLICKR_TEXT["colors"][1].format(color=colors[0])
    return FLICKR_TEXT["colors"][0].format(colors=join_and(colors))


# ----------------------------------------------------------------------------------------------- held-in

def heldin_image(rng: random.Random, n_vqa: int = 2) -> dict:
    """One held-in picture with a caption and n_vqa open questions (phrasings unlike the benchmarks')."""
    sc = random_scene(rng, rng.randint(1, 5))
    tasks = [{"task": "caption", "qtype": "caption", "prompt": HELDIN_PROMPTS["caption"],
              "answer": heldin_caption(sc)}]
    kinds = list(HELDIN_QUESTIONS)
    rng.shuffle(kinds)
    for kind in kinds:
        if len(tasks) > n_vqa:
            break
        qa = _heldin_vqa(rng, kind, sc["objects"])
        if qa is not None:
            tasks.append({"task": "vqa", "qtype": kind, "prompt": HELDIN_PROMPTS["vqa"].format(q=qa[0]),
                          "answer": qa[1]})
    return {"scene": sc, "tasks": tasks}


def heldin_caption(sc: dict) -> str:
    # Reading order: top to bottom, then left to right; every object with size, color, shape and place.
    objs = sorted(sc["objects"], key=lambda o: (o["cy"] // 22, o["cx"]))
    parts = [f"{article(o['size'])} {o['size']} {o['color']} {o['shape']} {REGION_PHRASES[o['region']]}"
             for o in objs]
    return join_and(parts)


def _unique(objs, key, value):
    return sum(o[key] == value for o in objs) == 1


def _heldin_vqa(rng, kind, objs):
    o = rng.choice(objs)
    q = HELDIN_QUESTIONS[kind]
    unique_pair = sum(x["shape"] == o["shape"] and x["color"] == o["color"] for x in objs) == 1
    if kind == "what_color" and _unique(objs, "shape", o["shape"]):
        return q.format(shape=o["shape"]), o["color"]
    if kind == "what_shape" and _unique(objs, "color", o["color"]):
        return q.format(color=o["color"]), o["shape"]
    if kind == "how_many":
        return q, str(len(objs))
    # Counting questions mostly ask about what is there (answers 1-5), sometimes about what is not (0).
    if kind == "how_many_color":
        color = o["color"] if rng.random() < 0.8 else rng.choice(COLOR_NAMES)
        return q.format(color=color), str(sum(x["color"] == color for x in objs))
    if kind == "how_many_shape":
        shape = o["shape"] if rng.random() < 0.8 else rng.choice(SHAPES)
        return q.format(plural=SHAPE_PLURALS[shape]), str(sum(x["shape"] == shape for x in objs))
    if kind == "exists":
        if rng.random() < 0.5:
            return q.format(color=o["color"], shape=o["shape"]), "yes"
        pairs = [(c, s) for c in COLOR_NAMES for s in SHAPES
                 if not any(x["color"] == c and x["shape"] == s for x in objs)]
        c, s = rng.choice(pairs)
        return q.format(color=c, shape=s), "no"
    if kind == "what_size" and unique_pair:
        return q.format(color=o["color"], shape=o["shape"]), o["size"]
    if kind == "where" and unique_pair:
        return q.format(color=o["color"], shape=o["shape"]), o["region"]
    if kind == "bigger" and len(objs) >= 2:
        a, b = rng.sample(objs, 2)
        if (a["shape"] != b["shape"] and _unique(objs, "shape", a["shape"]) and _unique(objs, "shape", b["shape"])
                and (clearly_bigger(a, b) or clearly_bigger(b, a))):
            return q.format(shape=a["shape"], shape2=b["shape"]), (a if clearly_bigger(a, b) else b)["shape"]
    return None

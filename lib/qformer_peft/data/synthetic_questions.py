"""Multiple-choice items about synthetic scenes (IconQA, ScienceQA): one generator per question type.

Everything here is text and scene dicts, no pixels, so tests and the shortcut audit run in seconds;
synthetic.py renders the scenes and writes the real on-disk formats. Every generator takes a seeded
`random.Random` and returns an item dict: {"qtype", "scene" (or None), "question", "choices", "answer", ...}.
The open-ended sets (VizWiz, Flickr30k, held-in) are in synthetic_open.py, all wording in synthetic_text.py.

Guarding against shortcuts (checked by data/shortcuts.py and its test), by construction:
- options are shuffled, so every letter is equally likely to be right;
- distractors come from the same attribute family AND from the picture itself (the options of "Which color is
  the star?" are the colors of the objects present), so seeing only the colors present, or only how many
  objects there are, leaves the choice at chance;
- answers are drawn uniformly within a type, and the roles answer / distractor are symmetric, so the question
  text, the option text or the option length say nothing;
- counts: the other objects all share ONE other color (or shape), so the number of colors present does not
  reveal the count, and options stay within what the number of objects allows.
Some ScienceQA types are meant to be answerable from text alone (the lecture or the hint): they are listed in
TEXT_ANSWERABLE and exempt from the text-only checks, as ScienceQA's own TXT/NO questions would be.
"""
from __future__ import annotations

import random

from .synthetic_text import (ALPHABET_WORDS, ANIMALS, DIRECTIONS, IQ_QUESTIONS, IQ_SKILLS, IQ_WEIGHTS, LECTURES,
                             MATERIALS_MAGNETIC, MATERIALS_OTHER, SQA_NO_IMAGE_TYPES, SQA_TEXT, SQA_TYPES,
                             SQA_WEIGHTS)
from .synthetic_world import (COLOR_NAMES, SHAPE_PLURALS, SHAPES, place, random_scene, row_scene, sample_extent,
                              scene, weighted)

def shuffled_options(rng: random.Random, answer: str, distractors: list[str]) -> tuple[list[str], int]:
    options = [answer] + list(distractors)
    rng.shuffle(options)
    return options, options.index(answer)


# Size questions compare a large object with small ones: extent ratio >= 24/15 = 1.6 and a larger filled area
# for ANY two shapes (0.33 * 24**2 > 0.785 * 15**2). Any stricter test that rejects some shape pairs would make
# the shape names predict the answer (a star, thin for its extent, would seldom be "the largest").
BIG, SMALL = "large", "small"


# ------------------------------------------------------------------------------------------------ IconQA

def iconqa_item(rng: random.Random) -> dict:
    qtype = weighted(rng, IQ_WEIGHTS)
    item = _ICONQA[qtype](rng)
    item.update(qtype=qtype, skills=[IQ_SKILLS[qtype]])
    return item


def _iq_count_all(rng):
    # n copies of one shape in one color (sizes vary): the colors or shapes present say nothing about n.
    n = rng.randint(1, 6)
    shape, color = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
    objects = None
    while objects is None:
        sizes = [rng.choice(("small", "medium")) for _ in range(n)]
        objects = place(rng, [(shape, color, z, sample_extent(rng, z)) for z in sizes])
    sc = scene(objects, rng)
    pool = [str(k) for k in range(1, 7) if k != n]
    choices, answer = shuffled_options(rng, str(n), rng.sample(pool, rng.randint(1, 4)))
    return {"scene": sc, "question": rng.choice(IQ_QUESTIONS["count_all"]), "choices": choices, "answer": answer}


def _iq_count_attr(rng, attr: str):
    # k objects with the asked value, n - k sharing ONE other value: the number of distinct colors (shapes)
    # is always 2, and the options stay within 1..n-1, so neither partial view gives the count away.
    n = rng.randint(3, 6)
    k = rng.randint(1, n - 1)
    family = COLOR_NAMES if attr == "color" else SHAPES
    target, other = rng.sample(family, 2)
    specs = []
    for i in range(n):
        value = target if i < k else other
        free = rng.choice(SHAPES if attr == "color" else COLOR_NAMES)
        shape, color = (free, value) if attr == "color" else (value, free)
        size = rng.choice(("small", "medium"))
        specs.append((shape, color, size, sample_extent(rng, size)))
    objects = place(rng, specs)
    while objects is None:
        objects = place(rng, [(s, c, "small", sample_extent(rng, "small")) for s, c, _, _ in specs])
    rng.shuffle(objects)
    pool = [str(j) for j in range(1, n) if j != k]
    choices, answer = shuffled_options(rng, str(k), rng.sample(pool, min(len(pool), rng.randint(1, 4))))
    q = (IQ_QUESTIONS["count_color"][0].format(color=target) if attr == "color"
         else IQ_QUESTIONS["count_shape"][0].format(plural=SHAPE_PLURALS[target]))
    return {"scene": scene(objects, rng), "question": q, "choices": choices, "answer": answer}


def _distinct_scene(rng, n_lo=2, n_hi=5, **kw):
    n = rng.randint(n_lo, n_hi)
    return random_scene(rng, n, distinct_shapes=True, distinct_colors=True, **kw)


def _iq_attribute_of(rng, asked: str, given: str, kind: str):
    """'What <asked> is the <given> object?' on a scene whose objects differ in both attributes."""
    sc = _distinct_scene(rng)
    target = rng.choice(sc["objects"])
    others = [o[asked] for o in sc["objects"] if o is not target]
    choices, answer = shuffled_options(rng, target[asked], others)
    return {"scene": sc, "question": IQ_QUESTIONS[kind][0].format(**{given: target[given]}),
            "choices": choices, "answer": answer}


def _iq_color_of(rng):
    return _iq_attribute_of(rng, "color", "shape", "color_of")


def _iq_shape_of(rng):
    return _iq_attribute_of(rng, "shape", "color", "shape_of")


def _iq_extreme_size(rng, largest: bool):
    # One large object among small ones (or one small among large ones); shapes drawn uniformly.
    n = rng.randint(2, 4) if largest else rng.randint(2, 3)  # three large objects plus a small one may not fit
    objects = None
    while objects is None:
        shapes, colors = rng.sample(SHAPES, n), rng.sample(COLOR_NAMES, n)
        classes = [BIG if largest else SMALL] + [SMALL if largest else BIG] * (n - 1)
        objects = place(rng, [(s, c, z, sample_extent(rng, z)) for s, c, z in zip(shapes, colors, classes)])
    extreme = objects[0]
    rng.shuffle(objects)
    others = [o["shape"] for o in objects if o is not extreme]
    choices, answer = shuffled_options(rng, extreme["shape"], others)
    q = rng.choice(IQ_QUESTIONS["largest" if largest else "smallest"])
    return {"scene": scene(objects, rng), "question": q, "choices": choices, "answer": answer}


def _iq_compare_size(rng):
    big = rng.random() < 0.5  # is the first-named object the bigger one?
    objects = None
    while objects is None:
        s1, s2 = rng.sample(SHAPES, 2)
        c1, c2 = rng.sample(COLOR_NAMES, 2)
        a, b = (BIG, SMALL) if big else (SMALL, BIG)
        specs = [(s1, c1, a, sample_extent(rng, a)), (s2, c2, b, sample_extent(rng, b))]
        if rng.random() < 0.5:  # sometimes a third, unrelated object
            extra = rng.choice((SMALL, "medium"))
            specs.append((rng.choice(SHAPES), rng.choice(COLOR_NAMES), extra, sample_extent(rng, extra)))
        objects = place(rng, specs)
    answer_word = "bigger" if big else "smaller"
    choices, answer = shuffled_options(rng, answer_word, ["smaller" if big else "bigger"])
    q = IQ_QUESTIONS["compare_size"][0].format(color=c1, shape=s1, color2=c2, shape2=s2)
    return {"scene": scene(objects, rng), "question": q, "choices": choices, "answer": answer}


def _iq_position(rng):
    side = rng.choice(("left", "right", "top", "bottom"))
    key, pick = {"left": ("cx", min), "right": ("cx", max), "top": ("cy", min), "bottom": ("cy", max)}[side]
    while True:
        sc = _distinct_scene(rng, 2, 4, sizes=("small", "medium"))
        ranked = sorted(sc["objects"], key=lambda o: o[key], reverse=pick is max)
        if abs(ranked[0][key] - ranked[1][key]) >= 8:  # a clear winner
            break
    extreme = ranked[0]
    others = [o["shape"] for o in sc["objects"] if o is not extreme]
    choices, answer = shuffled_options(rng, extreme["shape"], others)
    template = IQ_QUESTIONS["position"][0 if side in ("left", "right") else 1]
    q = template.format(side=side, edge=side)
    return {"scene": sc, "question": q, "choices": choices, "answer": answer}


def _iq_side(rng):
    left = rng.random() < 0.5  # is the first-named object on the left?
    while True:
        sc = _distinct_scene(rng, 2, 3, sizes=("small", "medium"))
        a, b = sc["objects"][0], sc["objects"][1]
        if abs(a["cx"] - b["cx"]) >= 10 and (a["cx"] < b["cx"]) == left:
            break
    choices, answer = shuffled_options(rng, "left" if left else "right", ["right" if left else "left"])
    q = IQ_QUESTIONS["side"][0].format(color=a["color"], shape=a["shape"], color2=b["color"], shape2=b["shape"])
    return {"scene": sc, "question": q, "choices": choices, "answer": answer}


def _iq_pattern(rng):
    by_shape = rng.random() < 0.5
    family = SHAPES if by_shape else COLOR_NAMES
    if rng.random() < 0.5:  # ABAB -> A
        a, b = rng.sample(family, 2)
        row, nxt, values = [a, b, a, b], a, [a, b]
    else:  # ABCA -> B
        a, b, c = rng.sample(family, 3)
        row, nxt, values = [a, b, c, a], b, [a, b, c]
    fixed = rng.choice(COLOR_NAMES if by_shape else SHAPES)
    shapes, colors = (row, [fixed] * 4) if by_shape else ([fixed] * 4, row)
    choices, answer = shuffled_options(rng, nxt, [v for v in values if v != nxt])
    q = IQ_QUESTIONS["pattern"][0 if by_shape else 1]
    return {"scene": row_scene(rng, shapes, colors), "question": q, "choices": choices, "answer": answer}


_ICONQA = {
    "count_all": _iq_count_all, "count_color": lambda r: _iq_count_attr(r, "color"),
    "count_shape": lambda r: _iq_count_attr(r, "shape"), "color_of": _iq_color_of, "shape_of": _iq_shape_of,
    "largest": lambda r: _iq_extreme_size(r, True), "smallest": lambda r: _iq_extreme_size(r, False),
    "compare_size": _iq_compare_size, "position": _iq_position, "side": _iq_side, "pattern": _iq_pattern,
}


# --------------------------------------------------------------------------------------------- ScienceQA

def scienceqa_item(rng: random.Random, *, with_image: bool = True) -> dict:
    if with_image:
        qtype = weighted(rng, SQA_WEIGHTS)
    else:
        qtype = weighted(rng, {t: SQA_WEIGHTS[t] for t in SQA_NO_IMAGE_TYPES})
    subject, topic, category, skill, lecture_key, (g_lo, g_hi) = SQA_TYPES[qtype]
    grade = rng.randint(g_lo, g_hi)
    # Higher grades see busier pictures and more options: the G7-12 group is harder, as in ScienceQA.
    n = min(4, 2 + (grade >= 4) + (grade >= 7))
    item = _SCIENCEQA[qtype](rng, n, with_image)
    item.update(qtype=qtype, subject=subject, topic=topic, category=category, skill=skill, grade=f"grade{grade}",
                lecture=LECTURES[lecture_key], task="closed choice")
    item.setdefault("hint", "")
    if not with_image:
        item["scene"] = None
    return item


def _sqa_objects_question(rng, n):
    sc = _distinct_scene(rng, n, n)
    return sc, sc["objects"]


def _sqa_magnet(rng, n, with_image):
    sc, objs = _sqa_objects_question(rng, n)
    magnetic = rng.randrange(n)
    hints, target = [], objs[magnetic]
    others = rng.sample(MATERIALS_OTHER, n - 1)
    for i, o in enumerate(objs):
        material = rng.choice(MATERIALS_MAGNETIC) if i == magnetic else others.pop()
        o_hint = SQA_TEXT["magnet_hint"].format(color=o["color"], material=material)
        hints.append(o_hint)
        if i == magnetic:
            target_material = material
    rng.shuffle(hints)
    choices, answer = shuffled_options(rng, target["shape"], [o["shape"] for o in objs if o is not target])
    return {"scene": sc, "question": rng.choice(SQA_TEXT["magnet_q"]), "hint": " ".join(hints),
            "choices": choices, "answer": answer,
            "solution": SQA_TEXT["magnet_solution"].format(color=target["color"], material=target_material,
                                                           shape=target["shape"])}


def _sqa_animal(rng, n, with_image):
    n = min(n, 3)  # keeps hint + lecture + options under the 128-token budget
    sc, objs = _sqa_objects_question(rng, n)
    group = rng.choice(list(ANIMALS))
    other_groups = [g for g in ANIMALS if g != group]
    target = rng.randrange(n)
    hints = []
    for i, o in enumerate(objs):
        animal = rng.choice(ANIMALS[group] if i == target else ANIMALS[rng.choice(other_groups)])
        hints.append(SQA_TEXT["animal_hint"].format(color=o["color"], animal=animal))
        if i == target:
            target_animal = animal
    rng.shuffle(hints)
    t = objs[target]
    choices, answer = shuffled_options(rng, t["shape"], [o["shape"] for o in objs if o is not t])
    return {"scene": sc, "question": SQA_TEXT["animal_q"][0].format(group=group), "hint": " ".join(hints),
            "choices": choices, "answer": answer,
            "solution": SQA_TEXT["animal_solution"].format(color=t["color"], animal=target_animal, group=group,
                                                           shape=t["shape"])}


def _sqa_map(rng, n, with_image):
    direction = rng.choice(list(DIRECTIONS))
    key, pick = DIRECTIONS[direction]
    while True:
        sc, objs = _sqa_objects_question(rng, n)
        ranked = sorted(objs, key=lambda o: o[key], reverse=pick is max)
        if abs(ranked[0][key] - ranked[1][key]) >= 8:
            break
    t = ranked[0]
    choices, answer = shuffled_options(rng, t["shape"], [o["shape"] for o in objs if o is not t])
    return {"scene": sc, "question": SQA_TEXT["map_q"][0].format(direction=direction), "choices": choices,
            "answer": answer, "solution": SQA_TEXT["map_solution"].format(shape=t["shape"], direction=direction)}


def _sqa_describe(rng, n, with_image):
    sc, objs = _sqa_objects_question(rng, n)
    t = rng.choice(objs)
    k = min(len(objs), rng.randint(2, 3))
    wrong = rng.sample([o["color"] for o in objs if o is not t], k - 1)  # colors that ARE in the picture
    option = SQA_TEXT["describe_option"]
    choices, answer = shuffled_options(rng, option.format(shape=t["shape"], color=t["color"]),
                                       [option.format(shape=t["shape"], color=c) for c in wrong])
    return {"scene": sc, "question": SQA_TEXT["describe_q"][0], "choices": choices, "answer": answer,
            "solution": SQA_TEXT["describe_solution"].format(shape=t["shape"], color=t["color"])}


def _decorative_scene(rng):
    return random_scene(rng, rng.randint(1, 4))


def _sqa_know_animal(rng, n, with_image):
    group = rng.choice(list(ANIMALS))
    right = rng.choice(ANIMALS[group])
    wrong = [rng.choice(ANIMALS[g]) for g in ANIMALS if g != group][: max(1, n - 1)]
    choices, answer = shuffled_options(rng, right, wrong)
    return {"scene": _decorative_scene(rng), "question": SQA_TEXT["know_animal_q"][0].format(group=group),
            "choices": choices, "answer": answer,
            "solution": SQA_TEXT["know_animal_solution"].format(animal=right, group=group)}


def _sqa_know_magnet(rng, n, with_image):
    right = rng.choice(MATERIALS_MAGNETIC)
    choices, answer = shuffled_options(rng, right, rng.sample(MATERIALS_OTHER, max(1, n - 1)))
    return {"scene": _decorative_scene(rng), "question": SQA_TEXT["know_magnet_q"][0], "choices": choices,
            "answer": answer, "solution": SQA_TEXT["know_magnet_solution"].format(material=right)}


def _sqa_price(rng, n, with_image):
    n = min(n, 3)
    sc, objs = _sqa_objects_question(rng, n)
    prices = rng.sample(range(1, 10), n)
    hints = [SQA_TEXT["price_hint"].format(color=o["color"], shape=o["shape"], price=p) for o, p in zip(objs, prices)]
    rng.shuffle(hints)
    t = objs[prices.index(max(prices))]
    choices, answer = shuffled_options(rng, t["shape"], [o["shape"] for o in objs if o is not t])
    return {"scene": sc, "question": SQA_TEXT["price_q"][0 if n == 2 else 1], "hint": " ".join(hints),
            "choices": choices, "answer": answer,
            "solution": SQA_TEXT["price_solution"].format(shape=t["shape"], price=max(prices))}


def _sqa_alphabet(rng, n, with_image):
    picked = rng.sample(ALPHABET_WORDS, min(3, n))
    first = min(picked)
    choices, answer = shuffled_options(rng, first, [w for w in picked if w != first])
    return {"scene": _decorative_scene(rng), "question": SQA_TEXT["alphabet_q"][0], "choices": choices,
            "answer": answer, "solution": SQA_TEXT["alphabet_solution"].format(word=first)}


_SCIENCEQA = {"magnet": _sqa_magnet, "animal": _sqa_animal, "map": _sqa_map, "describe": _sqa_describe,
              "know_animal": _sqa_know_animal, "know_magnet": _sqa_know_magnet, "price": _sqa_price,
              "alphabet": _sqa_alphabet}

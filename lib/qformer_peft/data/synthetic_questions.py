"""Questions, answers and captions about synthetic scenes: one generator per benchmark question type.

Everything here is text and scene dicts, no pixels, so tests and `vocabulary()` run in milliseconds;
synthetic.py renders the scenes and writes the real on-disk formats. Every generator takes a seeded
`random.Random` and returns an item dict: {"qtype", "scene" (or None), "question", ...}.

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

from .synthetic_world import (COLOR_NAMES, NUMBER_WORDS, REGIONS, SHAPE_PLURALS, SHAPES, area, make_object,
                              place, random_scene, row_scene, sample_extent, scene)

# ------------------------------------------------------------------------------------------- phrase banks
# Every string the generators emit is built from these banks and the attribute lists of synthetic_world;
# synthetic.vocabulary() reads them, and a test checks the generated text never leaves that vocabulary.

IQ_QUESTIONS = {
    "count_all": ("How many shapes are there?", "How many shapes are in the picture?"),
    "count_color": ("How many {color} shapes are there?",),
    "count_shape": ("How many {plural} are there?",),
    "color_of": ("Which color is the {shape}?",),
    "shape_of": ("Which shape is {color}?",),
    "largest": ("Which shape is the largest?", "Which shape is the biggest?"),
    "smallest": ("Which shape is the smallest?",),
    "compare_size": ("Is the {color} {shape} bigger or smaller than the {color2} {shape2}?",),
    "position": ("Which shape is farthest to the {side}?", "Which shape is closest to the {edge}?"),
    "side": ("Is the {color} {shape} to the left or to the right of the {color2} {shape2}?",),
    "pattern": ("Which shape comes next in the pattern?", "Which color comes next in the pattern?"),
}
IQ_WEIGHTS = {"count_all": 10, "count_color": 9, "count_shape": 9, "color_of": 13, "shape_of": 13, "largest": 7,
              "smallest": 5, "compare_size": 8, "position": 10, "side": 7, "pattern": 9}
IQ_SKILLS = {"count_all": "counting", "count_color": "counting", "count_shape": "counting", "color_of": "scene",
             "shape_of": "geometry", "largest": "comparing", "smallest": "comparing", "compare_size": "comparing",
             "position": "spatial", "side": "spatial", "pattern": "pattern"}
IQ_WORDS = ("bigger", "smaller", "left", "right", "top", "bottom")

MATERIALS_MAGNETIC = ("iron", "steel")
MATERIALS_OTHER = ("wood", "glass", "plastic", "rubber")
ANIMALS = {"mammal": ("dog", "cat", "horse", "rabbit"), "bird": ("parrot", "eagle", "owl", "duck"),
           "fish": ("salmon", "trout", "shark", "goldfish")}
LECTURES = {
    "magnet": "Magnets can pull on some objects without touching them. This pull is called attraction. Magnets "
              "attract objects made of iron or steel. Magnets do not attract objects made of wood, glass, plastic "
              "or rubber.",
    "animal": "Scientists sort animals into groups. Mammals have fur and feed their young milk. Dogs, cats, horses "
              "and rabbits are mammals. Birds have feathers and wings. Parrots, eagles, owls and ducks are birds. "
              "Fish have fins and live in water. Salmon, trout, sharks and goldfish are fish.",
    "map": "A map is a drawing of a place. On a map, north is toward the top and south is toward the bottom. "
           "East is toward the right and west is toward the left.",
    "describe": "A sentence can tell about a picture. Look at the picture and read each sentence. Choose the "
                "sentence that matches what you see.",
    "price": "A price is the amount of money you pay for something. When one thing costs more than another, you "
             "need more money to buy it.",
    "alphabet": "Words in a dictionary are in alphabetical order. To put words in alphabetical order, look at the "
                "first letter of each word. If the first letters are the same, look at the second letter.",
}
SQA_TEXT = {
    "magnet_q": ("Which shape will a magnet attract?", "Which shape would stick to a magnet?"),
    "magnet_hint": "The {color} shape is made of {material}.",
    "magnet_solution": "The {color} shape is made of {material}. Magnets attract {material}. So, the magnet "
                       "attracts the {shape}.",
    "animal_q": ("Which shape is a {group}?",),
    "animal_hint": "The {color} shape is a {animal}.",
    "animal_solution": "The {color} shape is a {animal}. A {animal} is a {group}. So, the answer is the {shape}.",
    "map_q": ("Which shape is farthest {direction}?",),
    "map_solution": "North is toward the top, south toward the bottom, east toward the right and west toward the "
                    "left. The {shape} is farthest {direction}.",
    "describe_q": ("Which sentence describes the picture?",),
    "describe_option": "The {shape} is {color}.",
    "describe_solution": "Look at the picture. The {shape} is {color}.",
    "know_animal_q": ("Which animal is a {group}?",),
    "know_animal_solution": "A {animal} is a {group}.",
    "know_magnet_q": ("Which material will a magnet attract?",),
    "know_magnet_solution": "Magnets attract {material}.",
    "price_q": ("Which shape costs more?", "Which shape costs the most?"),
    "price_hint": "The {color} {shape} costs {price} dollars.",
    "price_solution": "The {shape} costs {price} dollars, more than the others. So, the {shape} costs more.",
    "alphabet_q": ("Which word comes first in alphabetical order?",),
    "alphabet_solution": "The word {word} comes first in alphabetical order.",
}
DIRECTIONS = {"north": ("cy", min), "south": ("cy", max), "east": ("cx", max), "west": ("cx", min)}
ALPHABET_WORDS = (SHAPES + COLOR_NAMES + tuple(a for group in ANIMALS.values() for a in group)
                  + MATERIALS_MAGNETIC + MATERIALS_OTHER)

# type -> (subject, topic, category, skill, lecture key, grade range)
SQA_TYPES = {
    "magnet": ("natural science", "physics", "Magnets", "Identify magnetic materials", "magnet", (2, 8)),
    "animal": ("natural science", "biology", "Classification", "Classify animals", "animal", (1, 7)),
    "know_animal": ("natural science", "biology", "Classification", "Classify animals", "animal", (1, 5)),
    "know_magnet": ("natural science", "physics", "Magnets", "Identify magnetic materials", "magnet", (2, 6)),
    "map": ("social science", "geography", "Geography", "Read a map: cardinal directions", "map", (3, 10)),
    "price": ("social science", "economics", "Basic economic principles", "Compare prices", "price", (4, 12)),
    "describe": ("language science", "writing-strategies", "Visual descriptions",
                 "Choose a sentence that describes a picture", "describe", (1, 4)),
    "alphabet": ("language science", "reference-skills", "Reference skills", "Use alphabetical order",
                 "alphabet", (2, 7)),
}
SQA_WEIGHTS = {"magnet": 20, "animal": 20, "map": 16, "describe": 11, "know_animal": 8, "know_magnet": 6,
               "price": 11, "alphabet": 8}
SQA_NO_IMAGE_TYPES = ("know_animal", "know_magnet", "price", "alphabet")  # also written without a picture
TEXT_ANSWERABLE = {"know_animal", "know_magnet", "alphabet", "price"}  # from the lecture / hint alone

VW_QUESTIONS = {
    "color": ("What color is this?", "What color is this object?", "Can you tell me what color this is?"),
    "shape": ("What shape is this?", "What is the shape of this object?", "Can you tell me what shape this is?"),
    "count": ("How many objects are in this picture?", "How many things are there?"),
    "yesno_shape": ("Is this a {shape}?",),
    "yesno_color": ("Is this {color}?",),
}
VW_WEIGHTS = {"color": 30, "shape": 25, "count": 20, "yesno_shape": 8, "yesno_color": 7}
VW_UNANSWERABLE_RATE = 0.15
VW_ANSWER_TYPE = {"color": "other", "shape": "other", "count": "number", "yesno_shape": "yes/no",
                  "yesno_color": "yes/no"}
COLOR_CONFUSIONS = {"red": ("orange", "pink"), "orange": ("red", "yellow"), "yellow": ("orange", "gold"),
                    "green": ("lime", "blue"), "blue": ("purple", "navy"), "purple": ("blue", "violet")}
SHAPE_CONFUSIONS = {"circle": ("round", "oval"), "square": ("rectangle", "box"), "triangle": ("pyramid", "arrow"),
                    "star": ("flower", "sparkle"), "diamond": ("square", "kite")}
VW_SPECIAL = ("unanswerable", "yes", "no")

FLICKR_TEXT = {
    "list": "{objects}.",
    "count": ("{Number} shapes on a plain background.", "One shape on a plain background."),
    "sizes": ("{A} {size} {color} {shape} next to {a} {size2} {color2} {shape2}.", "{A} {size} {color} {shape} on "
              "its own."),
    "shapes": ("Some shapes: {shapes}.", "A single {shape}."),
    "colors": ("A picture with {colors} shapes.", "A picture with a {color} shape."),
}

HELDIN_PROMPTS = {"caption": "<Image> Describe the picture in a few words.", "vqa": "<Image> Question: {q} Answer:"}
HELDIN_QUESTIONS = {
    "what_color": "What color is the {shape}?",
    "what_shape": "What shape is the {color} object?",
    "how_many": "How many objects are in the picture?",
    "how_many_color": "How many {color} objects are in the picture?",
    "how_many_shape": "How many {plural} can you see?",
    "exists": "Is there a {color} {shape}?",
    "what_size": "What size is the {color} {shape}?",
    "where": "Where is the {color} {shape}?",
    "bigger": "Which is bigger, the {shape} or the {shape2}?",
}
REGION_PHRASES = {"top left": "at the top left", "top": "at the top", "top right": "at the top right",
                  "left": "on the left", "center": "in the center", "right": "on the right",
                  "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right"}
KNOWLEDGE = (  # held-in text corpus: the world's facts, stated in several ways
    "A {animal} is a {group}.", "{Animals} are {groups}.", "Is a {animal} a {group}? Yes.",
    "Magnets attract {magnetic}.", "A magnet does not attract {other}.", "Objects made of {magnetic} stick to "
    "a magnet.", "Objects made of {other} do not stick to a magnet.",
    "On a map, {direction} is toward the {edge}.",
    "In alphabetical order, {first} comes before {second}.",
)
ANIMAL_PLURALS = {"dog": "dogs", "cat": "cats", "horse": "horses", "rabbit": "rabbits", "parrot": "parrots",
                  "eagle": "eagles", "owl": "owls", "duck": "ducks", "salmon": "salmon", "trout": "trout",
                  "shark": "sharks", "goldfish": "goldfish"}
GROUP_PLURALS = {"mammal": "mammals", "bird": "birds", "fish": "fish"}
MAP_EDGES = {"north": "top", "south": "bottom", "east": "right", "west": "left"}


# ------------------------------------------------------------------------------------------------ helpers

def weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def shuffled_options(rng: random.Random, answer: str, distractors: list[str]) -> tuple[list[str], int]:
    options = [answer] + list(distractors)
    rng.shuffle(options)
    return options, options.index(answer)


def views(sc: dict | None) -> dict:
    """What partial-image rules may see: the colors present, the shapes present, the number of objects."""
    if sc is None:
        return {"colors": [], "shapes": [], "n_objects": 0}
    objs = sc["objects"]
    return {"colors": sorted({o["color"] for o in objs}), "shapes": sorted({o["shape"] for o in objs}),
            "n_objects": len(objs)}


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _clearly_bigger(x: dict, y: dict) -> bool:
    return x["extent"] >= 1.3 * y["extent"] and area(x) >= 1.3 * area(y)


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


def _iq_color_of(rng):
    sc = _distinct_scene(rng)
    target = rng.choice(sc["objects"])
    others = [o["color"] for o in sc["objects"] if o is not target]
    choices, answer = shuffled_options(rng, target["color"], others)
    return {"scene": sc, "question": IQ_QUESTIONS["color_of"][0].format(shape=target["shape"]),
            "choices": choices, "answer": answer}


def _iq_shape_of(rng):
    sc = _distinct_scene(rng)
    target = rng.choice(sc["objects"])
    others = [o["shape"] for o in sc["objects"] if o is not target]
    choices, answer = shuffled_options(rng, target["shape"], others)
    return {"scene": sc, "question": IQ_QUESTIONS["shape_of"][0].format(color=target["color"]),
            "choices": choices, "answer": answer}


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
                and (_clearly_bigger(a, b) or _clearly_bigger(b, a))):
            return q.format(shape=a["shape"], shape2=b["shape"]), (a if _clearly_bigger(a, b) else b)["shape"]
    return None


def knowledge_sentences() -> list[str]:
    """Every fact of the world, in every phrasing of KNOWLEDGE (the held-in text corpus draws from these)."""
    out = []
    for group, animals in ANIMALS.items():
        for animal in animals:
            out.append(KNOWLEDGE[0].format(animal=animal, group=group))
            out.append(KNOWLEDGE[1].format(Animals=sentence(ANIMAL_PLURALS[animal]), groups=GROUP_PLURALS[group]))
            out.append(KNOWLEDGE[2].format(animal=animal, group=group))
    for m in MATERIALS_MAGNETIC:
        out += [KNOWLEDGE[3].format(magnetic=m), KNOWLEDGE[5].format(magnetic=m)]
    for m in MATERIALS_OTHER:
        out += [KNOWLEDGE[4].format(other=m), KNOWLEDGE[6].format(other=m)]
    for direction, edge in MAP_EDGES.items():
        out.append(KNOWLEDGE[7].format(direction=direction, edge=edge))
    words = sorted(set(ALPHABET_WORDS))
    for i, first in enumerate(words):
        out += [KNOWLEDGE[8].format(first=first, second=second) for second in words[i + 1:]]
    return out + list(LECTURES.values())


# Kept for the vocabulary: every word list the generators draw from.
FILL_WORDS = (SHAPES + tuple(SHAPE_PLURALS.values()) + COLOR_NAMES + ("small", "medium", "large") + REGIONS
              + tuple(REGION_PHRASES.values()) + NUMBER_WORDS + tuple(str(d) for d in range(10)) + IQ_WORDS
              + MATERIALS_MAGNETIC + MATERIALS_OTHER + tuple(ANIMALS) + tuple(a for g in ANIMALS.values() for a in g)
              + tuple(ANIMAL_PLURALS.values()) + tuple(GROUP_PLURALS.values()) + tuple(DIRECTIONS)
              + tuple(MAP_EDGES.values()) + tuple(w for v in COLOR_CONFUSIONS.values() for w in v)
              + tuple(w for v in SHAPE_CONFUSIONS.values() for w in v) + VW_SPECIAL + ("a", "an"))
PHRASE_BANKS = (IQ_QUESTIONS, LECTURES, SQA_TEXT, VW_QUESTIONS, FLICKR_TEXT, HELDIN_PROMPTS, HELDIN_QUESTIONS,
                KNOWLEDGE, SQA_TYPES)

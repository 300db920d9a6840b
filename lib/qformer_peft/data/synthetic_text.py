"""Every word the synthetic world writes: phrase banks, word lists, sentence helpers and the world's facts.

The generators (synthetic_questions.py, synthetic_open.py) build all their text from these banks and the
attribute lists of synthetic_world; synthetic.vocabulary() reads PHRASE_BANKS and FILL_WORDS, and a test checks
that generated text never leaves that vocabulary. American spelling throughout ("color").
"""
from __future__ import annotations

from .synthetic_world import COLOR_NAMES, NUMBER_WORDS, REGIONS, SHAPE_PLURALS, SHAPES

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


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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

"""Shortcut audit of the synthetic benchmarks: how far do rules that do not look (properly) get?

Each rule scores every option of a multiple-choice question by a statistic fitted on the train split and picks
the best; ties are broken uniformly, so a rule's accuracy is an expectation (no random draw). Rules:
  letter       P(right | option position)                      -- "always answer (b)"
  option_text  P(right | option text)                          -- "blue is usually right"
  longest      the longest option (no fitting)
  text_prior   P(right | question text, option text)           -- the best answer given the question alone
  colors_only  P(right | question, option, does the option name a color present, how many colors)
  shapes_only  the same with the shapes present
  count_only   P(right | question, option, number of objects)
Fitted on train, scored on held-out items, per benchmark and question type. A rule may beat chance only where
the perception it has is what the question asks for (INTENDED), e.g. count_only on "How many shapes are there?",
or where the question is meant to be answerable from text (ScienceQA types in TEXT_ANSWERABLE).
VizWiz (open answers) gets the text prior only: the most common answer to the same question text on train,
scored with the VQA accuracy min(1, #annotators who gave it / 3).
"""
from __future__ import annotations

from collections import Counter, defaultdict

from .synthetic_text import TEXT_ANSWERABLE
from .synthetic_world import COLOR_NAMES, SHAPES, views, words

MC_RULES = ("letter", "option_text", "longest", "text_prior", "colors_only", "shapes_only", "count_only")
TEXT_RULES = ("option_text", "longest", "text_prior")
TOLERANCE = 0.10  # a rule may reach chance + TOLERANCE on the questions it should not solve
# (benchmark, qtype) -> rules allowed to score high there
INTENDED = {("iconqa", "count_all"): {"count_only"}}
# Text-answerable ScienceQA types: every rule that reads the question or the options may solve them.
INTENDED.update({("scienceqa", t): set(MC_RULES) - {"letter"} for t in TEXT_ANSWERABLE})


def mc_view(item: dict) -> dict:
    """The fields a rule may use, from a generator item (scene included)."""
    v = views(item.get("scene"))
    return {"qtype": item["qtype"], "question": item["question"], "choices": list(item["choices"]),
            "answer": item["answer"], **v}


def _mentions(option: str, present: list[str], family: tuple[str, ...]):
    named = [w for w in words(option) if w in family]
    return None if not named else tuple(w in present for w in named)


def _key(rule: str, q: dict, i: int, option: str):
    if rule == "letter":
        return (i,)
    if rule == "option_text":
        return (option,)
    if rule == "text_prior":
        return (q["question"], option)
    if rule == "colors_only":
        return (q["question"], option, _mentions(option, q["colors"], COLOR_NAMES), len(q["colors"]))
    if rule == "shapes_only":
        return (q["question"], option, _mentions(option, q["shapes"], SHAPES), len(q["shapes"]))
    if rule == "count_only":
        return (q["question"], option, q["n_objects"])
    raise ValueError(f"unknown rule {rule!r}")


def fit(rule: str, train: list[dict]) -> dict:
    """key -> (times right, times offered)."""
    stats: dict = defaultdict(lambda: [0, 0])
    if rule == "longest":
        return stats
    for q in train:
        for i, option in enumerate(q["choices"]):
            entry = stats[_key(rule, q, i, option)]
            entry[0] += i == q["answer"]
            entry[1] += 1
    return stats


def expected_hit(rule: str, stats: dict, q: dict) -> float:
    """Probability that the rule picks the right option (uniform among tied best options)."""
    if rule == "longest":
        scores = [len(o) for o in q["choices"]]
    else:
        # Laplace-smoothed rate; an unseen key scores 1/2 like every other unseen one.
        scores = [(stats[k][0] + 1) / (stats[k][1] + 2) if k in stats else 0.5
                  for k in (_key(rule, q, i, o) for i, o in enumerate(q["choices"]))]
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if s == best]
    return (q["answer"] in tied) / len(tied)


def mc_table(benchmark: str, train: list[dict], held_out: list[dict]) -> list[dict]:
    """One row per question type (and "all"): n, chance, and each rule's held-out accuracy."""
    fitted = {rule: fit(rule, train) for rule in MC_RULES}
    by_type: dict[str, list[dict]] = defaultdict(list)
    for q in held_out:
        by_type[q["qtype"]].append(q)
    rows = []
    for qtype, qs in sorted(by_type.items()) + [("all", held_out)]:
        row = {"benchmark": benchmark, "qtype": qtype, "n": len(qs),
               "chance": sum(1 / len(q["choices"]) for q in qs) / len(qs)}
        for rule in MC_RULES:
            row[rule] = sum(expected_hit(rule, fitted[rule], q) for q in qs) / len(qs)
        rows.append(row)
    return rows


def violations(rows: list[dict], tolerance: float = TOLERANCE) -> list[str]:
    """Rules above chance + tolerance where they should not be (multiple-choice and VizWiz rows)."""
    bad = []
    for row in rows:
        if row["qtype"] == "all":
            continue
        allowed = INTENDED.get((row["benchmark"], row["qtype"]), set())
        for rule in (r for r in MC_RULES if r in row):
            if rule not in allowed and row[rule] > row["chance"] + tolerance:
                bad.append(f"{row['benchmark']}/{row['qtype']}: {rule} {row[rule]:.2f} > chance "
                           f"{row['chance']:.2f} + {tolerance}")
    return bad


def vizwiz_table(train: list[dict], held_out: list[dict]) -> list[dict]:
    """Text prior on the open-ended set, per question type, VQA accuracy against a uniform guess (chance).

    Items: {qtype, question, answers (10 strings), answerable}. Answerable items are grouped by type, with
    chance = a uniform guess among the majority answers that type has on train; unanswerable items (blurred
    or dark pictures) form their own row, where chance guesses among their type's answers or "unanswerable".
    """
    def majority(answers):
        counts = Counter(answers)
        best = max(counts.values())
        return next(a for a in answers if counts[a] == best)

    def group(q):
        return q["qtype"] if q["answerable"] else "unanswerable"

    per_question: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    space: dict[str, set] = defaultdict(set)
    for q in train:
        gold = majority(q["answers"])
        per_question[q["question"]][gold] += 1
        overall[gold] += 1
        space[group(q)].add(gold)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for q in held_out:
        by_group[group(q)].append(q)
    rows = []
    for name, qs in sorted(by_group.items()) + [("all", held_out)]:
        acc = chance = 0.0
        for q in qs:
            prior = per_question.get(q["question"]) or overall
            acc += vqa_accuracy(prior.most_common(1)[0][0], q["answers"])
            guesses = sorted(space[q["qtype"]] | {"unanswerable"}) if not q["answerable"] else sorted(space[q["qtype"]])
            chance += sum(vqa_accuracy(a, q["answers"]) for a in guesses) / len(guesses)
        rows.append({"benchmark": "vizwiz", "qtype": name, "n": len(qs), "chance": chance / len(qs),
                     "text_prior": acc / len(qs)})
    return rows


def vqa_accuracy(guess: str, answers: list[str]) -> float:
    return min(1.0, answers.count(guess) / 3)


def format_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    cells = [[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def audit(seed: int = 0, n_train: int = 6000, n_eval: int = 3000) -> tuple[list[dict], list[dict]]:
    """Audit the generators (no pixels): fit on n_train items, score n_eval fresh ones, per question type.

    Pools larger than the mini splits keep the per-type noise (about 0.5 / sqrt(n)) well under the tolerance.
    Returns the multiple-choice rows (IconQA, ScienceQA with a picture) and the VizWiz rows.
    """
    import random

    from .synthetic_open import vizwiz_item
    from .synthetic_questions import iconqa_item, scienceqa_item

    def pool(make, part, n):
        rng = random.Random(f"qformer-peft-audit/{seed}/{part}")
        return [make(rng) for _ in range(n)]

    rows = []
    for bench, make in (("iconqa", iconqa_item), ("scienceqa", scienceqa_item)):
        train, held = (pool(make, f"{bench}/{p}", n) for p, n in (("train", n_train), ("eval", n_eval)))
        rows += mc_table(bench, [mc_view(i) for i in train], [mc_view(i) for i in held])

    def vw(item):
        return {"qtype": item["qtype"], "question": item["question"], "answerable": item["answerable"],
                "answers": [a["answer"] for a in item["answers"]]}

    vrows = vizwiz_table([vw(i) for i in pool(vizwiz_item, "vizwiz/train", n_train)],
                         [vw(i) for i in pool(vizwiz_item, "vizwiz/eval", n_eval)])
    return rows, vrows

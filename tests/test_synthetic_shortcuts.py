"""No synthetic benchmark is solvable by a shortcut, and the audit does catch shortcuts when they exist."""
import random

import pytest

from qformer_peft.data.shortcuts import (TOLERANCE, audit, expected_hit, fit, mc_table, mc_view, violations,
                                         vizwiz_table)
from qformer_peft.data.synthetic_questions import iconqa_item


@pytest.fixture(scope="module")
def tables():
    return audit(seed=0)


def test_no_rule_beats_chance_where_it_should_not(tables):
    rows, vrows = tables
    assert violations(rows + vrows) == []
    qtypes = {(r["benchmark"], r["qtype"]) for r in rows}
    assert len([q for q in qtypes if q[0] == "iconqa"]) >= 10 and len([q for q in qtypes if q[0] == "scienceqa"]) >= 8
    assert all(r["n"] >= 100 for r in rows)  # enough items per type for a 0.1 tolerance to mean something


def test_intended_perception_and_text_answerable_types_do_score_high(tables):
    rows, _ = tables
    row = {(r["benchmark"], r["qtype"]): r for r in rows}
    assert row["iconqa", "count_all"]["count_only"] > 0.95  # the count is exactly what that question needs
    assert row["scienceqa", "know_magnet"]["text_prior"] > 0.95  # answerable from the lecture alone
    assert row["scienceqa", "magnet"]["text_prior"] < row["scienceqa", "magnet"]["chance"] + TOLERANCE


def _pool(n, seed=5):
    rng = random.Random(seed)
    return [mc_view(iconqa_item(rng)) for _ in range(n)]


def test_audit_catches_a_planted_letter_bias():
    train, held = _pool(1500), _pool(600, seed=6)
    for q in train + held:  # move the answer to the first option, as a careless generator might
        q["choices"].insert(0, q["choices"].pop(q["answer"]))
        q["answer"] = 0
    rows = mc_table("iconqa", train, held)
    assert all(r["letter"] > 0.95 for r in rows)
    assert any("letter" in v for v in violations(rows))


def test_audit_catches_distractors_absent_from_the_picture():
    train, held = _pool(3000), _pool(1000, seed=6)
    for q in train + held:  # color questions whose wrong options name colors not in the picture
        if q["qtype"] == "color_of":
            q["colors"] = [q["choices"][q["answer"]]]
    rows = mc_table("iconqa", train, held)
    color_row = next(r for r in rows if r["qtype"] == "color_of")
    assert color_row["colors_only"] > 0.9 and "iconqa/color_of: colors_only" in " ".join(violations(rows))


def test_ties_split_the_hit_and_longest_needs_no_fitting():
    q = {"qtype": "t", "question": "q", "choices": ["aa", "b", "aa"], "answer": 2, "colors": [], "shapes": [],
         "n_objects": 1}
    assert expected_hit("longest", fit("longest", []), q) == 0.5
    assert expected_hit("letter", fit("letter", []), q) == pytest.approx(1 / 3)


def test_vizwiz_text_prior_uses_vqa_accuracy():
    def item(question, gold, n_gold):
        return {"qtype": "color", "question": question, "answerable": 1,
                "answers": [gold] * n_gold + ["orange"] * (10 - n_gold)}
    train = [item("What color is this?", "red", 8)] * 3
    held = [item("What color is this?", "red", 2), item("What color is this?", "blue", 9)]
    row = next(r for r in vizwiz_table(train, held) if r["qtype"] == "color")
    assert row["text_prior"] == pytest.approx((2 / 3 + 0) / 2)

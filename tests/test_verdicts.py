"""The statistics of the claim ledger (qformer_peft.verdicts), and their calibration on generated predictions:
an A/A comparison passes a "beats" claim, or fails a "comparable" one, at most at the nominal rate; a planted
effect is detected; a cell that did not move is not resolvable."""
import math

import numpy as np
import pytest

from qformer_peft import verdicts as V

NOMINAL = V.ALPHA_SIDE          # one side of the 95% interval


def test_t_and_normal_quantiles_match_the_tables():
    assert V.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-3)
    assert V.t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-3)
    assert V.t_quantile(0.8, 2) == pytest.approx(1.0607, abs=1e-3)
    assert V.normal_quantile(0.975) == pytest.approx(1.95996, abs=1e-4)
    assert V.t_cdf(0.0, 3) == pytest.approx(0.5)


def test_seed_intervals_are_t_intervals_and_one_seed_has_no_spread():
    part = V.judge([1.0, 1.1, 0.9])
    assert part == V.HOLDS and part.lo == pytest.approx(1.0 - 4.3027 * 0.1 / math.sqrt(3), abs=1e-3)
    assert V.judge([-1.0, -1.1, -0.9]) == V.FAILS
    assert V.judge([1.0, -1.0, 0.5]) == V.INCONCLUSIVE
    assert V.judge([5.0]) == V.INCONCLUSIVE
    assert V.judge([0.5, 0.6], margin=1.0) == V.INCONCLUSIVE   # 2 seeds: t with 1 degree of freedom is wide
    assert V.judge([0.5, 0.6, 0.55], margin=1.0) == V.FAILS
    assert V.welch_interval([3.0, 3.1, 2.9], [0.0, 0.2, -0.2]) == V.HOLDS
    assert V.judge([2.0, 2.0, 2.0]) == V.INCONCLUSIVE                    # seeds that agree exactly: no interval


def test_holm_corrects_the_failing_parts_of_a_composite_claim():
    assert V.holm_rejects([0.01, 0.02, 0.5], alpha=0.05) == [True, True, False]
    assert V.holm_rejects([0.03, 0.04], alpha=0.05) == [False, False]      # 0.03 > 0.05 / 2
    # a part that fails on its own (p_fail 0.02 < 0.025) but not after Holm over 4 parts
    weak = V.Judged(-1.0, -2.0, -0.1, p_fail=0.02)
    ok = V.Judged(1.0, 0.5, 1.5, p_fail=0.99)
    assert weak == V.FAILS and V.combine([weak]) == V.FAILS
    assert V.combine([weak, ok, ok, ok]) == V.INCONCLUSIVE
    assert V.combine([V.Judged(-1.0, -2.0, -0.5, p_fail=0.001), ok, ok, ok]) == V.FAILS
    assert V.combine([ok, ok]) == V.HOLDS
    assert V.combine([ok, ok.unresolved("did not move")]) == V.NOT_RESOLVABLE
    assert V.combine([]) == V.INCONCLUSIVE


def draw(rng, n=200, seeds=3, seed_sd=0.02, shift=0.0):
    """Two setups' predictions on the same items: item difficulty shared, a per-seed shift, `shift` planted."""
    p = rng.beta(2, 2, size=n)
    items = [str(i) for i in range(n)]

    def side(s):
        level = np.clip(p + rng.normal(0, seed_sd, size=(seeds, 1)) + s, 0, 1)
        return V.Scores(list(range(seeds)), items, (rng.random((seeds, n)) < level).astype(float))

    return side(shift), side(0.0)


@pytest.mark.slow
def test_a_a_comparisons_pass_or_fail_claims_at_most_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    draws, beats, comparable_fails, at_margin_fails = 150, 0, 0, 0
    for k in range(draws):
        a, b = draw(rng)
        beats += V.paired_bootstrap(a, b, n_boot=400, seed=k) == V.HOLDS
        comparable_fails += V.paired_bootstrap(a, b, margin=-V.COMPARABLE_TOL, n_boot=400, seed=k) == V.FAILS
        a, b = draw(rng, shift=-V.COMPARABLE_TOL / 100)           # exactly at the "comparable" margin
        at_margin_fails += V.paired_bootstrap(a, b, margin=-V.COMPARABLE_TOL, n_boot=400, seed=k) == V.FAILS
    slack = 3 * math.sqrt(NOMINAL * (1 - NOMINAL) / draws)
    assert beats / draws <= NOMINAL + slack
    assert comparable_fails / draws <= NOMINAL + slack
    assert at_margin_fails / draws <= NOMINAL + slack


def test_a_planted_effect_of_known_size_is_detected_and_sized():
    rng = np.random.default_rng(1)
    found = []
    for k in range(20):
        a, b = draw(rng, n=400, shift=0.15)                       # +15 points
        part = V.paired_bootstrap(a, b, n_boot=400, seed=k)
        found.append(part == V.HOLDS and part.lo < 15.0 < part.hi)
        assert part.mde < 15.0                                     # this design can see 15 points
    assert sum(found) >= 17


def test_hierarchical_bootstrap_pairs_items_and_is_reproducible():
    rng = np.random.default_rng(2)
    a, b = draw(rng)
    one, two = V.paired_bootstrap(a, b), V.paired_bootstrap(a, b)
    assert (one.lo, one.hi) == (two.lo, two.hi)
    assert one.estimate == pytest.approx(100 * (a.values.mean() - b.values.mean()))
    same = V.paired_bootstrap(a, a)                      # seeds are drawn per side: only their spread remains
    assert same == V.INCONCLUSIVE and same.estimate == 0.0 and same.lo < 0.0 < same.hi
    chance = V.Scores([0], a.items, np.full((1, len(a.items)), 0.25))
    assert V.paired_bootstrap(a, chance).estimate == pytest.approx(100 * a.values.mean() - 25.0)


def test_a_cell_that_did_not_move_is_not_resolvable(tmp_path):
    from fixtures.study_runs import write_study

    from qformer_peft import claims, scores
    from qformer_peft import report_charts as rc

    runs_dir = write_study(tmp_path, benchmarks=("iconqa",), rows=(("baseline", None, None), ("qf-lora", "all", None)),
                           ranks=(8,), seeds=(42, 43), adalora=(), zero_shot=80.0)
    df = rc.runs_frame(runs_dir)
    mv = scores.movement(df)
    assert not mv.moved and "vs zero-shot" in mv.text
    v = claims.accuracy_claim(df, "qf-lora", tolerance=V.COMPARABLE_TOL)
    assert v.verdict == V.NOT_RESOLVABLE and "did not move" in v.evidence


def test_the_headline_part_is_a_failing_one_when_a_part_fails_else_the_weakest():
    weak, strong, bad = V.Judged(1.0, 0.1, 1.9), V.Judged(5.0, 4.0, 6.0), V.Judged(-3.0, -4.0, -2.0, p_fail=0.001)
    assert V.headline([strong, weak]) is weak
    assert V.headline([strong, weak, bad]) is bad

"""The statistics every claim is judged by: 95% intervals, Holm's correction, the minimum detectable
effect, and the four answers.

A claim reduces to one or more parts; each part is a statistic whose sign is the claim's direction
(e.g. accuracy of a setup minus the baseline's) with a 95% interval:

- from test items (`paired_bootstrap`): a hierarchical bootstrap over seeds and test items, drawn from
  each run's predictions.jsonl; items are shared by both sides (paired), seeds are drawn per side. Items and
  seeds are crossed, and resampling both counts each item's run-to-run noise twice: the interval errs wide
  (conservative) when the seeds agree, and is near nominal when they spread;
- from seed-level values only (`seed_interval`, `welch_interval`, e.g. AdaLoRA ranks): Student t
  intervals over seeds.

A part holds when its interval lies above the claim's margin, does not hold when it lies below, and is
inconclusive otherwise; a part whose cells did not move from their base model is not resolvable.
`combine` reads a composite claim: it does not hold when Holm's step-down procedure rejects a part's
"holds or ties" hypothesis (one-sided, at the level of one side of the 95% interval, over the parts judged);
it holds when every part holds (an intersection-union test needs no correction); else it is not resolvable
when a part is, else inconclusive. The minimum detectable effect is the difference a part would detect
with 80% power at this design: (z_0.975 + z_0.8) standard errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
NOT_RESOLVABLE = "not resolvable at this scale"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_RESOLVABLE)
NOT_COMPARABLE = "not comparable at this width"  # a figure shown beside the verdicts, not one of them
LEVEL = 0.95
ALPHA_SIDE = (1 - LEVEL) / 2                     # one side of the 95% interval
POWER = 0.8
COMPARABLE_TOL = 1.0                             # "comparable": at most 1 accuracy point (percent) below
N_BOOT = 2000
BOOT_SEED = 0                                    # the bootstrap's own seed: same inputs, same interval
CORRECTION = "Holm"


# --- distributions (no scipy in the environment) -----------------------------------------------------------
def normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF (bisection on math.erf; exact to ~1e-10)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def t_cdf(x: float, df: float) -> float:
    """Student t CDF, by Simpson's rule on its density (df >= 1); accurate to ~1e-8 for |x| < 1e3."""
    if not math.isfinite(x):
        return 0.0 if x < 0 else 1.0
    if df > 1e4:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))
    c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    # integrate in u = atan(t) so that the heavy tails of small df stay on a bounded interval
    u = np.linspace(0.0, math.atan(abs(x)), 2001)
    t = np.tan(u)
    f = np.exp(c - (df + 1) / 2 * np.log1p(t * t / df)) * (1 + t * t)
    h = u[1] - u[0]
    area = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return float(0.5 + math.copysign(min(area, 0.5), x))


def t_quantile(p: float, df: float) -> float:
    lo, hi = -1e3, 1e3
    for _ in range(100):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


Z_MDE = normal_quantile(1 - ALPHA_SIDE) + normal_quantile(POWER)


# --- one part of a claim ----------------------------------------------------------------------------------
class Judged(str):
    """A part's verdict (the string itself: compares and prints as 'holds' ...) with what it was read from:
    estimate, 95% interval [lo, hi], margin, one-sided p-values against "holds" (p_hold: the statistic is at
    most the margin) and against "does not hold" (p_fail: it is at least the margin), minimum detectable
    effect, seeds and items."""

    estimate: float
    lo: float
    hi: float
    margin: float
    p_hold: float
    p_fail: float
    mde: float
    n_seeds: int
    n_items: int | None
    label: str
    note: str

    def __new__(cls, estimate: float, lo: float, hi: float, *, margin: float = 0.0, p_hold: float = float("nan"),
                p_fail: float = float("nan"), mde: float = float("nan"), n_seeds: int = 0,
                n_items: int | None = None, resolvable: bool = True, label: str = "", note: str = "") -> "Judged":
        if not resolvable:
            verdict = NOT_RESOLVABLE
        elif not (math.isfinite(lo) and math.isfinite(hi)):
            verdict = INCONCLUSIVE
        elif lo > margin:
            verdict = HOLDS
        elif hi < margin:
            verdict = FAILS
        else:
            verdict = INCONCLUSIVE
        self = super().__new__(cls, verdict)
        self.estimate, self.lo, self.hi, self.margin = float(estimate), float(lo), float(hi), float(margin)
        self.p_hold, self.p_fail, self.mde = float(p_hold), float(p_fail), float(mde)
        self.n_seeds, self.n_items, self.label, self.note = int(n_seeds), n_items, label, note
        return self

    @property
    def verdict(self) -> str:
        return str.__str__(self)

    def unresolved(self, note: str) -> "Judged":
        """The same numbers, marked not resolvable (its cells did not move from their base)."""
        return Judged(self.estimate, self.lo, self.hi, margin=self.margin, p_hold=self.p_hold, p_fail=self.p_fail,
                      mde=self.mde, n_seeds=self.n_seeds, n_items=self.n_items, resolvable=False, label=self.label,
                      note=note)

    def interval_text(self, scale: float = 1.0, unit: str = "") -> str:
        if not math.isfinite(self.estimate):
            return "no data"
        if not math.isfinite(self.lo):
            return f"{self.estimate * scale:+.2f}{unit} (no spread to judge by)"
        return f"{self.estimate * scale:+.2f}{unit} [{self.lo * scale:+.2f}, {self.hi * scale:+.2f}]"

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "verdict": self.verdict, "estimate": _num(self.estimate), "ci95": [
            _num(self.lo), _num(self.hi)], "margin": self.margin, "p_hold": _num(self.p_hold),
            "p_fail": _num(self.p_fail), "mde": _num(self.mde), "n_seeds": self.n_seeds, "n_items": self.n_items,
            "note": self.note}


def _num(x: float) -> float | None:
    return round(float(x), 6) if x is not None and math.isfinite(x) else None


def no_data(label: str = "", note: str = "no data") -> Judged:
    nan = float("nan")
    return Judged(nan, nan, nan, label=label, note=note)


def seed_interval(values: Sequence[float], margin: float = 0.0, label: str = "") -> Judged:
    """t interval of the mean of seed-level values (fewer than 2 finite values: inconclusive)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return no_data(label)
    m = float(v.mean())
    if len(v) < 2:
        nan = float("nan")
        return Judged(m, nan, nan, margin=margin, n_seeds=1, label=label, note="1 seed: no spread")
    return _t_part(m, float(v.std(ddof=1) / math.sqrt(len(v))), len(v) - 1, margin, len(v), label)


def welch_interval(a: Sequence[float], b: Sequence[float], margin: float = 0.0, label: str = "") -> Judged:
    """t interval (Welch) of mean(a) - mean(b) for independent seed-level values, e.g. a run against its
    null runs."""
    a = np.asarray([x for x in a if x is not None and np.isfinite(x)], dtype=float)
    b = np.asarray([x for x in b if x is not None and np.isfinite(x)], dtype=float)
    if len(a) == 0 or len(b) == 0:
        return no_data(label, "no runs on one side")
    m = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        nan = float("nan")
        return Judged(m, nan, nan, margin=margin, n_seeds=min(len(a), len(b)), label=label,
                      note="a single seed on one side: no spread")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    return _t_part(m, se, df, margin, min(len(a), len(b)), label)


def _t_part(m: float, se: float, df: float, margin: float, n: int, label: str) -> Judged:
    if se == 0:  # seeds that agree exactly (quantised accuracies) say nothing about the spread of the next one
        nan = float("nan")
        return Judged(m, nan, nan, margin=margin, n_seeds=n, label=label, note="no spread over seeds: no interval")
    q = t_quantile(1 - ALPHA_SIDE, df)
    tstat = (m - margin) / se
    return Judged(m, m - q * se, m + q * se, margin=margin, p_hold=1 - t_cdf(tstat, df), p_fail=t_cdf(tstat, df),
                  mde=(q + t_quantile(POWER, df)) * se, n_seeds=n, label=label)


# --- from test items -------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per-item scores of one configuration: one row per seed, one column per test item (aligned ids)."""
    seeds: list[Any]
    items: list[str]
    values: np.ndarray                       # seeds x items, e.g. 1.0 correct / 0.0 wrong
    runs: list[str] = field(default_factory=list)

    def on(self, items: Sequence[str]) -> "Scores":
        index = {k: i for i, k in enumerate(self.items)}
        cols = [index[k] for k in items]
        return Scores(self.seeds, list(items), self.values[:, cols], self.runs)

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.values.size else float("nan")


def scores_from_predictions(per_seed: Mapping[Any, Sequence[Mapping[str, Any]]], key: str = "correct",
                            runs: Sequence[str] = ()) -> Scores:
    """Scores from predictions.jsonl rows per seed ({seed: rows}); items are those every seed has."""
    if not per_seed:
        return Scores([], [], np.zeros((0, 0)), list(runs))
    tables = {s: {str(r["id"]): float(bool(r[key])) if isinstance(r[key], bool) else float(r[key])
                  for r in rows if key in r} for s, rows in per_seed.items()}
    items = sorted(set.intersection(*(set(t) for t in tables.values())))
    seeds = sorted(tables)
    return Scores(seeds, items, np.array([[tables[s][i] for i in items] for s in seeds], dtype=float).reshape(
        len(seeds), len(items)), list(runs))


def common_items(*scores: Scores) -> list[str]:
    return sorted(set.intersection(*(set(s.items) for s in scores))) if scores else []


def _boot_means(values: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per bootstrap draw: the mean over resampled seeds of each seed's mean over the resampled items."""
    per_seed = values @ weights.T / weights.shape[1]                # seeds x draws
    pick = rng.integers(values.shape[0], size=(weights.shape[0], values.shape[0]))
    return np.take_along_axis(per_seed.T, pick, axis=1).mean(axis=1)


def paired_bootstrap(a: Scores, b: Scores | None = None, *, margin: float = 0.0, scale: float = 100.0,
                     reference: float | None = None, label: str = "", n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED) -> Judged:
    """scale * (mean(a) - mean(b)) on the items both have, with its 95% percentile interval from a
    hierarchical bootstrap: each draw resamples the test items (the same draw for both sides) and then
    each side's seeds. b None: against the constant `reference` (e.g. chance), or 0."""
    items = common_items(a, b) if b is not None else a.items
    if not items or not a.seeds or (b is not None and not b.seeds):
        return no_data(label, "no predictions on common items")
    a = a.on(items)
    rng = np.random.default_rng(seed)
    n = len(items)
    draws = rng.integers(n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]   # item indices per draw
    w = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)
    da = _boot_means(a.values, w, rng)
    est = a.values.mean()
    if b is not None:
        b = b.on(items)
        da = da - _boot_means(b.values, w, rng)
        est -= b.values.mean()
    else:
        ref = 0.0 if reference is None else reference / scale
        da, est = da - ref, est - ref
    draws, est = scale * da, scale * float(est)
    lo, hi = np.quantile(draws, [ALPHA_SIDE, 1 - ALPHA_SIDE])
    p_hold = (1 + np.sum(draws <= margin)) / (1 + n_boot)
    p_fail = (1 + np.sum(draws >= margin)) / (1 + n_boot)
    n_seeds = min(len(a.seeds), len(b.seeds)) if b is not None else len(a.seeds)
    return Judged(est, float(lo), float(hi), margin=margin, p_hold=p_hold, p_fail=p_fail,
                  mde=Z_MDE * float(draws.std(ddof=1)), n_seeds=n_seeds, n_items=len(items), label=label)


def mean_interval(a: Scores, *, scale: float = 100.0, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, float]:
    """95% interval of scale * mean(a) (hierarchical bootstrap over items and seeds)."""
    part = paired_bootstrap(a, None, scale=scale, n_boot=n_boot, seed=seed)
    return part.lo, part.hi


# --- several parts -----------------------------------------------------------------------------------------
def holm_rejects(pvalues: Sequence[float], alpha: float = ALPHA_SIDE) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [False] * len(pvalues)
    for k, i in enumerate(order):
        if not pvalues[i] <= alpha / (len(pvalues) - k):
            break
        out[i] = True
    return out


def combine(parts: Sequence[str]) -> str:
    """The verdict of a claim made of parts (see the module's docstring). Parts that carry p-values
    (Judged) are corrected with Holm; a plain verdict string counts as 'does not hold' only on its own."""
    if not parts:
        return INCONCLUSIVE
    judged = [p for p in parts if p != NOT_RESOLVABLE]
    p_fail = [p.p_fail if isinstance(p, Judged) and math.isfinite(p.p_fail) else (0.0 if p == FAILS else 1.0)
              for p in judged]
    if any(holm_rejects(p_fail)) and any(p == FAILS for p in judged):
        return FAILS
    if any(p == NOT_RESOLVABLE for p in parts):
        return NOT_RESOLVABLE
    return HOLDS if all(p == HOLDS for p in parts) else INCONCLUSIVE


def claim_mde(parts: Sequence[str]) -> float:
    """The claim's minimum detectable effect: the largest of its parts' (every part must be detected)."""
    vals = [p.mde for p in parts if isinstance(p, Judged) and math.isfinite(p.mde)]
    return max(vals) if vals else float("nan")


def headline(parts: Sequence[str]) -> Judged | None:
    """The part a claim's one-line summary shows: a failing part when one fails (the one furthest below its
    margin), else the one nearest its margin (the weakest link)."""
    judged = [p for p in parts if isinstance(p, Judged) and math.isfinite(p.estimate)]
    failing = [p for p in judged if p == FAILS]
    if failing:
        return min(failing, key=lambda p: p.hi - p.margin)
    if not judged:
        return None
    return min(judged, key=lambda p: (p.lo - p.margin) if math.isfinite(p.lo) else -math.inf)


def paired(a: Mapping[Any, float], b: Mapping[Any, float]) -> list[float]:
    """a - b seed by seed, on the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def fmt(samples: Sequence[float], scale: float = 1.0, unit: str = "") -> str:
    """Seed-level values as 'mean [95% t interval] (n=...)'."""
    part = seed_interval([s * scale for s in samples])
    if not math.isfinite(part.estimate):
        return "no data"
    if part.n_seeds < 2:
        return f"{part.estimate:+.2f}{unit} (1 seed: no spread)"
    return f"{part.estimate:+.2f}{unit} [{part.lo:+.2f}, {part.hi:+.2f}] (n={part.n_seeds})"


def judge(samples: Sequence[float], margin: float = 0.0) -> Judged:
    """Seed-level values of a statistic that is positive where the claim holds, judged by their 95% t
    interval against margin."""
    return seed_interval(samples, margin)

"""The README's results block: a short Markdown summary of a study, from the files it writes in reports/
(claims.json, table1.csv, study_timings.json), between two marker lines of the README.

    qformer-peft report --readme README.md
"""
from __future__ import annotations

from pathlib import Path

from . import results, runs
from .paper import CLAIM_ROWS
from .verdicts import FAILS, HOLDS

README_BLOCK = ("<!-- results: begin -->", "<!-- results: end -->")


def results_markdown(reports_dir: str | Path) -> str:
    """A short Markdown summary of a study from reports/claims.json, reports/table1.csv and
    reports/study_timings.json: verdict counts, the claim rows of Table 1 (accuracy, 95% interval, the base's
    zero-shot score, moved or not), the learning-rate pilot's choice, and the study's time."""
    import pandas as pd

    reports_dir = Path(reports_dir)
    data, table = results.read_results(reports_dir)
    counts = data["counts"]
    decided = [k for k in (HOLDS, FAILS) if counts.get(k)]
    lines = ["Verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + "."
             + "".join(f" {k.capitalize()}: " + ", ".join(c["id"] for c in data["claims"] if c["verdict"] == k) + "."
                       for k in decided)]
    rows = table[table["setup"].isin([r[0] for r in CLAIM_ROWS]) & (table["n_seeds"] > 1)]
    if not rows.empty:
        lines += ["", f"Claim rows, {rows['n_seeds'].min()}+ seeds × {rows['n_test_items'].min()}+ test items each "
                  "(test accuracy, 95% CI; the base's zero-shot score on the same items; moved beyond it and chance):",
                  "", "| LLM | benchmark | setup | accuracy [95% CI] | zero-shot | moved |", "|---|---|---|---|---|---|"]
        for r in rows.itertuples():
            moved = {True: "yes", False: "no"}.get(r.moved, "–") if not pd.isna(r.moved) else "–"
            zs = "–" if pd.isna(r.zero_shot) else f"{r.zero_shot:.1f}"
            lines.append(f"| {r.llm} | {r.benchmark} | {r.setup} | "
                         f"{r.acc_mean:.1f} [{r.acc_ci95_lo:.1f}, {r.acc_ci95_hi:.1f}] | {zs} | {moved} |")
    pilot = pd.DataFrame(data.get("rate_pilot") or [])
    if not pilot.empty:
        own = pilot[pilot["profile_rate"]]
        lines += ["", "Learning-rate pilot (validation): " + "; ".join(
            f"{r.llm} {r.rate_class} {r.learning_rate:g} " + ("chosen" if r.chosen else "not chosen")
            for r in own.itertuples()) + "."]
    timings = reports_dir / "study_timings.json"
    if timings.is_file():
        t = runs.read_json(timings)
        lines += ["", f"Study time: {t['total_s'] / 60:.1f} min ("
                  + ", ".join(f"{k} {v / 60:.1f}" for k, v in t["stages_s"].items()) + f" min), {t['jobs']} workers."]
    return "\n".join(lines) + "\n"


def write_readme_results(readme: str | Path, reports_dir: str | Path) -> bool:
    """Replace the README's results block (README_BLOCK markers) with results_markdown; False when the README
    has no such block."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    begin, end = README_BLOCK
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    runs.atomic_write(readme, f"{head}{begin}\n{results_markdown(reports_dir)}{end}{tail}")
    return True

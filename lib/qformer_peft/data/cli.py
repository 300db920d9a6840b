"""`qformer-peft data ...`: check a benchmark folder, write the synthetic world, audit it for shortcuts.

    qformer-peft data check --dataset iconqa --root DIR     counts per split and every problem; exit 0 only if none
    qformer-peft data synth --out DIR --size smoke --seed 0 write the four benchmarks + held-in tasks into DIR
    qformer-peft data shortcuts --seed 0                    how far letter / text / partial-image rules get
"""
from __future__ import annotations

import argparse
import sys
import time

from . import DATASETS, SPLITS, DataError, load


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="write, load and check the benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="data_command", required=True)

    check = sub.add_parser("check", help="read every split of a benchmark folder and list its problems")
    check.add_argument("--dataset", required=True, choices=DATASETS)
    check.add_argument("--root", required=True, help="the benchmark's folder, in its real layout")
    check.set_defaults(func=run_check)

    synth = sub.add_parser("synth", help="write the synthetic benchmarks and held-in tasks")
    synth.add_argument("--out", required=True, help="an empty or new folder (or an earlier synthesis)")
    synth.add_argument("--size", default="smoke", choices=("tiny", "smoke", "mini"))
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=run_synth)

    shortcuts = sub.add_parser("shortcuts", help="audit the synthetic generators for answer shortcuts")
    shortcuts.add_argument("--seed", type=int, default=0)
    shortcuts.add_argument("--n-train", type=int, default=6000)
    shortcuts.add_argument("--n-eval", type=int, default=3000)
    shortcuts.set_defaults(func=run_shortcuts)


def run_check(args: argparse.Namespace) -> int:
    n_problems = 0
    for split in SPLITS:
        try:
            loaded = load(args.dataset, args.root, split, skip_bad=True, img_only=False)
        except DataError as err:
            print(f"{split}: unreadable: {err}")
            n_problems += 1
            continue
        with_image = sum(r.image is not None for r in loaded.records)
        extra = f" ({with_image} with image)" if args.dataset == "scienceqa" else ""
        if loaded.records and not any(r.answers or r.choices for r in loaded.records):
            # VizWiz's official test annotations: fine for a leaderboard submission, nothing to score here
            extra += (" UNANSWERED (no answers: it cannot be scored; runs score val instead, test_split='auto', "
                      "as LAVIS does)")
        print(f"{split}: {len(loaded.records)} records{extra}, {len(loaded.problems)} problems")
        for problem in loaded.problems:
            print(f"  {problem}")
        n_problems += len(loaded.problems)
    print(f"{args.dataset} at {args.root}: {n_problems} problem(s)")
    return 0 if n_problems == 0 else 1


def run_synth(args: argparse.Namespace) -> int:
    from .synthetic import synthesize

    start = time.perf_counter()
    try:
        paths = synthesize(args.out, args.size, args.seed)
    except FileExistsError as err:
        print(f"data synth: {err}", file=sys.stderr)
        return 2
    print(f"wrote the {args.size} synthetic world (seed {args.seed}) in {time.perf_counter() - start:.1f} s:")
    for name, path in paths.items():
        print(f"  {name:10s} {path}")
    return 0


def run_shortcuts(args: argparse.Namespace) -> int:
    from .shortcuts import TOLERANCE, audit, format_table, violations

    rows, vrows = audit(args.seed, args.n_train, args.n_eval)
    print(format_table(rows))
    print()
    print(format_table(vrows))
    bad = violations(rows + vrows)
    print(f"\n{len(bad)} rule(s) above chance + {TOLERANCE} where they should not be")
    for line in bad:
        print(f"  {line}")
    return 0 if not bad else 1

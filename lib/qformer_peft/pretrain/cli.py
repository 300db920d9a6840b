"""The `qformer-peft base` command: build, list and locate the embedded base models."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import runs
from ..models.presets import SCALED_FROM
from .base import DEFAULT_SEED, base_path, build_base, default_cache_dir, ensure_base
from .recipe import LLMS, RECIPES, recipe_for


def list_bases(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every finished build in the cache: name, path, key and headline numbers."""
    cache_dir = Path(cache_dir or default_cache_dir())
    out = []
    for path in sorted(cache_dir.glob("*/build_key.json")):
        report_path = path.parent / "build_report.json"
        report = runs.read_json(report_path) if report_path.is_file() else {}
        q = report.get("quality", {})
        out.append({"name": path.parent.name, "path": str(path.parent), "key": runs.read_json(path),
                    "heldin_vqa_em": q.get("heldin", {}).get("vqa_em"),
                    "build_s": round(sum(report.get("time_s", {}).values()), 1) if report else None})
    return out


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("base", help="build the embedded base models", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="base_command", required=True)
    build = sub.add_parser("build", help="build (or reuse) a base model: stages 1-3 and the build report")
    build.add_argument("--preset", default="mini", choices=sorted(RECIPES))
    build.add_argument("--llm", default="both", choices=(*LLMS, "both"))
    build.add_argument("--seed", type=int, default=DEFAULT_SEED)
    build.add_argument("--data", type=Path, default=None,
                       help="synthetic world (default: data/<size> here; written first if absent)")
    build.add_argument("--cache", type=Path, default=None, help=f"cache folder (default: {default_cache_dir()})")
    build.add_argument("--force", action="store_true", help="rebuild even if a current build exists")
    build.add_argument("--no-quality", action="store_true", help="skip the measurements (not for real builds)")
    build.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a recipe field (a JSON value or a bare word), e.g. --set stage3_llm=trained")
    build.set_defaults(func=_cli_build)
    listing = sub.add_parser("list", help="list the finished builds in the cache")
    listing.add_argument("--cache", type=Path, default=None)
    listing.set_defaults(func=_cli_list)
    path = sub.add_parser("path", help="print where a base model lives (exit 1 if it is not built)")
    path.add_argument("--preset", default="mini", choices=sorted(RECIPES))
    path.add_argument("--llm", required=True, choices=LLMS)
    path.add_argument("--seed", type=int, default=DEFAULT_SEED)
    path.add_argument("--cache", type=Path, default=None)
    path.set_defaults(func=_cli_path)


DATA_SIZE = {"tiny": "smoke", "mini": "mini"}  # the synthetic world each preset is built on by default
DATA_SIZE.update({name: DATA_SIZE[src] for name, (src, _) in SCALED_FROM.items() if src in DATA_SIZE})


def _cli_build(args: argparse.Namespace) -> int:
    overrides = {}
    for item in args.set:
        field, sep, raw = item.partition("=")
        if not sep:
            print(f"qformer-peft base build: --set {item!r}: expected FIELD=VALUE", file=sys.stderr)
            return 2
        try:
            overrides[field] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[field] = raw
    llms = LLMS if args.llm == "both" else (args.llm,)
    try:
        recipes = {llm: recipe_for(args.preset, overrides, llm=llm) for llm in llms}
    except (ValueError, TypeError) as err:
        print(f"qformer-peft base build: {err}", file=sys.stderr)
        return 2
    data_dir = args.data or Path("data") / DATA_SIZE[args.preset]
    if not data_dir.exists():
        from ..data.synthetic import synthesize

        print(f"[base] {data_dir} does not exist: writing the {DATA_SIZE[args.preset]} synthetic world there")
        synthesize(data_dir, DATA_SIZE[args.preset], 0)
    for llm in llms:
        build = build_base if args.force else ensure_base
        path = build(args.preset, llm, args.seed, data_dir, args.cache, recipe=recipes[llm],
                     quality=not args.no_quality)
        report = path / "build_report.md"
        print(report.read_text() if report.is_file() else path)
    return 0


def _cli_list(args: argparse.Namespace) -> int:
    rows = list_bases(args.cache)
    if not rows:
        print(f"no base models in {args.cache or default_cache_dir()}")
    for r in rows:
        print(f"{r['name']:16s} data {r['key']['data_version']}  held-in VQA {r['heldin_vqa_em']}  "
              f"built in {r['build_s']} s  {r['path']}")
    return 0


def _cli_path(args: argparse.Namespace) -> int:
    path = base_path(args.preset, args.llm, args.seed, args.cache)
    print(path)
    return 0 if (path / "build_key.json").is_file() else 1

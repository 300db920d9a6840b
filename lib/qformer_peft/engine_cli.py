"""The `qformer-peft run` command: one experiment from a config file and/or --field value pairs."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from . import runs
from .config import ConfigError, ExperimentConfig, setup_defaults
from .engine import run_experiment


ALIASES = {"dataset": "benchmark", "preset": "model"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="run one experiment from a config",
                              description="Train and test one experiment into a run folder under --out. Every config "
                              "field is a flag (--rank 4, --qf-sublayers all, --llm-targets none); --config FILE.json "
                              "gives a base config, --set key=value (JSON values) overrides anything.")
    p.add_argument("--config", type=Path, help="JSON file with config fields (flags and --set override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="root folder of the run folders")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: OUT/.feature-cache)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bars (default: only on a terminal)")
    hints = typing.get_type_hints(ExperimentConfig)
    for f in dataclasses.fields(ExperimentConfig):
        flags = [f"--{f.name.replace('_', '-')}"] + [f"--{a}" for a, target in ALIASES.items() if target == f.name]
        p.add_argument(*flags, dest=f"cfg_{f.name}", default=None, metavar=_metavar(hints[f.name]),
                       help=f"(default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r})")
    p.set_defaults(func=_cli_run)


def _metavar(tp) -> str:
    if typing.get_origin(tp) is tuple:
        return "A,B,..."
    names = [getattr(a, "__name__", str(a)) for a in typing.get_args(tp)] or [getattr(tp, "__name__", str(tp))]
    return "|".join("none" if n == "NoneType" else n for n in names).upper()


def _parse_value(name: str, text: str, tp) -> Any:
    """A flag's text as the field's type: 'none' for None, true/false for bools, commas for tuples."""
    args = typing.get_args(tp)
    if text.lower() in ("none", "null") and type(None) in args:
        return None
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if typing.get_origin(base) is tuple or base is tuple:
        return tuple(t for t in text.split(",") if t)
    try:
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"--{name.replace('_', '-')} {text!r}: expected {_metavar(tp).lower()}") from None
    return text


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            values.update(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"--config {args.config}: cannot read a JSON object ({err})") from None
    hints = typing.get_type_hints(ExperimentConfig)
    given = {f.name: _parse_value(f.name, getattr(args, f"cfg_{f.name}"), hints[f.name])
             for f in dataclasses.fields(ExperimentConfig) if getattr(args, f"cfg_{f.name}") is not None}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key = ALIASES.get(key, key).replace("-", "_")
        try:
            given[key] = json.loads(raw)
        except json.JSONDecodeError:
            given[key] = raw  # a bare word is a string
    if "setup" in given:  # a setup flag brings the fields it needs unless they are given too
        values.update({k: v for k, v in setup_defaults(given["setup"]).items() if k not in given})
    if given.get("method") == "adalora" and "rank" not in given:
        values["rank"] = None  # AdaLoRA's ranks are adalora_init_r / adalora_target_r
    values.update(given)
    return ExperimentConfig.from_dict(values)


def _cli_run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"qformer-peft run: {err}", file=sys.stderr)
        return 2
    result = run_experiment(config, out=args.out, cache_dir=args.cache_dir, progress=args.progress)
    run_id = runs.RunDir.open(args.out, config.to_dict(), prefix=config.run_name).path
    print(f"run folder: {run_id}")
    score = result.get("test_score")
    print(f"test {result['metric']}: {score:.2f}" if score is not None else f"test {result['metric']}: n/a")
    print(f"best epoch {result['best_epoch']} of {result['epochs']}, trainable parameters: "
          f"{result['trainable_params']}")
    return 0

"""The `qformer-peft` command line: one sub-command per library stage.

Each stage module registers its own sub-command through `add_parser(subparsers)`, so this file
only lists them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> the module that registers it (what it does)
COMMANDS: dict[str, str] = {
    "data": "qformer_peft.data.cli",         # write, load and check the benchmarks
    "params": "qformer_peft.params",         # trainable-parameter ledger of the paper's grid at full size
    "base": "qformer_peft.pretrain.cli",     # build the embedded base models
    "run": "qformer_peft.engine_cli",        # run one experiment from a config
    "bench": "qformer_peft.bench",           # measure the feature cache, batched ranking and full-size speed
    "grid": "qformer_peft.schedule",         # execute a profile's notebooks with papermill
    "export": "qformer_peft.export",         # a finished run as a standalone InstructBLIP checkpoint (LoRA merged)
    "report": "qformer_peft.report",         # render run folders into reports/index.html
    "study": "qformer_peft.study",           # a profile end to end: data, base models, grid, report
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qformer-peft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

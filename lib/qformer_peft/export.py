"""`qformer-peft export RUN --out DIR`: a finished run as a standalone InstructBLIP checkpoint.

A run folder keeps its base model by reference (config.model) and its training in adapter/: the peft factors
and trainable.safetensors (query tokens, projection, post-ViT LayerNorm, the Q-Former where it is fully
fine-tuned). The export rebuilds the run's model (engine.load_trained), merges the LoRA factors into the base
weights and writes an ordinary checkpoint directory (Bundle.save: config, weights, processor, both tokenizers),
which `InstructBlipForConditionalGeneration.from_pretrained` and `InstructBlipProcessor.from_pretrained` read
with nothing from this package.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import runs


def export_run(run_path: str | Path, out: str | Path) -> Path:
    """Write the run's model (LoRA merged, every trained tensor in) to `out`; returns `out`."""
    from peft import PeftModel

    from .config import ExperimentConfig
    from .engine import load_trained

    run = runs.RunDir(run_path)
    if not run.is_done():
        raise ValueError(f"{run.path}: the run is not finished (state {run.state!r}); export a done run")
    config = ExperimentConfig.from_dict(run.config)
    if config.connector != "qformer" or config.connector_tokens or config.connector_init == "scratch":
        raise ValueError(f"{run.path}: connector {config.connector_label!r} is not InstructBLIP's own Q-Former, which "
                         "a transformers InstructBLIP checkpoint cannot hold; load it with engine.load_trained")
    bundle, model = load_trained(run.path)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()  # LoRA (and AdaLoRA) factors folded into the base weights
    bundle.model = model.eval()
    out = bundle.save(out)
    runs.write_json(out / "exported_from.json", {"run": str(run.path), "config": run.config,
                                                 "test_score": run.result.get("test_score"),
                                                 "exported": runs.now()})
    return out


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="a finished run as a standalone InstructBLIP checkpoint",
                              description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the run folder (runs/<profile>/<run id>)")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint directory to write")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        out = export_run(args.run, args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"qformer-peft export: {err}", file=sys.stderr)
        return 2
    print(f"[export] {out}: load it with InstructBlipForConditionalGeneration.from_pretrained and "
          "InstructBlipProcessor.from_pretrained")
    return 0

"""qformer_peft: LoRA / AdaLoRA on InstructBLIP's Q-Former and LLM, and competing connectors.

A small library driven by parameterized notebooks (papermill). Modules in layers, each importing only from
its own or lower ones (tests/test_layers.py holds the order):
  runs, paper (the paper's design as data) → data/, templates → models/ (architecture) → config, peft_setup
  → lora_fused, train, evaluate, features, run_inputs → pretrain/ stages, held-in scores, alignment → engine (run_experiment)
  → engine_cli, pretrain.base, params, benches, export → verdicts, charts, claims, claim_ledger, connector_study,
  seed_variance, open_questions → grid (profiles), grid_cells, workbook (the notebooks' API), execute, schedule
  → report → study → cli.
"""
__version__ = "0.1.0"

import warnings as _warnings

# transformers imports tqdm.auto, which in a Jupyter kernel without ipywidgets warns "IProgress not found"
# into the first cell that imports it: every executed notebook of the report carried that line. This
# package shows progress bars on terminals only, so the widget it asks for is never needed.
_warnings.filterwarnings("ignore", message="IProgress not found")
# peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning in 5.x) each
# time it wraps a model, in get_peft_model and PeftModel.from_pretrained alike: not ours to fix, and it
# filled the study log and the notebook sections.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)

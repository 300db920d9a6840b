"""The paper's experimental design as data (docs/protocol.md §2 and §6): its setups, LoRA targets, ranks and grid.

SETUPS        the four setups of Table 1 / Figure 2 (how the Q-Former and the LLM are trained)
QF_SUBLAYERS  Q-Former LoRA targets per sublayer set, as module-name suffixes inside qformer.encoder.layer.{i}
LLM_TARGETS   LLM LoRA targets per LLM kind and target set, as module-name suffixes inside language_model
RANKS, LORA_ALPHA, LORA_DROPOUT, ADALORA   the LoRA / AdaLoRA hyperparameters
LLMS, PEFT_BENCHMARKS, ADALORA_BENCHMARKS, PEFT_ROWS, CLAIM_ROWS, PAPER_ADALORA_HPARAMS   the grid
paper_grid()  the 33 (setup, sublayers, LLM targets, rank) runs per LLM and benchmark

The one copy of these facts: config validates against them, peft_setup applies them, the grid expands them.
Plain data, no torch: importing it is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setup:
    qformer: str  # "full" (fine-tuned) | "lora"
    llm: str  # "frozen" | "lora"
    label: str


SETUPS: dict[str, Setup] = {
    "baseline": Setup("full", "frozen", "InstructBLIP: Q-Former fine-tuned, LLM frozen"),
    # The code's "LLM LoRA" runs never froze the Q-Former: label them for what they trained.
    "qf-fft+llm-lora": Setup("full", "lora", "Q-Former fine-tuned + LLM LoRA"),
    "qf-lora": Setup("lora", "frozen", "Q-Former LoRA, LLM frozen"),
    "qf-lora+llm-lora": Setup("lora", "lora", "Q-Former LoRA + LLM LoRA (same r, LLM targets all)"),
}

# Inside qformer.encoder.layer.{i}; cross-attention exists only where i % cross_attention_frequency == 0.
QF_SUBLAYERS: dict[str, tuple[str, ...]] = {
    "self_attn": ("attention.attention.query", "attention.attention.value"),  # never key or output
    "cross_attn": ("crossattention.attention.query", "crossattention.attention.key",
                   "crossattention.attention.value", "crossattention.output.dense"),
    # both FFN branches: text tokens (intermediate/output) and query tokens (intermediate_query/output_query)
    "ffn": ("intermediate.dense", "output.dense", "intermediate_query.dense", "output_query.dense"),
}
QF_SUBLAYERS["all"] = QF_SUBLAYERS["self_attn"] + QF_SUBLAYERS["cross_attn"] + QF_SUBLAYERS["ffn"]

# Inside language_model; matched as the end of a module name.
LLM_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    # q and v of encoder self-, decoder self- and decoder cross-attention (the code's ['q', 'v'])
    "t5": {"attn": ("SelfAttention.q", "SelfAttention.v", "EncDecAttention.q", "EncDecAttention.v"),
           # Flan-T5's gated FFN; "wi" is the ungated T5's single input matrix (absent in Flan-T5)
           "ffn": ("DenseReluDense.wi_0", "DenseReluDense.wi_1", "DenseReluDense.wi", "DenseReluDense.wo")},
    "llama": {"attn": ("self_attn.q_proj", "self_attn.v_proj"),
              "ffn": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")},
}
for _targets in LLM_TARGETS.values():
    _targets["all"] = _targets["attn"] + _targets["ffn"]

RANKS = (1, 2, 4, 8)
LORA_ALPHA = 8  # scaling alpha / r = 8 / r
LORA_DROPOUT = 0.0
ADALORA = {"init_r": 12, "target_r": 8}  # on QF_SUBLAYERS["all"]; peft also needs total_step

LLMS = ("t5", "llama")
PEFT_BENCHMARKS = ("scienceqa", "iconqa")
ADALORA_BENCHMARKS = ("scienceqa", "iconqa", "flickr30k", "vizwiz")
# One notebook per row: (setup, Q-Former sublayers, LLM targets). 8 rows x 4 ranks + the baseline = 33
# runs per LLM x benchmark, 132 for 2 LLMs x 2 benchmarks.
PEFT_ROWS: tuple[tuple[str, str | None, str | None], ...] = (
    ("qf-fft+llm-lora", None, "ffn"), ("qf-fft+llm-lora", None, "attn"), ("qf-fft+llm-lora", None, "all"),
    ("qf-lora", "ffn", None), ("qf-lora", "self_attn", None), ("qf-lora", "cross_attn", None),
    ("qf-lora", "all", None),
    ("qf-lora+llm-lora", "all", "all"),
    ("baseline", None, None),
)
# The rows the claim ledger compares (each setup's best rank among them); they get the profile's claim seeds
# so the ledger can judge a difference against the spread over seeds.
CLAIM_ROWS = (("baseline", None, None), ("qf-lora", "all", None), ("qf-lora+llm-lora", "all", "all"))

# The captioning and VizWiz AdaLoRA settings (paper appendix C). The paper names LAVIS's
# linear_warmup_cosine_lr without its warm-up length; 1000 steps is LAVIS's caption-config default.
PAPER_ADALORA_HPARAMS = {
    "flickr30k": {"max_epochs": 5, "schedule": "cosine", "warmup_steps": 1000, "lr": 5e-5, "batch_size": 60,
                  "grad_accum": 1},
    "vizwiz": {"max_epochs": 5, "schedule": "cosine", "warmup_steps": 1000, "lr": 1e-4, "batch_size": 8,
               "grad_accum": 1},
}


def paper_grid() -> list[dict]:
    """The code's 33 runs per LLM and benchmark: PEFT_ROWS, each LoRA row at every rank of RANKS."""
    return [dict(setup=s, qf_sublayers=qf, llm_targets=lt, rank=None if s == "baseline" else r)
            for s, qf, lt in sorted(PEFT_ROWS, key=lambda row: row[0] != "baseline")
            for r in ((None,) if s == "baseline" else RANKS)]

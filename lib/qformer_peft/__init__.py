"""qformer_peft: LoRA / AdaLoRA on InstructBLIP's Q-Former and LLM, and competing connectors.

A small library driven by parameterized notebooks (papermill). Modules, in the order data flows:
data/ → templates → models/ → peft_setup → train → evaluate → runs → grid → report.
"""
__version__ = "0.1.0"

"""The embedded base models: small InstructBLIPs pretrained here on the synthetic world, in stages.

stages     the three pretraining stages (vision encoder, optional language model, Q-Former) and the held-in tasks
quality    held-in scoring (captioning, open VQA) by generation; the build report's zero-shot and adaptability
alignment  the connector alignment on the held-in tasks that every connector gets before its benchmark run
base       recipes, the build (stages 1-3 + build report, cached by a key) and the `base` command
"""

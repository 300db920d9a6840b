"""The embedded base models: small InstructBLIPs pretrained here on the synthetic world, in stages.

vision        stage 1: the vision encoder on dense labels of the held-in pictures
stages        stages 2 and 3 (optional language model, Q-Former)
heldin        the held-in tasks the stages train on
quality       held-in scoring (captioning, open VQA) by generation
alignment     the connector alignment on the held-in tasks that every connector gets before its benchmark run
recipe        how long and how fast each stage trains, per preset and LLM
adaptability  the build report's zero-shot accuracy and its short qf-lora check (through the engine)
base          the build (stages 1-3 + measurements, cached by a key); build_report: its Markdown page
cli           the `qformer-peft base` command
"""

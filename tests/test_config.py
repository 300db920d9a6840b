"""The experiment config rejects what cannot describe a run, and its hash names the run."""
import pytest

from qformer_peft.config import ConfigError, ExperimentConfig, setup_defaults


def test_defaults_are_valid_and_lr_follows_the_protocol():
    cfg = ExperimentConfig()
    assert cfg.learning_rate == 5e-4
    base = ExperimentConfig(setup="baseline", qf_sublayers=None, rank=None)
    assert base.learning_rate == 2e-5 and base.qformer_full
    fft = ExperimentConfig(setup="qf-fft+llm-lora", qf_sublayers=None, llm_targets="all")
    assert fft.learning_rate == 2e-5
    assert ExperimentConfig(lr=1e-4).learning_rate == 1e-4


def test_unknown_key_names_the_valid_ones_and_suggests_a_fix():
    with pytest.raises(ConfigError, match=r"'rnak' \(did you mean 'rank'\?\).*valid keys: benchmark"):
        ExperimentConfig.from_dict({"rnak": 4})


@pytest.mark.parametrize("changes, message", [
    ({"setup": "qf_lora"}, "setup='qf_lora' is not valid"),
    ({"rank": "8"}, "rank='8' has type str"),
    ({"max_epochs": True}, "max_epochs=True has type bool"),
    ({"setup": "qf-lora", "qf_sublayers": None}, "needs qf_sublayers"),
    ({"setup": "baseline", "qf_sublayers": None}, "set rank=None"),
    ({"setup": "qf-lora+llm-lora"}, "needs llm_targets"),
    ({"llm_targets": "attn"}, "has no LLM LoRA"),
    ({"method": "adalora", "qf_sublayers": "ffn"}, "adapts all Q-Former targets"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"method": "adalora"}, "set rank=None"),
    ({"method": "adalora", "rank": None, "adalora_target_r": 12}, "adalora_target_r must be in (0, adalora_init_r)"),
    ({"method": "adalora", "rank": None, "adalora_tinit": 0.5, "adalora_tfinal": 0.5}, "tinit + tfinal < 1"),
    ({"train_limit": 0}, "train_limit must be >= 1"),
    ({"eval_batch_size": 0}, "eval_batch_size must be >= 1"),
])
def test_invalid_configs_fail_with_the_field_named(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        ExperimentConfig().replace(**changes)


def test_hash_is_stable_and_round_trips_through_dict():
    cfg = ExperimentConfig(rank=4, tags=("grid", "iconqa"))
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.hash == cfg.hash
    assert cfg.replace(seed=1).hash != cfg.hash
    assert ExperimentConfig(lr=1).lr == 1  # papermill writes 1 for 1.0: an int is a fine float


def test_adalora_schedule_comes_from_the_real_step_count():
    cfg = ExperimentConfig(method="adalora", rank=None)
    assert cfg.adalora_schedule(300) == {"init_r": 12, "target_r": 8, "total_step": 300, "tinit": 30, "tfinal": 60,
                                         "deltaT": 10, "orth_reg_weight": 0.5}
    tiny = cfg.adalora_schedule(2)  # too short for a warm-up and a final phase: budget over every step
    assert (tiny["tinit"], tiny["tfinal"]) == (0, 0)
    assert cfg.adalora_schedule(1) == tiny  # one step: scheduled as two, so importance exists before the end
    assert cfg.run_name == "iconqa_qf-lora_adalora_qf-all_s42"


@pytest.mark.parametrize("setup", ["baseline", "qf-fft+llm-lora", "qf-lora", "qf-lora+llm-lora"])
def test_setup_defaults_make_every_setup_valid(setup):
    cfg = ExperimentConfig().replace(setup=setup, **setup_defaults(setup))
    assert cfg.setup == setup and (cfg.rank is None) == (setup == "baseline")


def test_validating_a_config_imports_neither_torch_nor_transformers():
    # the grid expands and validates every cell up front, and each fixture notebook of the grid tests builds
    # configs: through models/__init__ this once imported torch, transformers and peft (~5 s a process)
    import subprocess
    import sys

    code = ("import sys\nfrom qformer_peft import schedule, workbook\n"
            "cfg = workbook.experiment_configs(benchmark='iconqa', llm='t5', model='tiny', data_dir='data', ranks=[2])[0]\n"
            "assert cfg.connector_label == 'qformer'\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

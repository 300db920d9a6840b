"""The experiment config rejects what cannot describe a run, and its hash names the run."""
import pytest

from qformer_peft.config import ConfigError, ExperimentConfig


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

"""What adapting costs on the held-in tasks, per run: run_experiment with heldin_limit > 0 stores
held-in VQA exact match of the adapted model and, for a peft model, with its LoRA switched off."""
import pytest

from qformer_peft import runs
from qformer_peft.config import ConfigError, ExperimentConfig
from qformer_peft.engine import heldin_dir, run_experiment


RUN = {"benchmark": "iconqa", "model": "tiny", "llm": "t5", "setup": "qf-lora", "qf_sublayers": "all", "rank": 2,
       "max_epochs": 1, "batch_size": 8, "train_limit": 8, "val_limit": 4, "test_limit": 4, "seed": 3}


@pytest.mark.parametrize("extra", [{}, {"method": "adalora", "rank": None, "adalora_init_r": 4, "adalora_target_r": 2,
                                        "adalora_delta_t": 1}], ids=["lora", "adalora"])
def test_a_run_with_heldin_limit_stores_the_adapted_and_adapter_off_scores(world, tmp_path, extra):
    # 8 items in batches of 8 for one epoch: a single optimizer step (AdaLoRA's schedule must cope)
    out = tmp_path / "runs"
    result = run_experiment({**RUN, **extra, "data_root": str(world / "iconqa"), "heldin_limit": 6}, out=out)
    cost = result["heldin_vqa_em"]
    assert set(cost) == {"adapted", "adapter_off"}
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in cost.values())
    (run,) = runs.iter_runs(out)
    assert run.result["heldin_vqa_em"] == cost and run.config["heldin_limit"] == 6


def test_without_heldin_limit_or_heldin_data_nothing_is_measured(world, tmp_path):
    result = run_experiment({**RUN, "setup": "baseline", "qf_sublayers": None, "rank": None,
                             "data_root": str(world / "iconqa")}, out=tmp_path / "runs")
    assert "heldin_vqa_em" not in result
    # the synthetic root itself as data_root: the same world
    assert heldin_dir(ExperimentConfig(data_root=str(world))) == world.resolve()
    assert heldin_dir(ExperimentConfig(data_root=str(tmp_path))) is None


def test_heldin_limit_is_validated_and_left_out_of_the_hash_at_its_default():
    with pytest.raises(ConfigError, match="heldin_limit must be >= 0"):
        ExperimentConfig(heldin_limit=-1)
    assert "heldin_limit" not in ExperimentConfig().to_dict()      # older run folders keep their hash
    assert ExperimentConfig(heldin_limit=6).to_dict()["heldin_limit"] == 6
    assert ExperimentConfig.from_dict(ExperimentConfig(heldin_limit=6).to_dict()).heldin_limit == 6

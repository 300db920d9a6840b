"""The paper's rerun rule (reruns.RerunRule): which runs of a grid row are trained again at the lowered rate, what a
rerun records, and which run of a configuration counts (runs.counted)."""
import json

import nbformat
import papermill as pm
import pytest

from qformer_peft import grid_cells, config, execute, grid, reruns, runs
from qformer_peft import report_charts as rc
from qformer_peft.config import ConfigError
from qformer_peft.reruns import RerunRule, plan_reruns
from qformer_peft.workbook import run_configs
from test_engine import write_iconqa

LONG = {"max_epochs": 15, "patience": 3}


def row(data_dir, setup="qf-lora", ranks=(1, 2, 4, 8), seeds=(42,), hparams=LONG):
    qf = "all" if setup == "qf-lora" else None
    return config.experiment_configs(benchmark="iconqa", llm="t5", model="tiny", data_dir=data_dir, setup=setup,
                                   qf_sublayers=qf, ranks=ranks, seeds=seeds, hparams=hparams,
                                   tags=["profile:test", "scale:embedded"])


def plant(runs_dir, cfg, *, val, test=50.0, epochs=15, stopped_early=False):
    """A finished run folder as the engine writes it (the fields the rule and the tables read)."""
    run = runs.RunDir.open(runs_dir, cfg.to_dict(), prefix=cfg.run_name)
    run.write_metrics([{"split": "val", "epoch": e, "step": 2 * e, "train_loss": 1.0, "accuracy": val}
                       for e in range(1, epochs + 1)])
    run.mark_done({"metric": "accuracy", "val_score": val, "test_score": test, "test": {"accuracy": test},
                   "epochs": epochs, "best_epoch": max(1, epochs - 3), "stopped_early": stopped_early,
                   "learning_rate": cfg.learning_rate, "trainable_params": {"qformer_lora": 10 * (cfg.rank or 0)}})
    return run


def by_rank(reruns):
    return {r.config.rank: r for r in reruns}


def test_a_run_far_below_its_neighbours_on_validation_is_rerun_and_test_scores_are_never_read(tmp_path):
    configs = row(tmp_path / "data")
    # val 60, 62, 45, 61: r=4 lies 16.5 points below the mean of r=2 and r=8; r=8's test score is far below its
    # neighbour's but its validation score is not, so it stays
    for cfg, val, test in zip(configs, (60, 62, 45, 61), (58, 60, 50, 5)):
        plant(tmp_path / "runs", cfg, val=val, test=test)
    reruns = by_rank(plan_reruns(configs, tmp_path / "runs", RerunRule()))
    assert list(reruns) == [4]
    original, rerun = configs[2], reruns[4]
    assert rerun.config.rerun_of == original.hash and rerun.config.rerun_reason == "below_neighbours"
    assert rerun.config.learning_rate == 1e-4 and original.learning_rate == 5e-4
    assert rerun.config.hash != original.hash and rerun.config.run_name.endswith("_rerun")
    assert rerun.evidence["neighbours_val_score"] == {"2": 62, "8": 61} and rerun.evidence["neighbours_mean"] == 61.5
    # a gap of 20 points leaves the row as it is: the threshold is the rule's
    assert plan_reruns(configs, tmp_path / "runs", RerunRule(gap=20)) == []


def test_a_run_that_stopped_early_before_the_rules_epoch_is_rerun_at_the_lowered_full_finetuning_rate(tmp_path):
    configs = row(tmp_path / "data", setup="baseline", seeds=(42, 43, 44, 45))  # rank None: no neighbours
    plant(tmp_path / "runs", configs[0], val=60, epochs=5, stopped_early=True)    # stopped at epoch 5
    plant(tmp_path / "runs", configs[1], val=60, epochs=9, stopped_early=True)    # stopped at epoch 9: kept
    plant(tmp_path / "runs", configs[2], val=60, epochs=15)                       # ran its whole schedule
    # configs[3] not finished: nothing to judge
    (rerun,) = plan_reruns(configs, tmp_path / "runs", {"min_epochs": 8})         # papermill passes a dict
    assert rerun.config.seed == 42 and rerun.config.rerun_reason == "stopped_early"
    assert rerun.config.learning_rate == 1e-5 and configs[0].learning_rate == 2e-5
    assert rerun.evidence["epochs"] == 5 and rerun.evidence["lr"] == {"original": 2e-5, "rerun": 1e-5}


def test_both_reasons_are_recorded_a_rerun_is_never_rerun_and_a_rate_already_low_is_kept(tmp_path):
    configs = row(tmp_path / "data", ranks=(1, 2))
    plant(tmp_path / "runs", configs[0], val=40, epochs=4, stopped_early=True)
    plant(tmp_path / "runs", configs[1], val=70)
    (rerun,) = plan_reruns(configs, tmp_path / "runs", RerunRule())
    assert rerun.config.rerun_reason == "stopped_early+below_neighbours"
    plant(tmp_path / "runs", rerun.config, val=30, epochs=4, stopped_early=True)  # the rerun fares no better
    again = plan_reruns([*configs, rerun.config], tmp_path / "runs", RerunRule())
    assert [r.config.hash for r in again] == [rerun.config.hash]                 # the original's rerun, no other
    low = row(tmp_path / "data", ranks=(1, 2), hparams={**LONG, "lr": 1e-4})     # already at the lowered rate
    plant(tmp_path / "low", low[0], val=40, epochs=4, stopped_early=True)
    plant(tmp_path / "low", low[1], val=70)
    assert plan_reruns(low, tmp_path / "low", RerunRule()) == []


def test_a_rerun_config_names_its_original_its_reason_and_its_rate(tmp_path):
    (cfg,) = row(tmp_path / "data", ranks=(2,))
    with pytest.raises(ConfigError, match="rerun_of .*rerun_reason and its lowered lr"):
        cfg.replace(rerun_of=cfg.hash, rerun_reason="stopped_early")                # no lr
    with pytest.raises(ConfigError, match="rerun_reason='early'"):
        cfg.replace(lr=1e-4, rerun_of=cfg.hash, rerun_reason="early")
    assert "rerun_of" not in cfg.to_dict()                                         # old run folders keep their hash


def test_only_the_paper_profile_has_the_rule_and_a_profile_without_it_never_reruns(tmp_path):
    assert grid.PROFILES["paper"].rerun_rule == RerunRule(min_epochs=8, gap=10.0, lr_qformer_full=1e-5, lr_peft=1e-4)
    assert grid.PROFILES["smoke"].rerun_rule is None and grid.PROFILES["mini"].rerun_rule is None
    paper = grid_cells.expand("paper", root=tmp_path, data_root=str(tmp_path / "data"), checkpoints=str(tmp_path / "ck"))
    peft = [c for c in paper if c.notebook == grid_cells.PEFT]
    assert peft and all(c.parameters["rerun_rule"]["min_epochs"] == 8 for c in peft)
    assert not any("rerun_rule" in c.parameters for c in paper if c.notebook != grid_cells.PEFT)
    for name in ("smoke", "mini"):  # their cells' parameters (hence their finished markers) are unchanged
        assert not any("rerun_rule" in c.parameters for c in grid_cells.expand(name, root=tmp_path))

    configs = row(tmp_path / "data", ranks=(1, 2))
    plant(tmp_path / "runs", configs[0], val=10, epochs=2, stopped_early=True)
    plant(tmp_path / "runs", configs[1], val=70)
    assert plan_reruns(configs, tmp_path / "runs", None) == []
    df = run_configs(configs, runs_dir=tmp_path / "runs", rerun_rule=None)       # both finished: nothing trains
    assert len(runs.iter_runs(tmp_path / "runs")) == 2 and not df["superseded"].any()


def test_a_finished_rerun_replaces_its_original_in_table1_and_a_cell_waits_for_its_reruns(tmp_path):
    configs = row(tmp_path / "data", ranks=(2, 4))
    plant(tmp_path / "runs", configs[0], val=40, test=41, epochs=4, stopped_early=True)
    plant(tmp_path / "runs", configs[1], val=70, test=70)
    cell = grid_cells.Cell("peft_t5_iconqa_qf-lora_all", grid_cells.PEFT, {
        "benchmark": "iconqa", "llm": "t5", "model": "tiny", "data_dir": str(tmp_path / "data"), "setup": "qf-lora",
        "qf_sublayers": "all", "llm_targets": None, "ranks": [2, 4], "seeds": [42], "hparams": LONG,
        "tags": ["profile:test", "scale:embedded"], "runs_dir": str(tmp_path / "runs"),
        "rerun_rule": {"min_epochs": 8}})
    assert [c.hash for c in cell.configs()] == [c.hash for c in configs]
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / f"{cell.name}.ipynb").write_text("{}")
    assert not execute.is_finished(cell, tmp_path / "nb")                           # its rerun is still missing

    (rerun,) = plan_reruns(configs, tmp_path / "runs", RerunRule())
    plant(tmp_path / "runs", rerun.config, val=66, test=67)
    assert execute.is_finished(cell, tmp_path / "nb")
    df = rc.runs_frame(tmp_path / "runs")
    assert df.set_index("config_hash")["superseded"].to_dict() == {
        configs[0].hash: True, configs[1].hash: False, rerun.config.hash: False}
    assert sorted(runs.counted(df)["acc"]) == [67, 70]
    assert configs[0].hash not in set(rc.paper_runs(df)["config_hash"])          # Table 1 and the claims read these
    t = rc.table1(df).set_index("rank")
    assert t.loc[2, "acc_mean"] == 67 and t.loc[2, "n_seeds"] == 1 and t.loc[4, "acc_mean"] == 70


def test_a_grid_row_reruns_its_early_stopped_run_on_the_tiny_model_and_keeps_the_original(tmp_path):
    data = write_iconqa(tmp_path / "data").parent
    configs = row(data, ranks=(2, 4), hparams={"max_epochs": 2, "patience": 3, "batch_size": 4})
    # the originals as planted results (r=2 stopped after one epoch); the rerun trains for real
    original = plant(tmp_path / "runs", configs[0], val=60, epochs=1, stopped_early=True)
    plant(tmp_path / "runs", configs[1], val=60, epochs=2)
    before = (original.path / "result.json").read_text()
    rule = RerunRule(min_epochs=2)
    df = run_configs(configs, runs_dir=tmp_path / "runs", rerun_rule=rule)
    done = [r for r in runs.iter_runs(tmp_path / "runs") if r.is_done()]
    assert len(done) == 3 and (original.path / "result.json").read_text() == before
    (rerun,) = [r for r in done if r.config.get("rerun_of")]
    assert rerun.config["rerun_of"] == configs[0].hash and rerun.config["rerun_reason"] == "stopped_early"
    assert rerun.config["lr"] == 1e-4 and rerun.result["learning_rate"] == 1e-4 and rerun.result["epochs"] == 2
    evidence = json.loads((rerun.path / "rerun.json").read_text())
    assert evidence["rerun_of"] == original.id and evidence["reasons"] == ["stopped_early"]
    assert df.set_index("run_id")["superseded"].to_dict() == {original.id: True, configs[1].run_name + "-"
                                                              + configs[1].hash: False, rerun.id: False}
    assert {"rerun_reason", "superseded", "learning_rate"} <= set(rc.run_summary(df).columns)
    run_configs(configs, runs_dir=tmp_path / "runs", rerun_rule=rule)           # again: nothing new
    assert len(runs.iter_runs(tmp_path / "runs")) == 3


@pytest.mark.slow
def test_the_peft_notebook_applies_a_rule_papermill_injects_and_shows_the_rerun(tmp_path):
    data = write_iconqa(tmp_path / "data").parent
    hparams = {"max_epochs": 2, "patience": 3, "batch_size": 4}
    configs = row(data, ranks=(2, 4), hparams=hparams)
    original = plant(tmp_path / "runs", configs[0], val=60, epochs=1, stopped_early=True)
    plant(tmp_path / "runs", configs[1], val=60, epochs=2)
    out = tmp_path / "10.ipynb"
    pm.execute_notebook(str(grid_cells.NOTEBOOKS_DIR / grid_cells.PEFT), str(out), kernel_name="python3", progress_bar=False,
                        cwd=str(grid_cells.NOTEBOOKS_DIR), parameters={
                            "benchmark": "iconqa", "llm": "t5", "model": "tiny", "setup": "qf-lora",
                            "qf_sublayers": "all", "llm_targets": None, "ranks": [2, 4], "seeds": [42],
                            "hparams": hparams, "tags": ["profile:test", "scale:embedded"], "data_dir": str(data),
                            "data_size": None, "runs_dir": str(tmp_path / "runs"),
                            "cache_dir": str(tmp_path / "cache"), "rerun_rule": {"min_epochs": 2}})
    outputs = [o for c in nbformat.read(str(out), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "stopped_early" in html and "superseded" in html and original.id in html
    (rerun,) = [r for r in runs.iter_runs(tmp_path / "runs") if r.config.get("rerun_of") == configs[0].hash]
    assert rerun.is_done() and rerun.result["learning_rate"] == 1e-4

"""The grid: every profile expands into valid configs; papermill cells are skipped when finished,
failures are recorded without stopping the grid, and a killed grid resumes without redoing work.

The executions use fixture notebooks (tests/fixtures/notebooks) that write run folders through
runs.RunDir without training, so these tests do not depend on the engine.
"""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qformer_peft import grid_cells, execute, grid, paper, runs, schedule
from qformer_peft.config import MULTITASK_SEP, ConfigError, ExperimentConfig

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


# --- profiles as data ----------------------------------------------------------------------------------
VARIANTS = [(n, False) for n in sorted(grid.PROFILES)] + [(n, True) for n, p in sorted(grid.PROFILES.items())
                                                          if p.model_scaling_models]


@pytest.mark.parametrize("name,model_scaling", VARIANTS,
                         ids=[n + ("+model-scaling" if m else "") for n, m in VARIANTS])
def test_every_profile_expands_into_valid_configs(name, model_scaling, tmp_path):
    cells = grid_cells.expand(name, root=tmp_path, data_root=str(tmp_path / "data"), checkpoints=str(tmp_path / "ckpt"),
                        model_scaling=model_scaling)
    names = [c.name for c in cells]
    assert len(names) == len(set(names)), "cell names must be unique: they name the executed notebooks"
    assert cells[0].kind == "environment" and cells[-1].kind == "report"
    for c in cells:
        for cfg in c.configs():
            assert isinstance(cfg, ExperimentConfig)
            joint = MULTITASK_SEP in cfg.benchmark          # one root per task in the data folder
            assert cfg.data_root == str(tmp_path / "data" / ("" if joint else cfg.benchmark)).rstrip("/")
            assert f"profile:{name}" in cfg.tags
    every = [cfg for c in cells for cfg in c.configs()]
    assert len({cfg.hash for cfg in every}) == len(every), "two cells would share a run"


@pytest.mark.parametrize("name,full_grid", [("mini", True), ("paper", False)])
def test_full_profiles_hold_the_papers_grid(name, full_grid, tmp_path):
    cells = grid_cells.expand(name, root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path), full_grid=full_grid)
    peft = [c for c in cells if c.notebook == grid_cells.PEFT and grid_cells.PILOT_TAG not in c.parameters["tags"]]
    adalora = [c for c in cells if c.notebook == grid_cells.ADALORA and grid_cells.NULL_TAG not in c.parameters.get("tags", [])]
    assert len(peft) == 2 * 2 * 9 and len(adalora) == 2 * 4        # docs/protocol.md §2 and §6
    first_seed = {(cfg.llm, cfg.benchmark, cfg.setup, cfg.qf_sublayers, cfg.llm_targets, cfg.rank)
                  for c in peft for cfg in c.configs() if cfg.seed == 42}
    assert len(first_seed) == 132                                     # 33 runs x 2 LLMs x 2 benchmarks
    for c in peft:
        row = (c.parameters["setup"], c.parameters["qf_sublayers"], c.parameters["llm_targets"])
        seeds = {cfg.seed for cfg in c.configs()}
        assert seeds == ({42, 43, 44} if row in paper.CLAIM_ROWS or full_grid else {42}), c.name
    assert all({cfg.seed for cfg in c.configs()} == {42, 43, 44} for c in adalora)
    assert all(cfg.method == "adalora" and cfg.adalora_init_r == 12 and cfg.adalora_target_r == 8
               for c in adalora for cfg in c.configs())


def test_mini_shows_every_table1_row_and_judges_the_claim_rows_at_depth(tmp_path):
    """Every Table-1 row for both LLMs x both benchmarks; the claim rows on 3 seeds with the profile's depth, the
    others on one seed; the paper's AdaLoRA cells (both LLMs on Table 1's benchmarks, T5 on all four) on one seed
    for the heatmaps, their claims' seeds and null runs left to --extended."""
    cells = grid_cells.expand("mini", root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path))
    peft = [c for c in cells if c.notebook == grid_cells.PEFT and grid_cells.PILOT_TAG not in c.parameters["tags"]]
    assert len(peft) == 2 * 2 * 9
    claim = [cfg for c in peft for cfg in c.configs()
             if (cfg.setup, cfg.qf_sublayers, cfg.llm_targets) in paper.CLAIM_ROWS]
    other = [cfg for c in peft for cfg in c.configs() if cfg not in claim]
    assert {cfg.seed for cfg in claim} == {42, 43, 44} and {cfg.seed for cfg in other} == {42}
    assert min(cfg.max_epochs for cfg in claim) > max(cfg.max_epochs for cfg in other)
    assert all(cfg.train_limit is None and cfg.test_limit is None for cfg in claim)  # the whole splits
    adalora = {(c.parameters["llm"], c.parameters["benchmark"]) for c in cells if c.notebook == grid_cells.ADALORA
               and grid_cells.NULL_TAG not in c.parameters["tags"]}
    assert adalora == {("t5", b) for b in paper.ADALORA_BENCHMARKS} | {("llama", b) for b in paper.PEFT_BENCHMARKS}
    assert {cfg.seed for c in cells if c.notebook == grid_cells.ADALORA for cfg in c.configs()} == {42}
    assert not [c.name for c in cells if grid_cells.NULL_TAG in c.parameters.get("tags", [])
                or c.notebook in (grid_cells.CONNECTORS, grid_cells.MULTITASK, grid_cells.RANK_SENSITIVITY,
                                  grid_cells.SCALING)]


def test_extended_adds_what_mini_leaves_out_and_keeps_every_default_run(tmp_path):
    kw = dict(root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path))
    plain, extended = grid_cells.expand("mini", **kw), grid_cells.expand("mini", extended=True, **kw)
    assert grid.resolve_profile("mini", extended=True).name == "mini"          # same runs folder and markers
    runs = {cfg.hash for c in plain for cfg in c.configs()}
    more = {cfg.hash: cfg for c in extended for cfg in c.configs()}
    assert runs < set(more)                                                     # every default run is reused
    added = [more[h] for h in set(more) - runs]
    studies = {t for cfg in added for t in cfg.tags if t.startswith("study:")}
    assert studies == {grid_cells.NULL_TAG, "study:connectors", "study:multitask", "study:scaling", "study:ranks"}
    adalora = [cfg for cfg in more.values() if cfg.method == "adalora" and grid_cells.NULL_TAG not in cfg.tags
               and cfg.benchmark in paper.ADALORA_BENCHMARKS]
    assert {cfg.seed for cfg in adalora} == {42, 43, 44}
    nulls = [cfg for cfg in added if grid_cells.NULL_TAG in cfg.tags]
    assert {(cfg.llm, cfg.benchmark) for cfg in nulls} == {(cfg.llm, cfg.benchmark) for cfg in adalora}
    assert {cfg.seed for cfg in nulls} == {42, 43} and all(cfg.shuffle_answers for cfg in nulls)
    with pytest.raises(grid.GridError, match="no --extended option"):
        grid.resolve_profile("smoke", extended=True)


def test_rate_pilot_brackets_the_profiles_rates_and_reuses_its_claim_run(tmp_path):
    cells = grid_cells.expand("mini", root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path))
    pilot = [cfg for c in cells if grid_cells.PILOT_TAG in c.parameters.get("tags", []) for cfg in c.configs()]
    claim = {cfg.hash: cfg for c in cells if c.notebook == grid_cells.PEFT and grid_cells.PILOT_TAG not in c.parameters["tags"]
             for cfg in c.configs()}
    profile = grid.PROFILES["mini"]
    assert len(pilot) == len(paper.LLMS) * 2 * len(profile.rate_pilot)
    for llm in paper.LLMS:
        own = next(cfg for cfg in claim.values() if cfg.llm == llm and cfg.setup == "qf-lora"
                   and cfg.qf_sublayers == "all" and cfg.benchmark == profile.rate_pilot_benchmark and cfg.seed == 42)
        tried = sorted(cfg.learning_rate for cfg in pilot if cfg.llm == llm and cfg.setup == "qf-lora")
        assert tried[0] < own.learning_rate < tried[-1]
        # the pilot's config at factor 1 is the claim run itself (same hash, same folder)
        assert own.replace(tags=list(own.tags)).hash in claim
    assert not {cfg.hash for cfg in pilot} & set(claim)


def test_config_rate_rule_takes_the_profiles_rates():
    full = ExperimentConfig(setup="baseline", qf_sublayers=None, rank=None, lr_full=5e-4, lr_peft=5e-3)
    peft = ExperimentConfig(setup="qf-lora", lr_full=5e-4, lr_peft=5e-3)
    assert (full.learning_rate, peft.learning_rate) == (5e-4, 5e-3)
    assert ExperimentConfig(setup="qf-lora", lr=1e-3, lr_peft=5e-3).learning_rate == 1e-3
    assert ExperimentConfig().hash == ExperimentConfig(lr_full=None).hash   # hash-neutral at the default
    with pytest.raises(ConfigError):
        ExperimentConfig(lr_peft=-1e-3)


def test_mini_stops_lora_runs_after_two_epochs_without_gain_and_never_cuts_an_adalora_schedule(tmp_path):
    from qformer_peft.engine import effective_patience

    cells = grid_cells.expand("mini", root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path), extended=True)
    every = [cfg for c in cells for cfg in c.configs()]
    adalora = [cfg for cfg in every if cfg.method == "adalora"]
    lora = [cfg for cfg in every if cfg.method == "lora"]
    assert {cfg.benchmark for cfg in adalora} >= {"scienceqa", "iconqa", "flickr30k", "vizwiz",
                                                   f"scienceqa{MULTITASK_SEP}iconqa"}
    # train.fit stops once `patience` epochs in a row fail to improve; epoch 1 always improves, so a patience of
    # max_epochs - 1 or more never stops: the rank budget, scheduled over every step, is always finished
    assert all(effective_patience(cfg) >= cfg.max_epochs - 1 for cfg in adalora)
    assert lora and all(effective_patience(cfg) == 2 for cfg in lora if cfg.max_epochs > 2)
    # the open questions read the grid's runs through the same configs: patience must not split them
    assert len({cfg.hash for cfg in every}) == len(every)


def test_mini_measures_the_held_in_cost_on_each_cells_first_seed_only(tmp_path):
    cells = grid_cells.expand("mini", root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path))
    every = [cfg for c in cells for cfg in c.configs()]
    limit = grid.PROFILES["mini"].hparams["heldin_limit"]
    assert limit > 0
    by_seed = {s: {cfg.heldin_limit for cfg in every if cfg.seed == s} for s in (42, 43, 44)}
    assert by_seed == {42: {limit}, 43: {0}, 44: {0}}
    # every kind of run is still measured on its first seed: the report's held-in table has a row per setup
    measured = {(cfg.setup, cfg.method, cfg.connector) for cfg in every if cfg.heldin_limit}
    assert measured == {(cfg.setup, cfg.method, cfg.connector) for cfg in every}
    # a later seed's run is the config it was before held-in scoring existed (heldin_limit 0 is hash-neutral)
    later = next(cfg for cfg in every if cfg.seed == 43)
    assert "heldin_limit" not in later.to_dict()


def test_model_scaling_adds_only_the_model_size_cell_and_keeps_every_finished_cell(tmp_path):
    """--model-scaling on a finished mini study: same profile name (runs folder, markers), every cell's parameters
    unchanged, so all of them stay finished and only open_scaling_model_t5_iconqa (then the report) executes:
    baseline and QF LoRA on mini-deep-t5 (+1) and mini-wide-t5 (+2), at mini's training-set size and claim seeds."""
    from qformer_peft import open_questions as oq
    from qformer_peft.report_charts import tag_value

    kw = dict(root=tmp_path, checkpoints=str(tmp_path / "ck"))
    plain, scaled = grid_cells.expand("mini", **kw), grid_cells.expand("mini", model_scaling=True, **kw)
    assert grid.resolve_profile("mini", True).name == "mini" and grid.PROFILES["mini"].scaling_models == {}
    assert [(c.name, c.params_hash) for c in plain] == [(c.name, c.params_hash) for c in scaled if c.name in
                                                        {p.name for p in plain}]
    [new] = [c for c in scaled if c.name not in {p.name for p in plain}]
    assert new.name == "open_scaling_model_t5_iconqa" and new.notebook == grid_cells.SCALING
    own = new.configs()
    assert {(Path(c.model).name, c.setup, tag_value(list(c.tags), oq.SIZE_TAG)) for c in own} == {
        (m, s, size) for m, size in (("mini-deep-t5", "+1"), ("mini-wide-t5", "+2")) for s in ("baseline", "qf-lora")}
    assert {c.seed for c in own} == {42, 43, 44} and {c.train_limit for c in own} == {None}  # whole training sets
    assert {c.rank for c in own if c.setup == "qf-lora"} == {8} and {c.llm for c in own} == {"t5"}
    reference = oq.plan("scaling", **new.parameters).reference   # the paper grid's mini runs: already there
    paper = {cfg.hash for c in plain if c.notebook == grid_cells.PEFT for cfg in c.configs()}
    assert reference and {cfg.hash for cfg in reference} <= paper and set(new.after) <= {c.name for c in plain}

    out = tmp_path / "nb"                           # the plain study finished: markers and run folders
    out.mkdir()
    for c in plain:
        runs.write_json(out / f"{c.name}.done.json", {"params_hash": c.params_hash})
    assert [c.name for c in scaled if not execute.is_finished(c, out)] == [new.name]
    plain_bases = grid.PROFILES["mini"].base_models    # the option adds the scaled T5 builds after the profile's
    assert grid.resolve_profile("mini", True).base_models == (*plain_bases, ("mini-deep", "t5"), ("mini-wide", "t5"))
    with pytest.raises(grid.GridError, match="always on"):
        grid_cells.expand("paper", root=tmp_path, data_root=str(tmp_path), checkpoints="/ck", model_scaling=True)
    smoke = {c.name: c for c in grid_cells.expand("smoke", root=tmp_path, model_scaling=True)}
    assert smoke["open_scaling_model_t5_iconqa"].parameters["models"] == ["tiny-deep", "tiny-wide"]


def test_paper_profile_uses_the_papers_hyperparameters(tmp_path):
    cells = {c.name: c for c in grid_cells.expand("paper", root=tmp_path, data_root="/real", checkpoints="Salesforce")}
    llama = cells["peft_llama_scienceqa_qf-lora_all"].configs()[0]
    assert (llama.batch_size, llama.grad_accum, llama.max_epochs, llama.patience) == (8, 2, 15, 3)
    assert llama.model == "Salesforce/instructblip-vicuna-7b"
    assert cells["peft_t5_iconqa_baseline"].configs()[0].learning_rate == 2e-5
    assert cells["peft_t5_iconqa_qf-lora_all"].configs()[0].learning_rate == 5e-4
    flickr = cells["adalora_t5_flickr30k"].configs()[0]
    assert (flickr.max_epochs, flickr.schedule, flickr.lr, flickr.batch_size) == (5, "cosine", 5e-5, 60)
    vizwiz = cells["adalora_t5_vizwiz"].configs()[0]
    assert (vizwiz.lr, vizwiz.batch_size) == (1e-4, 8)


def test_paper_profile_without_data_says_how_to_supply_it(tmp_path, monkeypatch):
    monkeypatch.delenv("QFP_DATA_ROOT", raising=False)
    monkeypatch.delenv("QFP_CHECKPOINTS", raising=False)
    with pytest.raises(grid.GridError, match="--data-root DIR or set QFP_DATA_ROOT"):
        grid_cells.expand("paper", root=tmp_path)
    with pytest.raises(grid.GridError, match="--checkpoints DIR"):
        grid_cells.expand("paper", root=tmp_path, data_root=str(tmp_path))
    monkeypatch.setenv("QFP_DATA_ROOT", str(tmp_path / "real"))
    monkeypatch.setenv("QFP_CHECKPOINTS", str(tmp_path / "ckpt"))
    cfg = grid_cells.expand("paper", root=tmp_path)[1].configs()[0]
    assert cfg.data_root.startswith(str(tmp_path / "real")) and cfg.model.startswith(str(tmp_path / "ckpt"))


def test_only_keeps_matching_experiments_and_the_environment_and_report(tmp_path):
    cells = schedule.select(grid_cells.expand("smoke", root=tmp_path), "adalora_t5_(vizwiz|flickr)")
    assert [c.name for c in cells] == ["environment", "adalora_t5_flickr30k", "adalora_t5_vizwiz", "open_seeds",
                                       "report"]
    with pytest.raises(grid.GridError, match="not a valid regular expression"):
        schedule.select(cells, "(")


def test_exit_status_counts_failures_capped():
    outcomes = [execute.Outcome(f"c{i}", "failed") for i in range(300)] + [execute.Outcome("ok", "done")]
    assert schedule.GridResult(outcomes).exit_status == schedule.MAX_EXIT_STATUS
    assert schedule.GridResult(outcomes[:3] + outcomes[-1:]).exit_status == 3


# --- executing cells -------------------------------------------------------------------------------------
def fake_cell(tmp_path, label, *, ranks=(1, 2), **extra):
    params = {"benchmark": "iconqa", "llm": "t5", "model": "tiny", "setup": "qf-lora", "qf_sublayers": "all",
              "llm_targets": None, "ranks": list(ranks), "seeds": [42], "hparams": {"max_epochs": 1},
              "tags": [f"cell:{label}"], "data_dir": str(tmp_path / "data"), "data_size": "smoke", "data_seed": 0,
              "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "label": label,
              "executions_log": str(tmp_path / "executions.log"), **extra}
    # distinct benchmarks keep the cells' runs apart
    params["benchmark"] = {"a": "iconqa", "b": "scienceqa", "c": "vizwiz"}.get(label[-1], "iconqa")
    return grid_cells.Cell(label, "fake_experiment.ipynb", params)


def report_cell(tmp_path):
    return grid_cells.Cell("report", grid_cells.REPORT, {"runs_dir": str(tmp_path / "runs"), "notebooks_dir": str(tmp_path / "nb"),
                                             "executions_log": str(tmp_path / "executions.log")})


def executions(tmp_path):
    f = tmp_path / "executions.log"
    return f.read_text().split() if f.exists() else []


def run(cells, tmp_path, **kw):
    return schedule.run_grid(cells, out_dir=tmp_path / "nb", notebooks_dir=FIXTURES, log=lambda m: None, **kw)


@pytest.mark.slow
def test_grid_skips_finished_cells_records_failures_and_goes_on(tmp_path):
    cells = [fake_cell(tmp_path, "cell_a"), fake_cell(tmp_path, "cell_b", fail=True), fake_cell(tmp_path, "cell_c"),
             report_cell(tmp_path)]
    result = run(cells, tmp_path, jobs=2)
    states = {o.cell: o.state for o in result.outcomes}
    assert states == {"cell_a": "done", "cell_b": "failed", "cell_c": "done", "report": "done"}
    assert result.exit_status == 1
    failed = runs.read_json(tmp_path / "nb" / "cell_b.failed.json")
    assert "RuntimeError: fixture failure in cell_b" in failed["error"]
    manifest = runs.read_json(tmp_path / "nb" / "grid.json")["cells"]
    assert manifest["cell_b"]["state"] == "failed" and manifest["cell_c"]["state"] == "done"
    assert sorted(executions(tmp_path)) == ["cell_a", "cell_b", "cell_c", "report"]

    # provenance: the executed notebook carries the injected parameters, the run folders the config,
    # and the kernel was this interpreter with the cores split between the two workers
    nb = json.loads((tmp_path / "nb" / "cell_a.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"] == json.loads(json.dumps(dict(cells[0].parameters)))
    done = [r for r in runs.iter_runs(tmp_path / "runs") if r.is_done()]
    assert len(done) == 4 and {tuple(r.config["tags"]) for r in done} == {("cell:cell_a",), ("cell:cell_c",)}
    cores = len(os.sched_getaffinity(0))
    assert {r.result["kernel_python"] for r in done} == {sys.executable}
    assert {r.result["threads"] for r in done} == {str(max(1, cores // 2))}

    # rerun with the failing cell fixed: only it and the report execute; then nothing does
    cells[1] = fake_cell(tmp_path, "cell_b")
    result = run(cells, tmp_path, jobs=2)
    assert {o.cell: o.state for o in result.outcomes} == {"cell_a": "skipped", "cell_b": "done",
                                                          "cell_c": "skipped", "report": "done"}
    assert result.exit_status == 0 and not (tmp_path / "nb" / "cell_b.failed.json").exists()
    assert run(cells, tmp_path).count("skipped") == 4
    assert sorted(executions(tmp_path)) == ["cell_a", "cell_b", "cell_b", "cell_c", "report", "report"]


@pytest.mark.slow
def test_a_cell_that_reads_another_starts_after_it_and_analysis_runs_last(tmp_path):
    notebooks = tmp_path / "notebooks"      # the fixtures, the report fixture standing in for the seeds analysis
    notebooks.mkdir()
    shutil.copy(FIXTURES / "fake_experiment.ipynb", notebooks)
    shutil.copy(FIXTURES / grid_cells.REPORT, notebooks / grid_cells.SEEDS)
    started_b, started_analysis = tmp_path / "b_started.log", tmp_path / "analysis_started.log"  # written at start
    reader = grid_cells.Cell("cell_b", "fake_experiment.ipynb",
                       fake_cell(tmp_path, "cell_b", executions_log=str(started_b)).parameters, after=("cell_a",))
    slow = fake_cell(tmp_path, "cell_a", sleep_s=1.0)
    analysis = grid_cells.Cell("open_seeds", grid_cells.SEEDS, {"runs_dir": str(tmp_path / "runs"),
                                                               "executions_log": str(started_analysis)})
    assert analysis.kind == "analysis" and analysis.configs() == []
    # listed first and free to start with two workers, the reader still waits for cell_a, the analysis for both
    result = schedule.run_grid([analysis, reader, slow], out_dir=tmp_path / "nb", notebooks_dir=notebooks,
                               log=lambda m: None, jobs=2)
    assert result.exit_status == 0
    done = {c: (tmp_path / "nb" / f"{c}.done.json").stat().st_mtime_ns for c in ("cell_a", "cell_b")}
    assert started_b.stat().st_mtime_ns >= done["cell_a"]
    assert started_analysis.stat().st_mtime_ns >= max(done.values())
    cells = grid_cells.expand("smoke", root=tmp_path)
    assert [c.kind for c in cells][-2:] == ["analysis", "report"]


def test_connector_notebooks_start_first_and_a_second_one_reads_the_first_ones_alignments(tmp_path):
    three = (("t5", "iconqa", "claims"), ("t5", "scienceqa", "claims"), ("t5", "iconqa", "budgets"))
    cells = grid_cells.expand(dataclasses.replace(grid.PROFILES["mini"], connector_cells=three), root=tmp_path)
    order = schedule.start_order(cells)
    connectors = [c for c in cells if c.notebook == grid_cells.CONNECTORS]
    assert order[0].kind == "environment" and len(connectors) == 3 and order[1:4] == connectors
    # then the longest first: the claim rows (3 seeds, up to 8 epochs) before AdaLoRA's one seed and the other rows
    budget = [sum(cfg.max_epochs for cfg in c.configs()) for c in order[4:]]
    assert budget == sorted(budget, reverse=True) and budget[0] > budget[-1]
    assert sorted(c.name for c in order) == sorted(c.name for c in cells)
    by_name = {c.name: c for c in connectors}
    # the two claim notebooks align the same connectors: the second starts once the first has finished
    assert by_name["connectors_t5_scienceqa_claims"].after == ("connectors_t5_iconqa_claims",)
    assert by_name["connectors_t5_iconqa_claims"].after == () and by_name["connectors_t5_iconqa_budgets"].after == ()


@pytest.mark.slow
def test_cell_with_all_runs_done_is_skipped_and_changed_parameters_rerun(tmp_path):
    cell = fake_cell(tmp_path, "cell_a")
    for cfg in cell.configs():                                 # runs finished outside the grid
        r = runs.RunDir.open(tmp_path / "runs", cfg.to_dict(), prefix=cfg.run_name)
        r.mark_done({"test_score": 1.0})
    assert not execute.is_finished(cell, tmp_path / "nb")        # no executed notebook yet: run it
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "cell_a.ipynb").write_text("{}")       # its notebook kept, its marker lost
    assert run([cell], tmp_path).count("skipped") == 1 and executions(tmp_path) == []
    more = fake_cell(tmp_path, "cell_a", ranks=(1, 2, 4))      # one more rank: the cell is not finished
    assert run([more], tmp_path).count("done") == 1
    assert executions(tmp_path) == ["cell_a"]
    assert [r.result["test_score"] for r in runs.iter_runs(tmp_path / "runs")].count(1.0) == 2  # not redone
    assert len(runs.iter_runs(tmp_path / "runs")) == 3


def test_missing_checkpoint_fails_the_cell_without_starting_it(tmp_path):
    cell = fake_cell(tmp_path, "cell_a", model=str(tmp_path / "no-such-checkpoint"))
    result = run([cell], tmp_path)
    assert result.exit_status == 1 and "no-such-checkpoint not found" in result.failures[0].error
    assert executions(tmp_path) == []


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_grid import fake_cell, FIXTURES
from qformer_peft import schedule
tmp = Path({tmp!r})
cells = [fake_cell(tmp, f"cell_{{x}}", sleep_s=0.3) for x in "abc"]
sys.exit(schedule.run_grid(cells, out_dir=tmp / "nb", notebooks_dir=FIXTURES).exit_status)
"""


@pytest.mark.slow
def test_killed_grid_reruns_only_what_is_missing(tmp_path):
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "nb" / "cell_a.done.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the grid ended before its first cell finished"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                       # the grid and its papermill children, at once
    proc.wait()
    assert not (tmp_path / "nb" / "cell_c.done.json").exists()

    cells = [fake_cell(tmp_path, f"cell_{x}", sleep_s=0.3) for x in "abc"]
    result = run(cells, tmp_path)
    assert result.exit_status == 0
    assert {o.cell: o.state for o in result.outcomes}["cell_a"] == "skipped"
    log = executions(tmp_path)
    assert log.count("cell_a") == 1 and log.count("cell_c") == 1 and log[-1] == "cell_c"
    assert all(r.is_done() for r in runs.iter_runs(tmp_path / "runs")) and len(runs.iter_runs(tmp_path / "runs")) == 6


def test_submitit_backend_with_its_local_executor(tmp_path):
    submitit = pytest.importorskip("submitit", reason="submitit is an optional extra (pip install '.[slurm]')")
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    outcomes = []
    cells = [fake_cell(tmp_path, "cell_a"), fake_cell(tmp_path, "cell_b", fail=True)]
    schedule.run_submitit(cells, notebooks_dir=FIXTURES, out_dir=tmp_path / "nb", kernel="python3", env={},
                       timeout=None, record=outcomes.append, run_final=lambda: False, executor=executor)
    assert {o.cell: o.state for o in outcomes} == {"cell_a": "done", "cell_b": "failed"}


def test_submitit_missing_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(grid.GridError, match=r"qformer-peft\[slurm\]"):
        run([fake_cell(tmp_path, "cell_a")], tmp_path, backend="submitit")


@pytest.mark.parametrize("name", ["smoke", "mini"])
def test_null_adalora_cells_repeat_a_real_cell_with_shuffled_answers(name, tmp_path):
    extended = bool(grid.PROFILES[name].extended)   # mini runs its null cells with --extended
    cells = {c.name: c for c in grid_cells.expand(name, root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path),
                                                  extended=extended)}
    nulls = [c for c in cells.values() if grid_cells.NULL_TAG in c.parameters.get("tags", [])]
    profile = grid.resolve_profile(name, extended=extended)
    assert len(nulls) == len(profile.adalora_null_cells) >= 1
    for c in nulls:
        real = cells[c.name.replace("adalora-null_", "adalora_")]
        for a, b in zip(c.configs(), real.configs()):
            assert a.shuffle_answers and not b.shuffle_answers and a.hash != b.hash
            assert a.replace(shuffle_answers=False, tags=b.tags) == b          # the same schedule, same seed
    n_runs = sum(len(c.configs()) for c in nulls)
    assert n_runs <= 12                                                    # few runs: cheap


"""The open questions (past the paper): a joint benchmark trains on both tasks and scores each; the plans reuse
the paper grid's runs; every claim flips its verdict when the data flips (constructed DataFrames); the
formulas behind the seed orderings; the charts render."""
import numpy as np
import pandas as pd
import pytest

from qformer_peft import claim_ledger
from qformer_peft import claims as C
from qformer_peft import grid, grid_cells, config, open_charts, paper, workbook
from qformer_peft import open_questions as oq
from qformer_peft import seed_variance as sv
from qformer_peft import report_charts as rc
from qformer_peft.config import ConfigError, ExperimentConfig

SEEDS = (42, 43, 44)


# --- multi-task in the engine ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    return workbook.ensure_data(tmp_path_factory.mktemp("data"), "smoke", 0)


def test_joint_benchmark_validation_names_the_fix(tmp_path):
    cfg = ExperimentConfig(benchmark="scienceqa+iconqa", method="adalora", rank=None)
    assert cfg.tasks == ("scienceqa", "iconqa") and cfg.run_name.startswith("scienceqa-iconqa_")
    for bad in ("scienceqa+vizwiz", "iconqa+iconqa", "scienceqa+"):
        with pytest.raises(ConfigError, match="joins distinct multiple-choice benchmarks"):
            ExperimentConfig(benchmark=bad)
    [c] = config.experiment_configs(benchmark="scienceqa+iconqa", llm="t5", model="tiny", data_dir=str(tmp_path),
                                  method="adalora")
    assert c.data_root == str(tmp_path)                       # one root per task there
    from qformer_peft import run_inputs

    with pytest.raises(ConfigError, match="needs one root per task"):
        run_inputs.load_examples(c)


def test_joint_run_loads_both_tasks_and_scores_each(smoke_data, tmp_path):
    from qformer_peft import engine, run_inputs, runs

    hp = {"max_epochs": 1, "patience": 1, "batch_size": 8, "train_limit": 8, "val_limit": 4, "test_limit": 6}
    [cfg] = config.experiment_configs(benchmark="scienceqa+iconqa", llm="t5", model="tiny", data_dir=str(smoke_data),
                                    method="adalora", hparams=hp)
    splits = run_inputs.load_examples(cfg)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [16, 8, 12]      # each task cut to its limit
    assert {e.meta["task"] for e in splits["train"]} == {"scienceqa", "iconqa"}
    assert all(e.id.startswith(e.meta["task"] + "/") for e in splits["test"])
    assert len({e.id for e in splits["train"]}) == 16

    result = engine.run_experiment(cfg, out=tmp_path / "runs", cache_dir=tmp_path / "cache")
    tasks = result["test"]["tasks"]
    assert set(tasks) == {"scienceqa", "iconqa"} and tasks["scienceqa"]["n"] == tasks["iconqa"]["n"] == 6
    assert "categories" in tasks["scienceqa"] and "categories" not in tasks["iconqa"]
    assert result["test"]["accuracy"] == pytest.approx(np.mean([t["accuracy"] for t in tasks.values()]))
    preds = runs.RunDir(next((tmp_path / "runs").glob("scienceqa-iconqa*"))).predictions()
    for task in ("scienceqa", "iconqa"):
        mine = [p for p in preds if p["task"] == task]
        assert len(mine) == 6 and 100 * np.mean([p["correct"] for p in mine]) == pytest.approx(tasks[task]["accuracy"])
    assert result["n"] == {"train": 16, "val": 8, "test": 12}


# --- plans ------------------------------------------------------------------------------------------------
def test_open_question_cells_reuse_the_paper_grid_runs_and_tag_their_own(tmp_path):
    cells = grid_cells.expand("mini", root=tmp_path, data_root=str(tmp_path / "data"), checkpoints=str(tmp_path / "ck"),
                              extended=True)
    paper = {cfg.hash for c in cells if c.notebook in (grid_cells.PEFT, grid_cells.ADALORA) for cfg in c.configs()}
    names = {c.name for c in cells}
    opened = [c for c in cells if c.notebook in grid_cells.OPEN_QUESTION_OF]
    assert {c.notebook for c in opened} == {grid_cells.MULTITASK, grid_cells.SCALING, grid_cells.RANK_SENSITIVITY}
    for c in opened:
        p = oq.plan(grid_cells.OPEN_QUESTION_OF[c.notebook], **c.parameters)
        assert p.reference and {cfg.hash for cfg in p.reference} <= paper, c.name   # same configs: same folders
        assert p.own and not {cfg.hash for cfg in p.own} & paper
        assert all(f"study:{grid_cells.OPEN_QUESTION_OF[c.notebook]}" in cfg.tags for cfg in p.own)
        assert c.after and set(c.after) <= names
    ranks = next(c for c in opened if c.notebook == grid_cells.RANK_SENSITIVITY).configs()
    assert sorted({cfg.rank for cfg in ranks}) == sorted(grid.PROFILES["mini"].extra_ranks)
    assert {cfg.seed for cfg in ranks} == set(SEEDS)
    sizes = next(c for c in opened if c.notebook == grid_cells.SCALING).configs()
    assert sorted({cfg.train_limit for cfg in sizes}) == sorted(grid.resolve_profile("mini", extended=True).train_limits)
    assert [c.name for c in cells if c.kind == "analysis"] == ["open_seeds"]


def test_model_size_axis_tags_each_larger_model(tmp_path):
    p = oq.scaling_plan(llm="t5", benchmark="iconqa", model="/ck/xl", data_dir=str(tmp_path), rank=8,
                        models=["/ck/xxl", "/ck/xxxl"], seeds=[42], hparams={"train_limit": 100})
    sizes = {(cfg.model, cfg.setup): rc.tag_value(list(cfg.tags), oq.SIZE_TAG) for cfg in p.own}
    assert sizes == {("/ck/xxl", "baseline"): "+1", ("/ck/xxl", "qf-lora"): "+1",
                     ("/ck/xxxl", "baseline"): "+2", ("/ck/xxxl", "qf-lora"): "+2"}
    assert {cfg.model for cfg in p.reference} == {"/ck/xl"} and {cfg.train_limit for cfg in p.own} == {100}
    cells = {c.name: c for c in grid_cells.expand("paper", root=tmp_path, data_root=str(tmp_path), checkpoints="/ck")}
    assert cells["open_scaling_model_t5_iconqa"].parameters["models"] == ["/ck/instructblip-flan-t5-xxl"]
    assert "open_scaling_model_t5_iconqa" not in {c.name for c in grid_cells.expand("mini", root=tmp_path)}
    scaled = {c.name: c for c in grid_cells.expand("mini", root=tmp_path, checkpoints="/ck", model_scaling=True)}
    assert scaled["open_scaling_model_t5_iconqa"].parameters["models"] == ["/ck/mini-deep-t5", "/ck/mini-wide-t5"]


@pytest.mark.parametrize("gain,verdict", [(2.0, C.HOLDS), (-2.0, C.FAILS)])
def test_model_size_claim_judges_run_folders_of_two_model_sizes(tmp_path, gain, verdict):
    """SC-model from run folders as the engine writes them (fixtures): the profile's model and one larger."""
    from fixtures.study_runs import write_open_questions, write_study

    runs_dir = write_study(tmp_path, ranks=(2, 8), benchmarks=("iconqa",), rows=oq.SCALING_ROWS, adalora=())
    write_open_questions(tmp_path, rank=8, train_limits=(), models=("/ck/mini-wide-t5",), model_gain=gain)
    df = rc.runs_frame(runs_dir)
    v = oq.scaling_model_claim(df)
    assert v.verdict == verdict and "t5/iconqa: gap tiny +1.1, mini-wide-t5 " in v.evidence, v.evidence
    data, model = oq.scaling_axes(oq.scaling_frame(df))
    assert set(model["model_size"]) == {0, 1} and set(data["model_size"]) == {0}
    assert oq.scaling_model_claim(df[df["model"] != "/ck/mini-wide-t5"]).evidence.startswith(
        "not measured at this scale") and "--model-scaling" in oq.scaling_model_claim(df.iloc[:0]).evidence


# --- constructed frames -----------------------------------------------------------------------------------
def runs_df(rows):
    """A runs_frame-like DataFrame: the columns the open questions read, with the usual defaults."""
    base = {"state": "done", "method": "lora", "study": "paper", "tags": [], "llm": "t5", "benchmark": "iconqa",
            "model": "mini", "connector": "qformer", "qf_sublayers": None, "llm_targets": None, "rank": None,
            "result.n.train": 320, "trainable": 1000}
    rows = [{**base, **r} for r in rows]
    for r in rows:
        r["targets"] = rc.targets_label(r["setup"], r["qf_sublayers"], r["llm_targets"])
        r["run_id"] = f"{r['benchmark']}-{r['setup']}-{r['rank']}-{r['seed']}-{r['study']}-{r['result.n.train']}"
    return pd.DataFrame(rows)


def noise(seed, scale=0.2):
    return float(np.random.default_rng(seed).normal(0, scale))


def multitask_df(effect, spread=0.2):
    rows = []
    for s in SEEDS:
        for t in oq.MULTITASK_TASKS:
            rows.append({"benchmark": t, "method": "adalora", "setup": "qf-lora", "qf_sublayers": "all", "seed": s,
                         "acc": 50.0 + noise(s)})
        rows.append({"benchmark": "scienceqa+iconqa", "method": "adalora", "setup": "qf-lora", "qf_sublayers": "all",
                     "seed": s, "study": "multitask", "acc": 50.0,
                     **{f"result.test.tasks.{t}.accuracy": 50.0 + noise(s) + effect + noise(s + 7, spread)
                        for t in oq.MULTITASK_TASKS}})
    return runs_df(rows)


def test_multitask_accuracy_claim_flips():
    assert oq.multitask_acc_claim(multitask_df(-0.3)).verdict == C.HOLDS          # within a point
    v = oq.multitask_acc_claim(multitask_df(-4.0))
    assert v.verdict == C.FAILS and "t5/iconqa: joint − alone -3.97 pt" in v.evidence
    assert oq.multitask_acc_claim(multitask_df(-1.0, spread=4.0)).verdict == C.INCONCLUSIVE
    acc = oq.multitask_accuracy(multitask_df(0.0))
    assert len(acc) == 12 and set(acc["mode"]) == {"alone", "joint"}


def ranks_rows(benchmark, levels, seed):
    rows = []
    for layer in (1, 2):
        for sub in ("self_attn", "cross_attn", "ffn"):
            rows.append({"run_id": f"{benchmark}-{seed}", "llm": "t5", "benchmark": benchmark, "seed": seed,
                         "layer": layer, "sublayer": sub, "branch": None, "module": "m", "step": 10,
                         "rank": levels[sub] + layer + noise(seed * 10 + layer, 0.1)})
    return rows


ICON = {"self_attn": 11.0, "cross_attn": 8.0, "ffn": 3.0}
SQA = {"self_attn": 7.0, "cross_attn": 7.0, "ffn": 9.0}


def test_allocation_claim_flips_and_the_difference_map():
    mean = {k: (ICON[k] + SQA[k]) / 2 for k in ICON}
    between = pd.DataFrame([r for s in SEEDS for b, lv in (("iconqa", ICON), ("scienceqa", SQA),
                                                           ("scienceqa+iconqa", mean)) for r in ranks_rows(b, lv, s)])
    v = oq.multitask_alloc_claim(between)
    assert v.verdict == C.HOLDS and "nearer" in v.evidence
    lopsided = {"self_attn": 1.0, "cross_attn": 1.0, "ffn": 30.0}       # far from both tasks
    away = pd.DataFrame([r for s in SEEDS for b, lv in (("iconqa", ICON), ("scienceqa", SQA),
                                                        ("scienceqa+iconqa", lopsided)) for r in ranks_rows(b, lv, s)])
    assert oq.multitask_alloc_claim(away).verdict == C.FAILS
    diff = oq.allocation_difference(between).set_index(["versus", "layer", "sublayer"])["diff"]
    assert diff[("joint − iconqa", 1, "self_attn")] == pytest.approx(mean["self_attn"] - ICON["self_attn"], abs=0.2)
    shares = oq.allocation_shares(between)
    assert np.allclose(shares.groupby(["benchmark", "seed"])["share"].sum(), 1.0)


def scaling_df(gap_at, sizes=(40, 80, 320), model_gap=None):
    """gap_at(n) -> QF LoRA − baseline at n training items; model_gap: the gap on a model one size up."""
    rows = []
    for s in SEEDS:
        for n in sizes:
            study = "paper" if n == 320 else "scaling"
            rows.append({"setup": "baseline", "seed": s, "acc": 50 + noise(s + n), "study": study,
                         "result.n.train": n})
            rows.append({"setup": "qf-lora", "qf_sublayers": "all", "rank": 8, "seed": s, "study": study,
                         "acc": 50 + noise(s + n) + gap_at(n) + noise(s * 3 + n), "result.n.train": n})
        if model_gap is not None:
            tags = ["study:scaling", f"{oq.SIZE_TAG}:+1"]
            rows.append({"setup": "baseline", "seed": s, "acc": 60 + noise(s), "study": "scaling", "tags": tags,
                         "model": "/ck/xxl"})
            rows.append({"setup": "qf-lora", "qf_sublayers": "all", "rank": 8, "seed": s, "study": "scaling",
                         "tags": tags, "model": "/ck/xxl", "acc": 60 + noise(s) + model_gap + noise(s * 5)})
        rows.append({"setup": "qf-lora", "qf_sublayers": "all", "rank": 2, "seed": s, "acc": 0.0})  # not rank 8
    return runs_df(rows)


def test_scaling_claims_flip():
    grows = scaling_df(lambda n: 3.0 * 320 / n - 3.0)                   # LoRA ahead on little data
    v = oq.scaling_data_claim(grows)
    assert v.verdict == C.HOLDS and "n=40: +21.0" in v.evidence
    assert oq.scaling_data_claim(scaling_df(lambda n: -3.0 * 320 / n)).verdict == C.FAILS
    assert oq.scaling_data_claim(scaling_df(lambda n: 0.0)).verdict == C.INCONCLUSIVE
    frame = oq.scaling_frame(grows)
    assert set(frame["train_n"]) == {40, 80, 320} and set(frame.query("setup == 'qf-lora'")["acc"]) != {0.0}
    one = oq.scaling_model_claim(grows)
    assert one.verdict == C.NOT_RESOLVABLE and "not measured at this scale" in one.evidence
    bigger = oq.scaling_model_claim(scaling_df(lambda n: 0.0, model_gap=4.0))
    assert bigger.verdict == C.HOLDS and "xxl +3.9; larger − smaller +3.85 pt" in bigger.evidence
    assert oq.scaling_model_claim(scaling_df(lambda n: 0.0, model_gap=-4.0)).verdict == C.FAILS


def rank_df(gain_at):
    rows = []
    for s in SEEDS:
        for setup, qf, lt in oq.RANK_ROWS:
            for r in (1, 2, 4, 8, 16, 32):
                rows.append({"setup": setup, "qf_sublayers": qf, "llm_targets": lt, "rank": r, "seed": s,
                             "study": "ranks" if r > 8 else "paper", "acc": 60 + gain_at(r) + noise(s * 50 + r, 0.1)})
    return runs_df(rows)


def test_rank_claims_flip():
    flat = rank_df(lambda r: min(r, 8) * 0.5)
    assert oq.rank_claim(flat, "qf-lora").verdict == C.HOLDS
    assert oq.rank_claim(flat, "qf-lora+llm-lora").verdict == C.HOLDS
    rising = oq.rank_claim(rank_df(lambda r: r * 0.5), "qf-lora")          # r=16: +4, r=32: +12 over r=8
    assert rising.verdict == C.FAILS and "r=32 − r=8 +12.07 pt" in rising.evidence
    frame = oq.rank_frame(flat)
    assert sorted(set(frame["rank"])) == [1, 2, 4, 8, 16, 32] and set(frame["study"]) == {"paper", "ranks"}


# --- seeds ----------------------------------------------------------------------------------------------
def test_ordering_formulas():
    a, b = {42: 3.0, 43: 1.0, 44: 2.0}, {42: 1.0, 43: 2.0, 44: 2.0}
    assert sv.single_run_order(a, b) and not sv.single_run_order(b, a)
    # pairs (a_i, b_j): 3>1,3>2,3>2; 1<2 (x2), 1=1 -> half; 2>1, 2=2 (x2) -> halves
    assert sv.seed_pair_fraction(a, b) == pytest.approx((3 + 0 + 0.5 + 1 + 0.5 + 0.5 + 0 + 0) / 9, abs=0.06)
    assert sv.seed_pair_fraction(a, b) == pytest.approx(np.mean([x > y or 0.5 * (x == y) for x in a.values()
                                                                 for y in b.values()]))
    assert sv.held_out(a, b) == [-1.0, 0.0]                    # the single run's seed is left out
    assert sv.held_out({42: 1.0, 43: 2.0}, {42: 0.0, 43: 0.0}) == [1.0, 2.0]


def seeds_df(effects, rank_effect=0.3, spread=0.2):
    rows = []
    for s in SEEDS:
        for setup, qf, lt in paper.CLAIM_ROWS:
            for r in ((None,) if setup == "baseline" else (2, 8)):
                acc = 60 + effects(setup, s) + (rank_effect * (r or 0)) + noise(s * 7 + (r or 0), spread)
                rows.append({"setup": setup, "qf_sublayers": qf, "llm_targets": lt, "rank": r, "seed": s, "acc": acc})
    return runs_df(rows)


def test_seed_claims_flip_and_the_spread_table():
    steady = seeds_df(lambda setup, s: {"baseline": 0.0, "qf-lora": -12.0, "qf-lora+llm-lora": 6.0}[setup],
                      rank_effect=1.0)
    cells = sv.seed_cells(steady)
    assert len(cells) == 5 and set(cells["n"]) == {3}
    base = cells[cells["setup"] == "baseline"].iloc[0]
    assert base["single_seed"] == 42 and base["min"] <= base["single_run"] <= base["max"]
    assert sv.seeds_setup_claim(steady).verdict == C.HOLDS
    assert sv.seeds_best_rank_claim(steady).verdict == C.HOLDS                 # r=8 best in every row
    pairs = sv.orderings(steady)
    assert len(pairs) == 10 and pairs["fraction"].between(0, 1).all()

    # the single run (seed 42) shows the opposite order of every other seed
    flipped = seeds_df(lambda setup, s: {"baseline": 0.0, "qf-lora": -6.0, "qf-lora+llm-lora": 8.0}[setup]
                       * (-1 if s == 42 else 1), rank_effect=0.0)
    v = sv.seeds_setup_claim(flipped)
    assert v.verdict == C.FAILS and "% of seed pairs agree" in v.evidence
    lucky = seeds_df(lambda setup, s: 0.0, rank_effect=0.0, spread=2.0)
    assert sv.seeds_setup_claim(lucky).verdict == C.INCONCLUSIVE
    nothing = oq.open_claims(steady.iloc[:0].assign(study=[]), questions=["seeds"])[0]
    assert nothing.verdict == C.NOT_RESOLVABLE and "--extended" in nothing.resolve


def test_every_open_claim_is_in_the_ledger_and_paper_claims_ignore_open_runs():
    df = pd.concat([seeds_df(lambda setup, s: 0.0), rank_df(lambda r: 0.0)], ignore_index=True)
    ids = [c.id for c in claim_ledger.ledger(df, pd.DataFrame(), full_size={})]
    assert ids[-len(oq.OPEN_CLAIMS):] == list(oq.OPEN_CLAIMS)
    t = rc.table1(df)
    assert set(t["rank"].dropna().astype(int)) <= {1, 2, 4, 8}                 # r = 16, 32 stay out of Table 1


# --- charts ----------------------------------------------------------------------------------------------
def test_open_question_charts_render_offline():
    mean = {k: (ICON[k] + SQA[k]) / 2 for k in ICON}
    ranks = pd.DataFrame([r for s in SEEDS for b, lv in (("iconqa", ICON), ("scienceqa", SQA),
                                                         ("scienceqa+iconqa", mean)) for r in ranks_rows(b, lv, s)])
    frame = oq.scaling_frame(scaling_df(lambda n: 1.0))
    steady = seeds_df(lambda setup, s: 0.0)
    charts = [open_charts.multitask_tradeoff(oq.multitask_accuracy(multitask_df(0.0))),
              open_charts.allocation_difference(oq.allocation_difference(ranks)),
              open_charts.sublayer_shares(oq.allocation_shares(ranks)),
              open_charts.scaling_accuracy(frame), open_charts.scaling_gap(oq.scaling_gaps(frame), frame),
              open_charts.rank_sensitivity(oq.rank_frame(rank_df(lambda r: 0.0))),
              open_charts.seed_spread(sv.seed_cells(steady), steady),
              open_charts.ordering_fractions(sv.orderings(steady))]
    for chart in charts:
        svg = rc.to_svg(chart)
        assert svg.startswith("<svg") and ("<path" in svg or "<rect" in svg)

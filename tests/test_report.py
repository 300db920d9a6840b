"""The report: tables, heatmaps and claim verdicts computed from run folders (constructed here), and
the HTML it writes: every chart inline, no script or stylesheet from the network, code one click away."""
import json

import nbformat
import numpy as np
import pandas as pd
import pytest
from fixtures.study_runs import PAPER_PATTERN, SETUP_EFFECT, write_open_questions, write_study

from qformer_peft import claim_ledger, claims, paper, report, results, runs
from qformer_peft import open_questions as oq
from qformer_peft import report_charts as rc

FULL_SIZE = {"flan-t5-xl": [  # the shape of params.parameter_ledger's rows, with the docs/protocol.md §2 figures
    {"llm": "flan-t5-xl", "setup": "qf-lora", "qf_sublayers": "all", "llm_targets": None, "rank": 8,
     "qformer_lora": 2_125_824, "llm_lora": 0, "total": 3_728_128, "pct_of_baseline": 1.99, "pct_of_qformer": 1.15},
    {"llm": "flan-t5-xl", "setup": "qf-lora+llm-lora", "qf_sublayers": "all", "llm_targets": "all", "rank": 8,
     "qformer_lora": 2_125_824, "llm_lora": 12_976_128, "total": 16_704_256, "pct_of_baseline": 8.92,
     "pct_of_qformer": 8.13}]}


def study(tmp_path, name="s", **kw):
    root = tmp_path / name
    root.mkdir()
    runs_dir = write_study(root, ranks=kw.pop("ranks", (2,)), **kw)
    df = rc.runs_frame(runs_dir)
    return df, rc.ranks_frame(df)


def by_id(df, ranks):
    out = {}
    for c in claim_ledger.ledger(df, ranks, full_size=FULL_SIZE):
        if c.scale != "full size (derived)":
            out.setdefault(c.id, c.verdict)
    return out


# --- heatmap values ------------------------------------------------------------------------------------
def test_heatmap_is_the_mean_rank_per_layer_and_sublayer_from_the_final_allocation():
    rows = []
    for phase, scale in (("epoch", 10), ("final", 1)):   # same step: the 'final' rows win
        rows += [{"layer": 0, "sublayer": "self_attn", "branch": None, "module": m, "rank": r * scale, "step": 5,
                  "phase": phase} for m, r in (("query", 4), ("value", 6))]
        rows += [{"layer": 0, "sublayer": "cross_attn", "branch": None, "module": "key", "rank": 3 * scale, "step": 5,
                  "phase": phase}]
        rows += [{"layer": layer, "sublayer": "ffn", "branch": b, "module": m, "rank": r * scale, "step": 5,
                  "phase": phase} for layer, b, m, r in ((0, "text", "intermediate", 8), (0, "query", "output", 2),
                                                          (1, "text", "output", 1))]
    rows += [{"layer": 1, "sublayer": "self_attn", "branch": None, "module": "query", "rank": 12, "step": 1,
              "phase": "epoch"}]  # an earlier step: not final
    ranks = pd.DataFrame(rows).assign(run_id="r", llm="t5", benchmark="iconqa", seed=42)
    ranks["layer"] += 1   # ranks_frame reports 1-based layers
    v = rc.heatmap_values(rc.final_ranks(ranks)).set_index(["layer", "sublayer"])["mean_rank"].to_dict()
    assert v == {(1, "self_attn"): 5.0, (1, "cross_attn"): 3.0, (1, "ffn"): 5.0, (2, "ffn"): 1.0}


def test_ranks_frame_numbers_layers_from_one(tmp_path):
    df, ranks = study(tmp_path, benchmarks=(), adalora=("iconqa",), seeds=(42,))
    assert ranks["layer"].min() == 1
    cross_layers = set(ranks[ranks["sublayer"] == "cross_attn"]["layer"])
    assert cross_layers == {1, 3}            # 0-based 0 and 2: odd layers in the paper's numbering
    final = rc.final_ranks(ranks)
    assert set(final["phase"]) == {"final"} and len(final) == len(ranks) // 3


# --- Table 1 ---------------------------------------------------------------------------------------------
def test_table1_marks_the_best_rank_of_each_row_and_the_best_of_each_setup(tmp_path):
    df, _ = study(tmp_path, ranks=(2, 8), adalora=(), seeds=(42, 43), benchmarks=("scienceqa",))
    t = rc.table1(df)
    assert len(t) == 8 * 2 + 1                             # 8 LoRA rows x 2 ranks + the baseline
    assert (t.groupby(["benchmark", "setup", "targets"])["best_in_row"].sum() == 1).all()
    assert (t.groupby(["benchmark", "setup"])["best_in_setup"].sum() >= 1).all()
    best = t[t["best_in_row"] & (t["setup"] == "qf-lora")]
    assert set(best["rank"]) == {8}                       # the fixture's accuracy grows with the rank
    assert set(t["n_seeds"]) == {2}
    baseline = t[t["setup"] == "baseline"].iloc[0]
    assert baseline["trainable"] == 101_000 and pd.isna(baseline["rank"])
    html = rc.table1_html(t)
    assert html.count("★") == int(t["best_in_setup"].sum()) + 1   # + the legend
    assert "r=8" in html and "full Q-Former" in html and "101.00k" in html


# --- claim verdicts --------------------------------------------------------------------------------------
def test_headline_claims_flip_with_the_data(tmp_path):
    kw = dict(adalora=(), rows=paper.CLAIM_ROWS, benchmarks=("iconqa",))
    better = {**SETUP_EFFECT, "qf-lora": 2.0, "qf-lora+llm-lora": 8.0}
    df, ranks = study(tmp_path, "paper_like", effects=better, **kw)
    v = by_id(df, ranks)
    assert v["H1-acc"] == claims.HOLDS and v["H2-acc"] == claims.HOLDS

    worse = {**SETUP_EFFECT, "qf-lora": -9.0, "qf-lora+llm-lora": -6.0}
    df2, ranks2 = study(tmp_path, "worse", effects=worse, **kw)
    v = by_id(df2, ranks2)
    assert v["H1-acc"] == claims.FAILS and v["H2-acc"] == claims.FAILS

    noisy = {**SETUP_EFFECT, "qf-lora": -2.5, "qf-lora+llm-lora": -1.5}
    df3, ranks3 = study(tmp_path, "noisy", effects=noisy, noise=3.0, **kw)
    v = by_id(df3, ranks3)
    assert v["H1-acc"] == claims.INCONCLUSIVE and v["H2-acc"] == claims.INCONCLUSIVE

    # nothing moved: every setup at the base's zero-shot level on the same items
    still = study(tmp_path, "still", effects=better, zero_shot=75.0, **kw)
    assert set(by_id(*still)[c] for c in ("H1-acc", "H2-acc")) == {claims.NOT_RESOLVABLE}


def test_parameter_claims_show_both_denominators(tmp_path):
    df, ranks = study(tmp_path, adalora=(), benchmarks=("iconqa",), rows=paper.CLAIM_ROWS)
    rows = claim_ledger.ledger(df, ranks, full_size=FULL_SIZE)
    params = [c for c in rows if c.id.startswith("H1-params")]
    assert len(params) == 4 and {c.scale for c in params} == {"embedded", "full size (derived)"}
    assert len({c.id for c in rows}) == len(rows)              # claims.json's ids are unique
    full = {c.statement.split("[")[1]: c for c in params if c.scale == "full size (derived)"}
    assert all(c.verdict == claims.HOLDS for c in full.values())
    assert "1.99%" in next(c.evidence for k, c in full.items() if k.startswith("share of all"))
    measured = next(c for c in params if c.scale == "embedded" and "share of all" in c.statement)
    # fixture: qf-lora r=2 trains 1,000 LoRA + 1,000 extras against the baseline's 101,000
    assert measured.verdict == claims.NOT_COMPARABLE and "2,000 trainable / 101,000 = 1.98%" in measured.evidence
    over = [dict(FULL_SIZE["flan-t5-xl"][0], pct_of_baseline=2.81)]
    assert claims.params_claim_full_size(over, "qf-lora", 2.0).verdict == claims.FAILS


def swapped(pattern, bench, a, b):
    p = {k: dict(v) for k, v in pattern.items()}
    p[bench][a], p[bench][b] = p[bench][b], p[bench][a]
    return p


@pytest.mark.slow
def test_adalora_claims_hold_on_the_papers_pattern_and_flip_when_it_changes(tmp_path):
    kw = dict(benchmarks=(), ranks=())
    v = by_id(*study(tmp_path, "paper", **kw))
    assert [v[c] for c in ("C1", "C2", "C3", "C4", "C5")] == [claims.HOLDS] * 5

    v = by_id(*study(tmp_path, "c1", pattern=swapped(PAPER_PATTERN, "iconqa", "self_attn", "cross_attn"), **kw))
    assert v["C1"] == claims.FAILS

    reversed_ = dict(PAPER_PATTERN, iconqa=PAPER_PATTERN["scienceqa"], scienceqa=PAPER_PATTERN["iconqa"])
    v = by_id(*study(tmp_path, "c2", pattern=reversed_, **kw))
    assert v["C2"] == claims.FAILS                        # ScienceQA less balanced than IconQA

    like = dict(PAPER_PATTERN, flickr30k=PAPER_PATTERN["scienceqa"], vizwiz=PAPER_PATTERN["iconqa"])
    assert by_id(*study(tmp_path, "c5", pattern=like, **kw))["C5"] == claims.FAILS

    v = by_id(*study(tmp_path, "missing", benchmarks=(), ranks=(), adalora=("iconqa",)))
    assert v["C1"] == claims.HOLDS and v["C5"] == claims.INCONCLUSIVE
    assert "no AdaLoRA runs on flickr30k" in next(c.evidence for c in claim_ledger.ledger(
        *study(tmp_path, "missing2", benchmarks=(), ranks=(), adalora=("iconqa",)), full_size={}) if c.id == "C5")


def test_ffn_claims_flip(tmp_path, monkeypatch):
    import fixtures.study_runs as fx

    def rank_of(pattern, benchmark, sublayer, layer, seed):  # even (1-based) layers' FFN get more, the last the most
        r = pattern[benchmark][sublayer] + (1.0 if sublayer == "ffn" and layer % 2 == 1 else 0.0)
        r += 3.0 if sublayer == "ffn" and layer == fx.LAYERS - 1 else 0.0
        return int(round(r + np.random.default_rng(seed * 100 + layer).normal(0, 0.2)))

    monkeypatch.setattr(fx, "rank_of", rank_of)
    v = by_id(*study(tmp_path, benchmarks=(), ranks=()))
    assert v["C3"] == claims.FAILS and v["C4"] == claims.FAILS


# --- the HTML ---------------------------------------------------------------------------------------------
def executed_notebook(path, svg):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A fixture section\n\nIts question."),
        nbformat.v4.new_code_cell("chart", outputs=[nbformat.v4.new_output(
            "execute_result", {"image/svg+xml": svg, "text/plain": "chart"}, execution_count=1)])])
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_report_is_self_contained_with_its_charts_ledger_and_sections(tmp_path):
    runs_dir = write_study(tmp_path, ranks=(2, 8), seeds=(42, 43), benchmarks=("iconqa",))
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    executed_notebook(nb_dir / "peft_t5_iconqa_qf-lora_all.ipynb", rc.to_svg(rc.figure2(rc.table1(rc.runs_frame(runs_dir)))))
    executed_notebook(nb_dir / "adalora_t5_vizwiz.ipynb", "<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    (nb_dir / "adalora_t5_vizwiz.failed.json").write_text("{}")
    (nb_dir / "grid.json").write_text(json.dumps({"cells": {
        "peft_t5_iconqa_qf-lora_all": {"state": "done"},
        "adalora_t5_vizwiz": {"state": "failed", "error": "RuntimeError: out of budget (cell 4)"}}}))
    index = report.build_report(runs_dir, notebooks_dir=nb_dir, out=tmp_path / "reports", full_size=FULL_SIZE,
                                log=lambda m: None)
    page = index.read_text()
    for fid in ("chart-figure2", "chart-heatmaps"):
        start = page.index(f"id='{fid}'")
        assert page.index("<svg", start) < page.index("</figure>", start)
    marks = page.count("<svg class='mark'")                                  # the ledger's forest marks
    assert marks and page.count("<svg") - marks == page.count("<figure") >= 2 and "<rect" in page  # figures inline
    for cid in claims.CLAIMS:
        assert f"<td>{cid}</td>" in page or f"<td>{cid}-" in page   # one row, or one per denominator
    assert "Synthetic-scale replication" in page and "Scale: embedded" in page
    assert "RuntimeError: out of budget (cell 4)" in page and "notebooks/adalora_t5_vizwiz.log" in page
    assert "sections/peft_t5_iconqa_qf-lora_all.html" in page and "A fixture section" in page
    assert "(failed)" in page

    section = (tmp_path / "reports" / "sections" / "peft_t5_iconqa_qf-lora_all.html").read_text()
    assert "body:not(.show-code) .jp-CodeCell .jp-Cell-inputWrapper { display: none; }" in section
    assert "classList.toggle('show-code')" in section and "../index.html" in section
    assert "data:image/svg+xml" in section               # nbconvert embeds SVG outputs as data URIs
    for p in [index, *(tmp_path / "reports" / "sections").glob("*.html")]:
        assert report.external_references(p.read_text()) == [], p


@pytest.mark.parametrize("models", [(), ("/ck/mini-deep-t5", "/ck/mini-wide-t5")], ids=["one-size", "model-scaling"])
@pytest.mark.slow
def test_report_has_a_section_per_open_question_with_its_charts_and_claims(tmp_path, models):
    """Without the model-size axis SC-model is "not measured"; with it (the mini profile's --model-scaling runs)
    the report draws a model chart pair beside the training-set-size pair and SC-model gets a verdict."""
    runs_dir = write_study(tmp_path, ranks=(2, 8), benchmarks=("iconqa",), rows=paper.CLAIM_ROWS,
                           adalora=("iconqa", "scienceqa"))
    write_open_questions(tmp_path, rank=8, models=models)
    page = report.build_report(runs_dir, out=tmp_path / "reports", full_size=FULL_SIZE, log=lambda m: None).read_text()
    sc = ("chart-sc-accuracy", "chart-sc-gap") + (("chart-sc-model-accuracy", "chart-sc-model-gap") if models else ())
    charts = {"oq-multitask": ("chart-mt-tradeoff", "chart-mt-difference", "chart-mt-shares"),
              "oq-scaling": sc, "oq-ranks": ("chart-rk",),
              "oq-seeds": ("chart-sd-spread", "chart-sd-orderings")}
    order = [page.index(f"id='{s}'") for s in charts]
    assert order == sorted(order) and order[0] > page.index("id='adalora'")
    for section, ids in charts.items():
        end = min([i for i in order if i > page.index(f"id='{section}'")] + [len(page)])
        for fid in ids:
            start = page.index(f"id='{fid}'")
            assert page.index(f"id='{section}'") < start < end
            assert page.index("<svg", start) < page.index("</figure>", start)
    for cid in oq.OPEN_CLAIMS:
        assert page.count(f"<td>{cid}</td>") == 2                  # in the ledger and in its question's section
    if models:
        assert "Model width/depth: measured on tiny, mini-deep-t5, mini-wide-t5 (ascending" in page
    else:
        assert "Model width/depth: not measured at this scale" in page and "--model-scaling" in page
    assert report.external_references(page) == []
    # the paper's heatmaps and Table 1 keep to the paper's runs: no joint benchmark, no r = 16 / 32
    t1 = page[page.index("id='table1'"):page.index("id='figure2'")]
    assert "r=16" not in t1 and "r=32" not in t1
    assert "scienceqa+iconqa" not in page[page.index("id='adalora'"):page.index("id='oq-multitask'")]
    v = {c.id: c.verdict for c in claim_ledger.ledger(rc.runs_frame(runs_dir), rc.ranks_frame(rc.runs_frame(runs_dir)),
                                                full_size=FULL_SIZE)}
    assert (v["MT-acc"], v["MT-alloc"], v["SC-data"], v["RK-qf"]) == (claims.HOLDS,) * 4
    assert v["SC-model"] == (claims.HOLDS if models else claims.NOT_RESOLVABLE)   # one model size: nothing to judge


def test_open_questions_comparing_runs_that_did_not_move_are_not_resolvable(tmp_path):
    """The same differences, but the training-set-size runs score below the base's zero-shot 45%: SC-data is not
    resolvable and names the runs; the rank runs moved, so RK-qf keeps its verdict."""
    runs_dir = write_study(tmp_path, ranks=(2, 8), benchmarks=("iconqa",), rows=paper.CLAIM_ROWS, adalora=("iconqa",))
    write_open_questions(tmp_path, rank=8, scaling_acc=30.0)
    df = rc.runs_frame(runs_dir)
    led = {c.id: c for c in claim_ledger.ledger(df, rc.ranks_frame(df), full_size=FULL_SIZE)}
    assert led["SC-data"].verdict == claims.NOT_RESOLVABLE
    assert "did not move from the base: t5/iconqa baseline n=40" in led["SC-data"].evidence and led["SC-data"].resolve
    assert led["RK-qf"].verdict == claims.HOLDS


def test_external_reference_check_catches_network_scripts_and_styles():
    bad = ['<script src="https://cdn.example/vega.js"></script>', "<link rel='stylesheet' href='//cdn.x/a.css'>",
           "<style>@import url('https://fonts.example/f.css');</style>", 'await import("https://cdn.x/m.mjs")',
           "<style>body { background: url(http://x/y.png) }</style>"]
    for b in bad:
        assert report.external_references(b), b
    fine = "<svg xmlns='http://www.w3.org/2000/svg'></svg><a href='https://example.org'>paper</a><script>x()</script>"
    assert report.external_references(fine) == []


def test_report_command_says_when_there_is_nothing_to_report(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    report.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", "--root", str(tmp_path), "--profile", "smoke"])
    assert args.func(args) == 1
    assert "nothing to report" in capsys.readouterr().err
    assert not (tmp_path / "reports" / "index.html").exists()


def test_table1_csv_cells_can_be_recomputed_from_the_run_folders_it_names(tmp_path):
    runs_dir = write_study(tmp_path, benchmarks=("iconqa",), rows=paper.CLAIM_ROWS, ranks=(2, 8), seeds=(42, 43),
                           adalora=("iconqa",))
    report.summary_html(runs_dir, full_size=FULL_SIZE, results_dir=tmp_path / "reports")
    stored, t1 = results.read_results(tmp_path / "reports")
    root = (tmp_path / "reports" / stored["paths_relative_to"]).resolve()
    assert root == tmp_path.resolve() and len(t1) == 5
    for row in t1.itertuples():
        folders = [root / p for p in row.runs.split(";")]
        preds = [{r["id"]: r["correct"] for r in runs.read_jsonl(f / "predictions.jsonl")} for f in folders]
        items = sorted(set.intersection(*(set(p) for p in preds)))
        acc = 100 * np.mean([np.mean([p[i] for i in items]) for p in preds])
        assert len(folders) == row.n_seeds and len(items) == row.n_test_items
        assert row.acc_mean == pytest.approx(acc, abs=1e-3) and row.acc_ci95_lo <= acc <= row.acc_ci95_hi
        base = next(d for d in (root / "runs").iterdir() if (d / runs.ZERO_SHOT_FILE).exists())
        zs = {r["id"]: r["correct"] for r in runs.read_jsonl(base / runs.ZERO_SHOT_FILE)}
        assert row.zero_shot == pytest.approx(100 * np.mean([zs[i] for i in items]), abs=1e-3)
        assert row.chance == pytest.approx(25.0) and row.moved == (row.acc_ci95_lo > row.zero_shot)
    assert t1.groupby("setup")["chosen_on_val"].sum().to_dict() == {"baseline": 1, "qf-lora": 1, "qf-lora+llm-lora": 1}
    ids = [c["id"] for c in stored["claims"]]
    assert {"H1-acc", "C1", "C5"} <= set(ids) and sum(stored["counts"].values()) == len(ids)
    c1 = next(c for c in stored["claims"] if c["id"] == "C1")
    assert c1["verdict"] == claims.HOLDS and c1["runs"] and all((root / p).is_dir() for p in c1["runs"])
    assert all(k in c1 for k in ("estimate", "ci95", "mde", "n_seeds", "n_items", "statement", "source", "scale"))


def test_the_page_escapes_what_runs_wrote_and_its_templates_ship_with_the_package():
    record = {"id": "X-1", "statement": "<script>alert(1)</script>", "source": "a & b", "scale": "embedded",
              "verdict": claims.HOLDS, "evidence": "<b>not bold</b>", "estimate": 1.0, "ci95": [0.5, 1.5], "margin": 0.0,
              "runs": ["runs/x'y"]}
    page = report.ledger_html([record], note=False)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a &amp; b" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "href='runs/x&#39;y'" in page
    assert "<svg class='mark'" in page and "<td class='holds'>holds</td>" in page   # the mark is markup, not text
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["qformer_peft"]
    shipped = [p.relative_to(report.TEMPLATES.parent).as_posix() for p in report.TEMPLATES.iterdir()]
    assert shipped and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in shipped), shipped


def test_an_allocation_claim_says_whether_more_runs_or_more_training_would_resolve_it(tmp_path):
    kw = dict(benchmarks=(), ranks=(), adalora=("iconqa",), adalora_acc=45.0)  # AdaLoRA at the zero-shot level

    def c1(name, **more):
        return next(c for c in claim_ledger.ledger(*study(tmp_path, name, **kw, **more), full_size={}) if c.id == "C1")

    trained = c1("trained")  # three seeds and null runs, none of them moved from the base
    assert trained.verdict == claims.NOT_RESOLVABLE and "did not move from the base on iconqa" in trained.evidence
    assert trained.resolve == claims.RESOLVE_HINT["alloc_trained"] and "--extended" not in trained.resolve
    unpowered = c1("no-nulls", null_seeds=())  # the same runs without null runs to judge them against
    assert unpowered.verdict == claims.NOT_RESOLVABLE and unpowered.resolve == claims.RESOLVE_HINT["alloc"]

"""The study: a profile end to end (data, base models, the grid beside the builds, the report), its base-model
builds and how they share the cores with the grid, and its command line."""
import argparse
import dataclasses
import subprocess
import threading
import time
import types
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_grid import fake_cell, report_cell, run
from test_notebooks import FAKE_FULL_SIZE

from qformer_peft import claims, grid, grid_cells, readme_results, report, results, runs, schedule, study
from qformer_peft.pretrain import base


def test_model_scaling_option_reaches_the_grid_and_study_commands_and_builds_the_extra_bases(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    schedule.add_parser(sub)
    study.add_parser(sub)
    for command in ("grid", "study"):
        for flag in ("model_scaling", "extended", "full_grid"):
            assert getattr(parser.parse_args([command, "--" + flag.replace("_", "-")]), flag)
            assert not getattr(parser.parse_args([command]), flag)
    usage = subprocess.run(["bash", str(Path(grid_cells.__file__).parents[2] / "run_all.sh"), "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert all(flag in usage for flag in ("--model-scaling", "--extended", "--full-grid"))
    built = []

    def fake(preset, llm, seed, data_dir, cache, **kw):
        built.append(f"{preset}-{llm}")
        return base.base_path(preset, llm, seed, cache)

    monkeypatch.setattr(base, "ensure_base", fake)
    lines: list[str] = []
    assert study.build_base_models(grid.resolve_profile("mini", True), data_dir=tmp_path, checkpoints=str(tmp_path),
                                   log=lines.append) == 0
    assert built == ["mini-t5", "mini-deep-t5", "mini-wide-t5", "mini-llama"] and len(lines) == 4  # LLaMA after T5
    bad = dataclasses.replace(grid.PROFILES["mini"], base_models=(("mini-wide", "llama"),))
    with pytest.raises(grid.GridError, match="none of its models reads it"):
        study.build_base_models(bad, data_dir=tmp_path, checkpoints=str(tmp_path), log=lines.append)


def test_a_failed_base_build_is_counted_and_what_runs_alongside_still_runs(tmp_path, monkeypatch):
    def fake(preset, llm, seed, data_dir, cache, **kw):
        if llm == "llama":
            raise RuntimeError("stage 3 diverged")
        return base.base_path(preset, llm, seed, cache)

    monkeypatch.setattr(base, "ensure_base", fake)
    lines, seen, timings = [], [], {}
    failures = study.build_base_models("mini", data_dir=tmp_path, checkpoints=str(tmp_path), log=lines.append,
                                       alongside=lambda builds: seen.append(builds.cores()) or 2, timings=timings)
    assert failures == 3 and seen == [0] and timings["base models"] >= 0   # one build + the grid's two
    assert lines[0].startswith("[study] base model mini-t5: ")
    assert lines[1] == "[study] base model mini-llama: FAILED: RuntimeError: stage 3 diverged"


def test_a_failed_t5_build_fails_the_llama_build_that_starts_from_it_without_trying_it_again(tmp_path, monkeypatch):
    tried = []

    def fake(preset, llm, seed, data_dir, cache, **kw):
        tried.append(llm)
        raise RuntimeError("stage 3 diverged")

    monkeypatch.setattr(base, "ensure_base", fake)
    lines: list[str] = []
    assert study.build_base_models("mini", data_dir=tmp_path, checkpoints=str(tmp_path), log=lines.append) == 2
    assert tried == ["t5"]
    assert lines == ["[study] base model mini-t5: FAILED: RuntimeError: stage 3 diverged",
                     "[study] base model mini-llama: FAILED: RuntimeError: not built: it starts from a base model "
                     "whose build failed (RuntimeError: stage 3 diverged)"]


@pytest.mark.slow
def test_side_by_side_builds_share_the_encoder_and_equal_one_after_the_other(heldin_only, tmp_path, monkeypatch):
    """study.build_base_models with jobs=2 builds both LLMs in two processes; the shared stage 1 is
    trained once (its lock) and the checkpoints are bit-identical to sequential builds."""
    profile = dataclasses.replace(grid.PROFILES["smoke"], base_models=(("tiny", "t5"), ("tiny", "llama")),
                                  models={"t5": "{checkpoints}/tiny-t5", "llama": "{checkpoints}/tiny-llama"})
    monkeypatch.setitem(grid.PROFILES, "sidebyside", profile)
    monkeypatch.setitem(study.PROFILES, "sidebyside", profile)
    lines: list[str] = []
    for jobs, cache in ((2, tmp_path / "parallel"), (1, tmp_path / "sequential")):
        assert study.build_base_models("sidebyside", data_dir=heldin_only, checkpoints=str(cache), log=lines.append,
                                       jobs=jobs) == 0
    assert sum("[study] base model tiny-" in line for line in lines) == 4
    assert len([p for p in (tmp_path / "parallel" / "vision").iterdir() if p.is_dir()]) == 1
    for llm in ("t5", "llama"):
        a = load_file(tmp_path / "parallel" / f"tiny-{llm}" / "model.safetensors")
        b = load_file(tmp_path / "sequential" / f"tiny-{llm}" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cells_start_once_their_base_model_is_built_on_the_cores_the_builds_free(tmp_path):
    """study.Builds gates the grid: a cell reading a model still being built waits for it, and each running build
    keeps one of the `jobs` workers free, so with 2 jobs and one build the other cells run one at a time."""
    building, built = tmp_path / "model-building", tmp_path / "model-present"
    for m in (building, built):
        m.mkdir()
    started = {n: tmp_path / f"{n}.started" for n in ("cell_a", "cell_b", "cell_c")}
    cell = lambda n, m: fake_cell(tmp_path, n, model=str(m), executions_log=str(started[n]), sleep_s=0.4)
    cells = [cell("cell_a", building), cell("cell_b", built), cell("cell_c", built), report_cell(tmp_path)]
    build = Future()
    build.set_running_or_notify_cancel()
    ended = []
    timer = threading.Timer(1.5, lambda: (ended.append(time.time_ns()), build.set_result("built")))
    timer.start()
    builds = study.Builds({building.resolve(): build})
    assert builds.cores() == 1 and builds.blocks(cells[0]) and not builds.blocks(cells[1])
    assert run(cells, tmp_path, jobs=2, builds=builds).exit_status == 0
    timer.join()
    mtime = lambda p: p.stat().st_mtime_ns
    assert mtime(started["cell_a"]) >= ended[0]                                   # waited for its model
    done_b, done_c = mtime(tmp_path / "nb" / "cell_b.done.json"), mtime(tmp_path / "nb" / "cell_c.done.json")
    first, second = sorted([("cell_b", done_b), ("cell_c", done_c)], key=lambda x: x[1])
    assert mtime(started[second[0]]) >= first[1]                                  # one free worker, one at a time
    assert not builds.cores() and not builds.blocks(cells[0])
    running = {tmp_path / f"m{i}": Future() for i in range(4)}                  # 4 builds, 2 at a time
    for f in running.values():
        f.set_running_or_notify_cancel()
    assert study.Builds(running, workers=2).cores() == 2


def test_a_build_that_starts_from_another_waits_for_it_without_holding_a_core(tmp_path):
    """study.submit_after: the LLaMA build (its Q-Former starts from T5's) is submitted once T5's has ended; till
    then it holds no core (Builds.cores), so the cells reading T5 run beside it; a failed source fails it unrun."""
    release, ran = threading.Event(), []
    with ThreadPoolExecutor(2) as pool:
        source = pool.submit(lambda: release.wait(5) and "t5 built")
        after = study.submit_after(pool, [source], lambda name: ran.append(name) or f"{name} built", "llama")
        builds = study.Builds({tmp_path / "t5": source, tmp_path / "llama": after}, workers=2)
        time.sleep(0.1)
        assert not after.running() and not after.done() and ran == [] and builds.cores() == 1
        env = types.SimpleNamespace(kind="environment")
        assert builds.blocks(env)  # the environment notebook lists every checkpoint: it waits for both
        release.set()
        assert after.result(5) == "llama built" and ran == ["llama"] and builds.cores() == 0
        assert not builds.blocks(env)
        failed = pool.submit(lambda: 1 / 0)
        orphan = study.submit_after(pool, [failed], lambda: ran.append("never"))
        with pytest.raises(RuntimeError, match="whose build failed.*ZeroDivisionError"):
            orphan.result(5)
    assert ran == ["llama"]


def test_size_caps_only_ever_lower_a_runs_size(tmp_path):
    cells = grid_cells.expand("paper", root=tmp_path, data_root=str(tmp_path / "data"), checkpoints=str(tmp_path / "ck"))
    capped = study.with_limits(cells, {"max_epochs": 10, "train_limit": 8})
    pairs = [(a, b, c.notebook) for c, d in zip(cells, capped) for a, b in zip(c.configs(), d.configs())]
    assert pairs and all(b.max_epochs == min(a.max_epochs, 10) for a, b, _ in pairs)
    assert {a.max_epochs < 10 for a, _, _ in pairs} == {True, False}  # a lower value stays, a higher one is capped
    assert all(b.train_limit == min(a.train_limit or 8, 8) for a, b, _ in pairs)
    # the scaling notebook's own training-set axis (1,000 and 3,000 items) is capped too: no run trains on more
    # than 8 items, and sizes that the cap makes equal to the profile's own run are not trained twice
    scaling = [(c, d) for c, d in zip(cells, capped) if c.notebook == grid_cells.SCALING and c.parameters["train_limits"]]
    assert scaling and all(max(c.parameters["train_limits"]) > 8 for c, _ in scaling)
    assert all(cfg.train_limit <= 8 for _, d in scaling for cfg in d.configs())
    assert all(d.parameters["train_limits"] == [8] for _, d in scaling)


@pytest.mark.slow
def test_smoke_profile_end_to_end(tmp_path):
    runs.write_json(claims.full_size_cache_file(tmp_path / "cache"), FAKE_FULL_SIZE)
    lines = []
    assert study.run_study("smoke", root=tmp_path, jobs=2, log=lines.append) == 0, "\n".join(lines)
    cells = grid_cells.expand("smoke", root=tmp_path)
    expected = {cfg.hash for c in cells for cfg in c.configs()}
    done = {runs.config_hash(r.config) for r in runs.iter_runs(tmp_path / "runs" / "smoke") if r.is_done()}
    assert expected <= done
    index = tmp_path / "reports" / "index.html"
    page = index.read_text()
    assert "id='chart-figure2'" in page and "id='chart-heatmaps'" in page and "Failed notebooks" not in page
    for c in cells:
        section = tmp_path / "reports" / "sections" / f"{c.name}.html"
        assert section.exists() and f"sections/{c.name}.html" in page
    for p in [index, *(tmp_path / "reports" / "sections").glob("*.html")]:
        text = p.read_text()
        assert report.external_references(text) == [], p
        assert "IProgress not found" not in text and "Loading weights" not in text, f"{p}: library noise"
    assert any(line.startswith("[study] wall time by stage") for line in lines)
    stored, table = results.read_results(tmp_path / "reports")           # the machine-readable results
    ids = [c["id"] for c in stored["claims"]]
    assert len(set(ids)) == len(ids) and len(table) >= 1
    assert all(any(i == c or i.startswith(f"{c}-") for i in ids) for c in claims.CLAIMS)  # params: per denominator
    assert all((tmp_path / p).is_dir() for row in table["runs"] for p in row.split(";"))
    # the learning-rate pilot: the profile's rate and the pilot's, compared on validation, in claims.json and the page
    pilot = stored["rate_pilot"]
    assert {(r["rate_class"], r["profile_rate"]) for r in pilot} == {("full", True), ("full", False),
                                                                      ("peft", True), ("peft", False)}
    assert all(r["chosen"] == (r["val_acc"] == max(q["val_acc"] for q in pilot if q["rate_class"] == r["rate_class"]))
               for r in pilot)
    assert "id='rates'" in page
    # the README's results block is generated from these files
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert summary == readme_results.results_markdown(tmp_path / "reports") and "Verdicts:" in summary
    readme, (begin, end) = tmp_path / "README.md", readme_results.README_BLOCK
    readme.write_text(f"# x\n{begin}\nold\n{end}\nafter\n")
    assert readme_results.write_readme_results(readme, tmp_path / "reports")
    assert readme.read_text() == f"# x\n{begin}\n{summary}{end}\nafter\n"

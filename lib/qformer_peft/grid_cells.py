"""A profile expanded into cells: one notebook execution each, with the parameters papermill injects.

The PEFT notebook sweeps the ranks (and seeds) of one row of the paper's grid in-process, so one cell = one
row = up to 4 ranks x seeds runs. The open questions (notebooks 40-43, open_questions.py) add cells that read
the paper grid's runs: each starts after the cells it reads (Cell.after); the seeds notebook, which trains
nothing, runs after every experiment.

Study layout under the study root (Layout):
    runs/<profile>/             one folder per run (runs.RunDir), the only input of the report
    reports/notebooks/<cell>.ipynb   the executed notebooks, with <cell>.done.json / .failed.json / .log
    reports/notebooks/grid.json      the cells of the last grid and their states
    cache/features, cache/base  frozen-feature cache and the embedded base models
    data/<size>                 the synthetic benchmarks (one root per benchmark)
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import runs
from .config import ExperimentConfig, experiment_configs
from .grid import GridError, Profile, resolve_profile
from .paper import ADALORA_BENCHMARKS, CLAIM_ROWS, LLMS, PEFT_BENCHMARKS, PEFT_ROWS


NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"  # the repository's notebooks/


ENVIRONMENT, PEFT, ADALORA, REPORT = ("00_environment.ipynb", "10_peft_experiment.ipynb",
                                     "20_adalora_analysis.ipynb", "90_report.ipynb")


NULL_TAG = "study:null"  # null runs are kept out of the paper's grid (report_charts.paper_runs) by this tag
PILOT_TAG = "study:pilot"  # the learning-rate pilot's runs at rates other than the profile's (results.rate_pilot)


# The open questions (open_questions.py): one notebook each; the seeds one only reads runs.
MULTITASK, SCALING, RANK_SENSITIVITY, SEEDS = ("40_multitask_adalora.ipynb", "41_scaling.ipynb",
                                               "42_rank_sensitivity.ipynb", "43_seeds.ipynb")


# The connector study (connector_study.py): one notebook per (LLM, benchmark, connector set).
CONNECTORS = "30_connectors.ipynb"


OPEN_QUESTION_OF = {MULTITASK: "multitask", SCALING: "scaling", RANK_SENSITIVITY: "ranks"}


@dataclass(frozen=True)
class Cell:
    """One notebook execution: the notebook's file name and the parameters papermill injects."""
    name: str
    notebook: str
    parameters: Mapping[str, Any]
    after: tuple[str, ...] = ()      # cells whose runs this one reads: it starts when they have finished

    @property
    def kind(self) -> str:
        """environment | experiment | analysis (reads runs only; runs after the experiments) | report"""
        return {ENVIRONMENT: "environment", REPORT: "report", SEEDS: "analysis"}.get(self.notebook, "experiment")

    def configs(self) -> list[ExperimentConfig]:
        """The runs this cell trains (an open question: the ones it owns, not those it reads)."""
        if self.kind != "experiment":
            return []
        if self.notebook == CONNECTORS:
            from . import connector_study  # pandas and altair: only where a cell plans those runs

            return connector_study.cell_configs(**self.parameters)
        if self.notebook in OPEN_QUESTION_OF:
            from . import open_questions

            return open_questions.plan(OPEN_QUESTION_OF[self.notebook], **self.parameters).own
        keys = ("benchmark", "llm", "model", "data_dir", "setup", "qf_sublayers", "llm_targets", "method",
                "ranks", "seeds", "hparams", "tags")
        return experiment_configs(**{k: self.parameters[k] for k in keys if k in self.parameters})

    @property
    def params_hash(self) -> str:
        return runs.config_hash({"notebook": self.notebook, **self.parameters})


@dataclass(frozen=True)
class Layout:
    """Where a study's pieces live under its root (see the module docstring)."""
    root: Path

    def runs(self, profile: str) -> Path:
        return self.root / "runs" / profile

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def notebooks_out(self) -> Path:
        return self.reports / "notebooks"

    @property
    def features(self) -> Path:
        return self.root / "cache" / "features"

    @property
    def base_models(self) -> Path:
        return self.root / "cache" / "base"

    def data(self, size: str) -> Path:
        return self.root / "data" / size


def resolve_paths(profile: Profile, layout: Layout, data_root: str | None = None,
                  checkpoints: str | None = None) -> tuple[Path, str]:
    """The data directory (one root per benchmark) and the checkpoints location for a profile.

    Order: the argument, then $QFP_DATA_ROOT / $QFP_CHECKPOINTS, then the study layout (embedded only).
    """
    data_root = data_root or os.environ.get("QFP_DATA_ROOT")
    checkpoints = checkpoints or os.environ.get("QFP_CHECKPOINTS")
    if profile.data_size is None and not data_root:
        raise GridError(f"profile {profile.name!r} needs real data: pass --data-root DIR or set QFP_DATA_ROOT "
                        f"(DIR/scienceqa, DIR/iconqa, DIR/vizwiz, DIR/flickr30k in their real layouts)")
    needs_ckpt = any("{checkpoints}" in m for m in profile.models.values())
    if needs_ckpt and not checkpoints and profile.scale == "paper":
        raise GridError(f"profile {profile.name!r} needs real checkpoints: pass --checkpoints DIR (holding "
                        f"instructblip-flan-t5-xl/ and instructblip-vicuna-7b/) or a hub namespace such as "
                        f"Salesforce, or set QFP_CHECKPOINTS")
    data_dir = Path(data_root).resolve() if data_root else layout.data(profile.data_size).resolve()
    if not checkpoints:
        checkpoints = str(layout.base_models.resolve())
    elif Path(checkpoints).exists():
        checkpoints = str(Path(checkpoints).resolve())
    return data_dir, checkpoints


def expand(profile: Profile | str, *, root: str | Path = ".", data_root: str | None = None,
           checkpoints: str | None = None, model_scaling: bool = False, full_grid: bool = False,
           extended: bool = False) -> list[Cell]:
    """The profile's cells in execution order: environment, experiments, then the report. model_scaling adds
    the profile's model-size axis (with_model_scaling); full_grid runs its whole grid at claim depth; extended
    adds what the default leaves out to keep its budget (with_extended)."""
    profile = resolve_profile(profile, model_scaling, full_grid, extended)
    layout = Layout(Path(root).resolve())
    data_dir, ckpt = resolve_paths(profile, layout, data_root, checkpoints)
    runs_dir = str(layout.runs(profile.name))
    common = {"runs_dir": runs_dir, "cache_dir": str(layout.features), "data_dir": str(data_dir),
              "data_size": profile.data_size, "data_seed": profile.data_seed}
    tags = [f"profile:{profile.name}", f"scale:{profile.scale}"]

    def model(llm: str) -> str:
        return profile.models[llm].format(checkpoints=ckpt)

    def hparams(llm: str, benchmark: str | None = None, method: str = "lora") -> dict:
        h = {**profile.hparams, **profile.hparams_by_llm.get(llm, {}), **profile.hparams_by_method.get(method, {})}
        return {**h, **profile.adalora_hparams.get(benchmark, {})} if benchmark else h

    cells = [Cell("environment", ENVIRONMENT, {**common, "checkpoints": ckpt, "profile": profile.name})]
    peft = profile.peft_cells or tuple((llm, b, *row) for llm in LLMS for b in PEFT_BENCHMARKS for row in PEFT_ROWS)
    for llm, bench, setup, qf, llm_t in peft:
        claim_row = (setup, qf, llm_t) in CLAIM_ROWS
        name = peft_cell_name(llm, bench, setup, qf, llm_t)
        cells.append(Cell(name, PEFT, {
            "benchmark": bench, "llm": llm, "model": model(llm), "setup": setup, "qf_sublayers": qf,
            "llm_targets": llm_t, "ranks": list(profile.ranks),
            "seeds": list(profile.claim_seeds if claim_row else profile.seeds),
            "hparams": hparams(llm) if claim_row else {**hparams(llm), **profile.other_rows_hparams},
            "tags": tags, **common, **({"rerun_rule": asdict(profile.rerun_rule)} if profile.rerun_rule else {})}))
    cells += rate_pilot_cells(profile, model=model, hparams=hparams, tags=tags, common=common)
    adalora = profile.adalora_cells or tuple((llm, b) for llm in LLMS for b in ADALORA_BENCHMARKS)
    for llm, bench in adalora:
        cells.append(Cell(f"adalora_{llm}_{bench}", ADALORA, {
            "benchmark": bench, "llm": llm, "model": model(llm), "method": "adalora",
            "seeds": list(profile.adalora_seeds or profile.claim_seeds), "hparams": hparams(llm, bench, "adalora"),
            "tags": tags, **common}))
    for llm, bench in profile.adalora_null_cells:
        cells.append(Cell(f"adalora-null_{llm}_{bench}", ADALORA, {
            "benchmark": bench, "llm": llm, "model": model(llm), "method": "adalora",
            "seeds": list(profile.null_seeds or profile.claim_seeds),
            "hparams": {**hparams(llm, bench, "adalora"), "shuffle_answers": True},
            "tags": [*tags, NULL_TAG], **common}))
    cells += connector_cells(profile, model=model, hparams=hparams, tags=tags, common=common)
    cells += open_question_cells(profile, checkpoints=ckpt, hparams=hparams, tags=tags, common=common,
                                 names={c.name for c in cells})
    cells.append(Cell("report", REPORT, {"runs_dir": runs_dir, "notebooks_dir": str(layout.notebooks_out),
                                         "cache_dir": str(layout.root / "cache")}))
    for c in cells:
        c.configs()  # validate now: a bad profile fails before anything runs
    return cells


def rate_pilot_cells(profile: Profile, *, model: Callable[[str], str], hparams: Callable[..., dict],
                     tags: Sequence[str], common: Mapping[str, Any]) -> list[Cell]:
    """The learning-rate pilot's notebooks: one run each (first claim seed) of the baseline at lr_full x factor and
    of QF LoRA (all sublayers, largest rank) at lr_peft x factor. The profile's own rate is factor 1: its claim
    run, trained by the Table-1 cell, so the pilot only adds the other factors."""
    out = []
    for llm in profile.rate_pilot_llms if profile.rate_pilot else ():
        h = hparams(llm)
        for key, setup, qf, rank in (("lr_full", "baseline", None, None),
                                     ("lr_peft", "qf-lora", "all", max(profile.ranks))):
            if h.get(key) is None:
                raise GridError(f"profile {profile.name!r}: its rate pilot scales {key}, which its hparams do not set "
                                f"for {llm}")
            for factor in profile.rate_pilot:
                rate = float(f"{h[key] * factor:.6g}")
                out.append(Cell(f"pilot_{llm}_{key}_{rate:g}", PEFT, {
                    "benchmark": profile.rate_pilot_benchmark, "llm": llm, "model": model(llm), "setup": setup,
                    "qf_sublayers": qf, "llm_targets": None, "ranks": [rank], "seeds": [profile.claim_seeds[0]],
                    "hparams": {**h, key: rate}, "tags": [*tags, PILOT_TAG], **common}))
    return out


def peft_cell_name(llm: str, bench: str, setup: str, qf: str | None, llm_t: str | None) -> str:
    return "_".join(p for p in ("peft", llm, bench, setup.replace("+", "-"), qf, llm_t) if p)


def connector_cells(profile: Profile, *, model: Callable[[str], str], hparams: Callable[..., dict],
                    tags: Sequence[str], common: Mapping[str, Any]) -> list[Cell]:
    """The connector study's notebooks: the claim connectors on the claim seeds, the other budgets on one."""
    from . import connector_study as cs

    sets = {"smoke": (cs.SMOKE_CONNECTORS, profile.seeds), "claims": (cs.CLAIM_CONNECTORS, profile.claim_seeds),
            "budgets": (cs.BUDGET_CONNECTORS, profile.seeds)}
    out = []
    first: dict[tuple[str, str], str] = {}  # (llm, set) -> the first cell that aligns those connectors
    for llm, bench, which in profile.connector_cells:
        connectors, seeds = sets[which]
        name = f"connectors_{llm}_{bench}_{which}"
        # The alignments are shared across benchmarks (cached per base, connector and seed): a second cell of the
        # same set started beside the first would wait on each alignment's lock, holding a worker idle; after
        # the first, it only reads them.
        after = (first[(llm, which)],) if (llm, which) in first else ()
        first.setdefault((llm, which), name)
        out.append(Cell(name, CONNECTORS, {
            "benchmark": bench, "llm": llm, "model": model(llm), "connectors": [dict(c) for c in connectors],
            "seeds": list(seeds), "align_steps": profile.align_steps, "hparams": hparams(llm),
            "tags": list(tags), **common}, after))
    return out


def open_question_cells(profile: Profile, *, checkpoints: str, hparams: Callable[..., dict], tags: Sequence[str],
                        common: Mapping[str, Any], names: set[str]) -> list[Cell]:
    """The profile's open-question notebooks. Each reads runs of the paper's grid (the same configs, so the
    same run folders) and starts after the cells that train them (`after`, limited to cells in `names`)."""
    from .open_questions import MULTITASK_TASKS, RANK_ROWS, SCALING_ROWS

    seeds = list(profile.claim_seeds)
    out = []

    def model(llm: str) -> str:
        return profile.models[llm].format(checkpoints=checkpoints)

    def add(name: str, notebook: str, params: dict, after: Sequence[str] = ()) -> None:
        out.append(Cell(name, notebook, {**params, "seeds": seeds, "tags": list(tags), **common},
                        tuple(a for a in after if a in names)))

    for llm in profile.multitask_llms:
        add(f"open_multitask_{llm}", MULTITASK, {"llm": llm, "model": model(llm), "tasks": list(MULTITASK_TASKS),
                                                 "hparams": hparams(llm, method="adalora")},
            [f"adalora_{llm}_{t}" for t in MULTITASK_TASKS])
    for llm, bench in profile.scaling_cells:
        params = {"llm": llm, "benchmark": bench, "model": model(llm), "rank": max(profile.ranks),
                  "hparams": hparams(llm)}
        after = [peft_cell_name(llm, bench, *row) for row in SCALING_ROWS]
        if profile.train_limits:
            add(f"open_scaling_data_{llm}_{bench}", SCALING,
                {**params, "train_limits": list(profile.train_limits), "models": []}, after)
        if profile.scaling_models.get(llm):
            larger = [m.format(checkpoints=checkpoints) for m in profile.scaling_models[llm]]
            add(f"open_scaling_model_{llm}_{bench}", SCALING, {**params, "train_limits": [], "models": larger}, after)
    for llm, bench in profile.rank_cells:
        add(f"open_ranks_{llm}_{bench}", RANK_SENSITIVITY,
            {"llm": llm, "benchmark": bench, "model": model(llm), "ranks": list(profile.ranks),
             "extra_ranks": list(profile.extra_ranks), "hparams": hparams(llm)},
            [peft_cell_name(llm, bench, *row) for row in RANK_ROWS])
    if profile.seeds_analysis:
        out.append(Cell("open_seeds", SEEDS, {"runs_dir": common["runs_dir"]}))
    return out

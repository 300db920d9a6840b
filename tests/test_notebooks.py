"""The notebooks: each opens with its question and how to run it, has one `parameters` cell that
accepts everything the grid injects, keeps its logic in the library; the report notebook runs on
constructed run folders; and (with the engine) the smoke profile runs end to end."""
import ast
import json

import nbformat
import papermill as pm
import pytest
from fixtures.study_runs import write_study

from qformer_peft import grid_cells, claims, config, grid, paper, report
from qformer_peft import open_questions as oq

NOTEBOOKS = sorted(grid_cells.NOTEBOOKS_DIR.glob("*.ipynb"))
# the shape of params.parameter_ledger's rows: tests seed the report's cache with these instead of building
# the full-size models on the meta device (the ledger has its own tests)
FAKE_FULL_SIZE = {n: [{"llm": n, "setup": s, "qf_sublayers": "all", "llm_targets": t, "rank": 8, "qformer_lora": 1,
                       "llm_lora": 0, "total": 10, "pct_of_baseline": p, "pct_of_qformer": p}
                      for s, t, p in (("qf-lora", None, 1.9), ("qf-lora+llm-lora", "all", 9.0))]
                  for n in claims.LLM_FULL_SIZE.values()}


def parameters_of(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged `parameters`"
    names = {t.id for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign) for t in node.targets}
    values = {}
    exec(cells[0].source, {}, values)  # literals only: a parameters cell computes nothing
    assert set(values) == names
    return values


def test_the_grids_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {grid_cells.ENVIRONMENT, grid_cells.PEFT, grid_cells.ADALORA, grid_cells.REPORT, grid_cells.MULTITASK, grid_cells.SCALING,
            grid_cells.RANK_SENSITIVITY, grid_cells.SEEDS} <= names
    for profile in grid.PROFILES:
        assert {c.notebook for c in grid_cells.expand(profile, root="/r", data_root="/d", checkpoints="/c")} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_its_question_then_parameters_and_holds_no_logic(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "**Question.**" in nb.cells[0].source and "How to run" in nb.cells[0].source
    assert "parameters" in nb.cells[1].metadata.get("tags", [])
    parameters_of(nb)
    logic = (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.If, ast.With, ast.Try, ast.Lambda)
    for c in nb.cells[2:]:
        assert "parameters" not in c.metadata.get("tags", [])
        if c.cell_type == "code":
            assert not c.outputs, "notebooks are committed without outputs"
            found = [type(n).__name__ for n in ast.walk(ast.parse(c.source)) if isinstance(n, logic)]
            assert not found, f"logic belongs in the library, not the notebook: {found} in {c.source!r}"


@pytest.mark.parametrize("profile", sorted(grid.PROFILES))
def test_every_injected_parameter_is_declared_by_its_notebook(profile, tmp_path):
    declared = {p.name: set(parameters_of(nbformat.read(str(p), as_version=4))) for p in NOTEBOOKS}
    for cell in grid_cells.expand(profile, root=tmp_path, data_root=str(tmp_path), checkpoints=str(tmp_path)):
        extra = set(cell.parameters) - declared[cell.notebook]
        assert not extra, f"{cell.name}: {cell.notebook} does not declare {extra}"


@pytest.mark.parametrize("name", [grid_cells.PEFT, grid_cells.ADALORA])
def test_default_parameters_build_valid_smoke_sized_configs(name):
    p = parameters_of(nbformat.read(str(grid_cells.NOTEBOOKS_DIR / name), as_version=4))
    keys = ("benchmark", "llm", "model", "data_dir", "setup", "qf_sublayers", "llm_targets", "method", "ranks",
            "seeds", "hparams", "tags")
    configs = config.experiment_configs(**{k: p[k] for k in keys if k in p})
    assert configs and all(c.model == "tiny" and c.train_limit <= 64 and c.max_epochs <= 2 for c in configs)
    assert p["data_size"] == "smoke"


@pytest.mark.parametrize("name", sorted(grid_cells.OPEN_QUESTION_OF))
def test_open_question_defaults_are_smoke_sized(name):
    p = parameters_of(nbformat.read(str(grid_cells.NOTEBOOKS_DIR / name), as_version=4))
    plan = oq.plan(grid_cells.OPEN_QUESTION_OF[name], **p)
    assert plan.own and plan.reference and p["data_size"] == "smoke"
    assert all(c.model == "tiny" and c.train_limit <= 64 and c.max_epochs <= 2 for c in plan.all)


@pytest.mark.slow
def test_seeds_notebook_reads_run_folders(tmp_path):
    runs_dir = write_study(tmp_path, ranks=(2, 8), seeds=(42, 43, 44), benchmarks=("iconqa",), rows=paper.CLAIM_ROWS,
                           adalora=())
    out = tmp_path / "43_seeds.ipynb"
    pm.execute_notebook(str(grid_cells.NOTEBOOKS_DIR / grid_cells.SEEDS), str(out), kernel_name="python3", progress_bar=False,
                        cwd=str(grid_cells.NOTEBOOKS_DIR), parameters={"runs_dir": str(runs_dir)})
    outputs = [o for c in nbformat.read(str(out), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/svg+xml" in o.get("data", {}) for o in outputs) == 2          # spread, orderings
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "<td>SD-setups</td>" in html and "<td>SD-best-rank</td>" in html and "qf-lora+llm-lora r=8" in html


@pytest.mark.slow
def test_report_notebook_runs_on_run_folders(tmp_path):
    runs_dir = write_study(tmp_path, ranks=(2,), seeds=(42, 43), benchmarks=("iconqa",), rows=paper.CLAIM_ROWS,
                           adalora=("iconqa",))
    from qformer_peft import runs

    runs.write_json(claims.full_size_cache_file(tmp_path / "cache"), FAKE_FULL_SIZE)
    out = tmp_path / "90_report.ipynb"
    pm.execute_notebook(str(grid_cells.NOTEBOOKS_DIR / grid_cells.REPORT), str(out), kernel_name="python3", progress_bar=False,
                        cwd=str(grid_cells.NOTEBOOKS_DIR), parameters={"runs_dir": str(runs_dir),
                                                                 "notebooks_dir": str(tmp_path / "nb"),
                                                                 "cache_dir": str(tmp_path / "cache")})
    nb = nbformat.read(str(out), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/svg+xml" in o.get("data", {}) for o in outputs) == 2          # Figure 2, heatmaps
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "Synthetic-scale replication" in html and "<td>C5</td>" in html and "★" in html
    assert not any("vega" in json.dumps(o.get("data", {})).lower() and "cdn" in json.dumps(o.get("data", {})).lower()
                   for o in outputs)



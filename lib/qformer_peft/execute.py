"""Executing one cell: papermill runs its notebook in a fresh kernel, in a child process, with markers.

A cell is skipped when its marker says it finished with the same parameters, or when all its runs are done
and its executed notebook exists; a failed notebook is recorded (<cell>.failed.json and its log) and the grid
goes on. `python -m qformer_peft.execute --execute SPEC` is the child process's entry point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from . import runs
from .grid_cells import Cell
from .grid import GridError
from .reruns import plan_reruns


KERNEL_NAME = "qformer-peft"           # a kernelspec written by the grid: this interpreter's ipykernel


# papermill waits 60 s for a kernel by default: too short on a small, busy machine (workers starting kernels
# beside other work), where a notebook would be recorded as failed for a slow start
KERNEL_START_TIMEOUT = 300


# --- executing cells -------------------------------------------------------------------------------------
def done_run_hashes(runs_dir: str | Path) -> set[str]:
    """Config hashes of the finished runs under runs_dir."""
    return {runs.config_hash(r.config) for r in runs.iter_runs(runs_dir) if r.is_done()}


@dataclass
class Outcome:
    cell: str
    state: str                  # 'done' | 'skipped' | 'failed' | 'not run' (an optional input is absent)
    seconds: float = 0.0
    error: str | None = None


def _marker(out_dir: Path, cell: Cell, suffix: str) -> Path:
    return out_dir / f"{cell.name}.{suffix}.json"


def is_finished(cell: Cell, out_dir: Path, done_hashes: set[str] | None = None) -> bool:
    """Marker with the same parameters, or (experiments) every run done and the notebook kept."""
    marker = _marker(out_dir, cell, "done")
    if marker.exists() and runs.read_json(marker).get("params_hash") == cell.params_hash:
        return True
    if cell.kind == "experiment" and (out_dir / f"{cell.name}.ipynb").exists():
        hashes = done_hashes if done_hashes is not None else done_run_hashes(cell.parameters["runs_dir"])
        configs = cell.configs()
        if not all(cfg.hash in hashes for cfg in configs):
            return False
        reruns = plan_reruns(configs, cell.parameters["runs_dir"], cell.parameters.get("rerun_rule"))
        return all(r.config.hash in hashes for r in reruns)
    return False


def write_kernelspec(where: Path, name: str = KERNEL_NAME) -> Path:
    """A kernelspec named `name` that starts this interpreter's ipykernel; returns its JUPYTER_PATH.

    kernel_name 'python3' would resolve to the first python3 spec on the Jupyter path, which may be a
    user-wide one pointing at another interpreter; this one is always the venv running the grid.
    """
    spec_dir = where / "kernels" / name
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (qformer-peft)", "language": "python"}
    runs.write_json(spec_dir / "kernel.json", spec)
    return where


def _model_missing(model: str, *, paper: bool) -> str | None:
    """Why a cell's model is not at hand (a local checkpoint absent, or a hub id that cannot be fetched), else None."""
    from .models.sources import PAPER_CHECKPOINT_LAYOUT, hub_offline_error, looks_like_hub_id

    path = Path(model)
    if path.exists() or (not path.is_absolute() and model in _presets()):
        return None
    if not path.is_absolute() and looks_like_hub_id(model):
        return hub_offline_error(model)
    if paper:
        return (f"model checkpoint {model} not found: put the InstructBLIP checkpoint there in the hub layout "
                f"({PAPER_CHECKPOINT_LAYOUT}), e.g. `huggingface-cli download Salesforce/{path.name} --local-dir "
                f"{model}`, or pass --checkpoints DIR holding it")
    return (f"model checkpoint {model} not found: build it with `qformer-peft study --profile ...` "
            f"(base-model stage; add --model-scaling for the model-size axis's bases) or pass --checkpoints DIR")


def _presets() -> set[str]:
    from .models.presets import PRESETS

    return set(PRESETS)


def _is_paper(cell: Cell) -> bool:
    return "scale:paper" in cell.parameters.get("tags", ())


def _missing_input(cell: Cell) -> str | None:
    """A reason not to start the notebook: its model checkpoint or benchmark root is absent."""
    if cell.kind != "experiment":
        return None
    for m in [cell.parameters["model"], *cell.parameters.get("models", [])]:
        reason = _model_missing(str(m), paper=_is_paper(cell))
        if reason:
            return reason
    for bench in cell.parameters.get("tasks") or [cell.parameters["benchmark"]]:
        root = Path(cell.parameters["data_dir"]) / bench
        if cell.parameters.get("data_size") is None and not root.exists():
            return f"benchmark root {root} not found: pass --data-root DIR holding {bench}/"
    return None


def _not_run(cell: Cell) -> str | None:
    """'not run: needs ...' for a paper-scale model-size cell whose larger checkpoints are absent: that axis is
    optional (the paper's grid does not need it), so the study goes on and exits 0 for the rest."""
    if cell.kind != "experiment" or not _is_paper(cell) or not cell.parameters.get("models"):
        return None
    absent = [str(m) for m in cell.parameters["models"] if _model_missing(str(m), paper=True)]
    if not absent:
        return None
    return "not run: needs " + "; ".join(_model_missing(m, paper=True) for m in absent)


def missing_inputs(cells: Sequence[Cell], building: Iterable[str | Path] = ()) -> list[str]:
    """Every input the cells need that is absent, each once, in cell order: checked before the first run starts, so
    a grid fails at once with the whole list instead of one notebook at a time. `building`: checkpoints the study
    builds first. The optional model-size checkpoints of the paper scale are left out (those cells are not run)."""
    building = {Path(b).resolve() for b in building}
    out: list[str] = []
    for cell in cells:
        if cell.kind != "experiment":
            continue
        optional = set(map(str, cell.parameters.get("models", []))) if _is_paper(cell) else set()
        for m in [cell.parameters["model"], *cell.parameters.get("models", [])]:
            m = str(m)
            if m in optional or (Path(m).is_absolute() and Path(m).resolve() in building):
                continue
            reason = _model_missing(m, paper=_is_paper(cell))
            if reason and reason not in out:
                out.append(reason)
        for bench in cell.parameters.get("tasks") or [cell.parameters["benchmark"]]:
            root = Path(cell.parameters["data_dir"]) / bench
            reason = f"benchmark root {root} not found: pass --data-root DIR holding {bench}/ in its published layout"
            if cell.parameters.get("data_size") is None and not root.exists() and reason not in out:
                out.append(reason)
    return out


def check_inputs(cells: Sequence[Cell], building: Iterable[str | Path] = ()) -> None:
    """GridError listing every missing input (missing_inputs), or nothing."""
    missing = missing_inputs(cells, building)
    if missing:
        raise GridError(f"{len(missing)} input(s) missing; nothing was started:\n  " + "\n  ".join(missing))


def _notebook_error(path: Path) -> str | None:
    """The first error output of an executed notebook, as 'Name: value (cell N)'."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for i, c in enumerate(nb.get("cells", [])):
        for o in c.get("outputs", []) if c.get("cell_type") == "code" else []:
            if o.get("output_type") == "error":
                return f"{o.get('ename')}: {o.get('evalue')} (cell {i})"
    return None


class Children:
    """The papermill processes now running, so an interrupt can stop them all."""

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def terminate(self) -> None:
        with self.lock:
            self.stopping = True
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()


def execute_cell(cell: Cell, *, notebooks_dir: Path, out_dir: Path, kernel: str, env: Mapping[str, str],
                 timeout: float | None = None, children: Children | None = None) -> Outcome:
    """Execute one notebook with papermill in a child process; write its marker or failure record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    output, log = out_dir / f"{cell.name}.ipynb", out_dir / f"{cell.name}.log"
    _marker(out_dir, cell, "done").unlink(missing_ok=True)
    start = time.time()
    skip = _not_run(cell)
    if skip:
        runs.write_json(_marker(out_dir, cell, "not-run"), {"cell": cell.name, "notebook": cell.notebook,
                                                             "reason": skip, "recorded": runs.now()})
        return Outcome(cell.name, "not run", 0.0, skip)
    reason = _missing_input(cell)
    error = None
    if reason is None:
        spec = out_dir / f".{cell.name}.spec.json"
        runs.write_json(spec, {"input": str(notebooks_dir / cell.notebook), "output": str(output),
                               "parameters": dict(cell.parameters), "kernel": kernel, "cwd": str(notebooks_dir),
                               "timeout": timeout})
        with open(log, "w") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "qformer_peft.execute", "--execute", str(spec)],
                                    stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **env})
            if children is not None:
                with children.lock:
                    children.procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                if children is not None:
                    with children.lock:
                        children.procs.discard(proc)
        spec.unlink(missing_ok=True)
        if rc != 0:
            error = _notebook_error(output) or _log_tail(log) or f"papermill exited with status {rc}"
    else:
        error = reason
    seconds = round(time.time() - start, 2)
    if error is None:
        hashes = [cfg.hash for cfg in cell.configs()]
        runs.write_json(_marker(out_dir, cell, "done"), {
            "cell": cell.name, "notebook": cell.notebook, "parameters": dict(cell.parameters),
            "params_hash": cell.params_hash, "config_hashes": hashes, "seconds": seconds,
            "finished": runs.now()})
        _marker(out_dir, cell, "failed").unlink(missing_ok=True)
        return Outcome(cell.name, "done", seconds)
    runs.write_json(_marker(out_dir, cell, "failed"), {
        "cell": cell.name, "notebook": cell.notebook, "parameters": dict(cell.parameters), "error": error,
        "log": log.name, "seconds": seconds, "failed": runs.now()})
    return Outcome(cell.name, "failed", seconds, error)


def _log_tail(log: Path, lines: int = 3) -> str | None:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:]) or None


def _execute_main(spec_path: str) -> int:
    """Child process: execute one notebook as the spec file says (JSON, so floats stay floats)."""
    import papermill as pm

    spec = runs.read_json(spec_path)
    try:
        pm.execute_notebook(spec["input"], spec["output"], parameters=spec["parameters"],
                            kernel_name=spec["kernel"], cwd=spec["cwd"], progress_bar=False, log_output=True,
                            execution_timeout=spec.get("timeout"), start_timeout=KERNEL_START_TIMEOUT)
    except pm.PapermillExecutionError as err:
        print(f"[grid] {err.ename}: {err.evalue} (cell {err.exec_count})", file=sys.stderr)
        return 1
    return 0



if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--execute":
        sys.exit(_execute_main(sys.argv[2]))
    sys.exit("usage: python -m qformer_peft.execute --execute SPEC (internal: the grid's child process)")

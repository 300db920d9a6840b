"""What the notebooks call: a row of the grid as configs, running them (with the rerun rule), the data, and
tables describing the profiles. The notebooks import this module and nothing of the scheduler."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from . import runs
from .grid_cells import ADALORA, MULTITASK, PEFT, RANK_SENSITIVITY, SCALING, SEEDS, expand
from .config import ExperimentConfig, experiment_configs
from .grid import PROFILES, with_extended, with_model_scaling
from .paper import ADALORA_BENCHMARKS
from .reruns import RerunRule, plan_reruns

__all__ = ["RerunRule", "experiment_configs", "describe_profiles", "inventory", "cells_table", "ensure_data",
           "CellFailed", "run_configs"]


def describe_profiles() -> "Any":
    """One row per profile and opt-in variant: what it runs (for 00_environment). Paths are placeholders."""
    import pandas as pd

    rows = []
    variants = [(p, "") for p in PROFILES.values()]
    variants += [(with_extended(p), " --extended") for p in PROFILES.values() if p.extended]
    variants += [(with_model_scaling(p), " --model-scaling") for p in PROFILES.values() if p.model_scaling_models]
    for p, option in variants:
        cells = expand(p, root="<out>", data_root="<data-root>" if p.data_size is None else None,
                       checkpoints="<checkpoints>")
        exp = [c for c in cells if c.kind == "experiment"]
        cfgs = [cfg for c in exp for cfg in c.configs()]
        rows.append({"profile": p.name + option, "scale": p.scale, "notebooks": len(cells),
                     "peft_notebooks": sum(c.notebook == PEFT for c in exp),
                     "adalora_notebooks": sum(c.notebook == ADALORA for c in exp),
                     "open_question_notebooks": sum(c.notebook in (MULTITASK, SCALING, RANK_SENSITIVITY, SEEDS)
                                                    for c in cells),
                     "runs": len(cfgs), "seeds": ",".join(map(str, p.seeds)),
                     "claim_seeds": ",".join(map(str, p.claim_seeds)), "what": p.description})
    return pd.DataFrame(rows)


def inventory(profile: str, data_dir: str | Path, checkpoints: str) -> "Any":
    """Which benchmark roots and model checkpoints a profile needs, and whether each is present."""
    import pandas as pd

    p = PROFILES[profile]
    rows = [{"what": f"benchmark {b}", "where": str(Path(data_dir) / b), "present": (Path(data_dir) / b).exists()}
            for b in ADALORA_BENCHMARKS]
    for llm, spec in p.models.items():
        model = spec.format(checkpoints=checkpoints)
        present = Path(model).exists() if Path(model).is_absolute() else "preset or hub id"
        rows.append({"what": f"model ({llm})", "where": model, "present": present})
    return pd.DataFrame(rows)


def cells_table(profile: str, *, runs_dir: str | Path, data_dir: str | Path, data_size: str | None,
                checkpoints: str) -> "Any":
    """The cells a profile executes (for the study whose runs live in runs_dir = ROOT/runs/PROFILE)."""
    import pandas as pd

    cells = expand(profile, root=Path(runs_dir).resolve().parents[1], data_root=None if data_size else str(data_dir),
                   checkpoints=checkpoints)
    return pd.DataFrame([{"cell": c.name, "notebook": c.notebook, "runs": len(c.configs())} for c in cells])


# --- helpers the notebooks call ------------------------------------------------------------------------
def ensure_data(data_dir: str | Path, size: str | None, seed: int = 0) -> Path:
    """The benchmarks under data_dir; with a size, write the synthetic ones first if they are missing."""
    data_dir = Path(data_dir)
    marker = data_dir / ".complete"
    if size is None or marker.exists():
        return data_dir
    from .data import synthetic  # writes images: only when data is missing

    synthetic.synthesize(data_dir, size, seed)
    runs.write_json(marker, {"size": size, "seed": seed})
    return data_dir


class CellFailed(RuntimeError):
    """Some runs of a notebook failed; the others finished. The message lists each failure."""


def run_configs(configs: Sequence[ExperimentConfig], *, runs_dir: str | Path, cache_dir: str | Path | None = None,
                rerun_rule: RerunRule | Mapping[str, Any] | None = None):
    """Run every config with the engine (finished runs are skipped by it), then the reruns rerun_rule asks for
    (plan_reruns; each folder gets rerun.json, the evidence), then return the rows of both (load_runs' superseded
    column marks the runs a finished rerun replaces).

    A failing run does not stop the others; CellFailed is raised at the end, naming each failure.
    """
    from . import engine  # torch: only in the notebooks that train
    from .report_charts import runs_frame

    failures = []

    def run_all(cfgs: Sequence[ExperimentConfig]) -> None:
        for cfg in cfgs:
            try:
                engine.run_experiment(cfg, out=runs_dir, cache_dir=cache_dir)
            except Exception as err:  # noqa: BLE001 - recorded in the run folder by the engine; listed here
                failures.append(f"{cfg.run_name}: {type(err).__name__}: {err}")

    run_all(configs)
    reruns = plan_reruns(configs, runs_dir, rerun_rule)
    for r in reruns:
        folder = runs.RunDir.open(runs_dir, r.config.to_dict(), prefix=r.config.run_name).path
        if not (folder / "rerun.json").exists():
            runs.write_json(folder / "rerun.json", dict(r.evidence))
    run_all([r.config for r in reruns])
    if failures:
        total = len(configs) + len(reruns)
        raise CellFailed(f"{len(failures)} of {total} runs failed:\n  " + "\n  ".join(failures))
    return runs_frame(runs_dir, [*configs, *(r.config for r in reruns)])

"""A profile end to end: synthetic data -> embedded base models -> the grid of notebooks -> the report.

    qformer-peft study --profile smoke|mini|paper [--jobs N] [--only PATTERN] [--data-root DIR]
                       [--checkpoints DIR] [--out DIR] [--model-scaling]

This is what ./run_all.sh runs. Each stage reuses what is already there (data with its completion
marker, base models, finished notebooks and runs), so a rerun after an interruption only does what is
missing. With several workers the grid starts while the base models are still building (each cell once the
models it reads are built, on the cores the builds have freed). A stage that fails is reported and the others
go on; the wall time of every stage is printed at the end and kept in
reports/study_timings.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import threading
import time
from pathlib import Path
from concurrent.futures import Future, wait
from typing import Any, Callable

from . import runs
from .grid_cells import Layout, expand
from .execute import check_inputs
from .grid import PROFILES, GridError, Profile, resolve_profile
from .pretrain import base
from .schedule import add_common_arguments, auto_jobs, run_grid, select
from .workbook import ensure_data

# size caps a study may put on every run (the paper profile on a CPU, to try the whole path on a few items)
LIMITS = ("train_limit", "val_limit", "test_limit", "max_epochs")


def cuda_guard(profile: Profile, allow_cpu: bool) -> None:
    """The paper profile trains full-size models: without CUDA it refuses to start unless allow_cpu."""
    if profile.scale != "paper" or allow_cpu:
        return
    import torch

    if not torch.cuda.is_available():
        raise GridError(f"profile {profile.name!r} trains the full-size InstructBLIP models and needs a CUDA GPU; "
                        f"torch {torch.__version__} sees none here (a CPU build of torch, or no driver), and on a CPU "
                        "it would run in fp32 for weeks. To run it on the CPU anyway (e.g. to try the path on a few "
                        "items) pass --allow-cpu, with size caps such as --train-limit 8 --max-epochs 1")


def with_limits(cells: list, limits: dict[str, int]) -> list:
    """The cells with every run's hyperparameters capped at `limits` (LIMITS): a value the profile sets lower
    stays. A train_limit also caps the training-set sizes a cell sets itself (the scaling notebook's
    `train_limits` axis), so no run trains on more items than asked; sizes that become equal are run once."""
    from .config import ExperimentConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}

    def capped(h: dict) -> dict:
        now = {k: h.get(k, defaults[k]) for k in limits}
        return {**h, **{k: min(v, now[k]) if now[k] is not None else v for k, v in limits.items()}}

    def cap(parameters: dict) -> dict:
        out = {**parameters, "hparams": capped(parameters["hparams"])}
        if limits.get("train_limit") is not None and parameters.get("train_limits"):
            out["train_limits"] = list(dict.fromkeys(min(n, limits["train_limit"]) for n in parameters["train_limits"]))
        return out

    return [dataclasses.replace(c, parameters=cap(c.parameters)) if limits and "hparams" in c.parameters else c
            for c in cells]


class Builds:
    """Base models being built in background processes while the grid runs (run_grid's `builds`): each running
    build holds a core until it ends, and a cell starts once the models it reads are built, so no core idles
    while the slower build finishes.
    A build waiting for another (pretrain.base.dependencies) is not running yet and holds no core."""

    def __init__(self, futures: "dict[Path, Future[str]]", workers: int = 1):
        self.futures, self.workers = futures, workers  # workers: builds at a time (the pool's processes)

    def cores(self) -> int:
        return min(self.workers, sum(f.running() for f in self.futures.values()))

    def blocks(self, cell: Any) -> bool:
        if cell.kind != "experiment":  # the environment notebook lists the checkpoints present: all of them
            return any(not f.done() for f in self.futures.values())
        reads = {Path(m).resolve() for m in [cell.parameters["model"], *cell.parameters.get("models", [])]}
        return any(not f.done() for path, f in self.futures.items() if path in reads)


def build_base_models(profile: "Profile | str", *, data_dir: Path, checkpoints: str, log: Callable[[str], None],
                      jobs: int = 1, alongside: "Callable[[Builds], int] | None" = None,
                      timings: dict[str, float] | None = None) -> int:
    """Build the profile's embedded base models into CHECKPOINTS/<preset>-<llm>, where its notebooks
    look for them (pretrain.base.ensure_base reuses a build whose key is current); returns the failures.
    With jobs > 1 the builds run side by side in processes: each is single-threaded but stage 1, and the stage
    they share (the vision encoder, shared by both LLMs and by every model size) is trained by whichever gets
    its lock first and read by the others (the README has the times); a build that starts from another's
    Q-Former (base.dependencies: LLaMA from T5) is submitted when that one has ended. alongside(builds), when
    given, runs meanwhile (the grid, gated by `builds`; after the builds when jobs is 1) and its failures are
    added.
    timings["base models"]: seconds until the last build ended."""
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    profile_name = profile.name
    start = time.time()
    todo = _base_models_to_build(profile, checkpoints)
    if not todo:
        log(f"[study] base models: none needed (profile {profile_name} uses {sorted(set(profile.models.values()))})")
    if jobs <= 1 or not todo:
        failed: dict[tuple[str, str], str] = {}
        for preset, llm, expected in todo:  # dependencies first
            source = next((d for d in base.dependencies(preset, llm) if d in failed), None)
            try:
                if source:  # its build would only try the failed one again
                    raise _source_failed(failed[source])
                log(_build_one(preset, llm, expected, data_dir, checkpoints, profile_name, log))
            except Exception as err:  # noqa: BLE001 - the other builds (and what reads them) go on
                failed[preset, llm] = f"{type(err).__name__}: {err}"
                log(f"[study] base model {preset}-{llm}: FAILED: {failed[preset, llm]}")
        failures = len(failed)
        if timings is not None:
            timings["base models"] = round(time.time() - start, 1)
        return failures + (alongside(Builds({})) if alongside else 0)
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    ended: list[float] = []

    def done(name: str, future: "Future[str]") -> None:  # as each build ends, not after the grid
        ended.append(time.time())
        err = future.exception()
        log(f"[study] base model {name}: FAILED: {type(err).__name__}: {err}" if err else future.result())

    # spawn: a fresh interpreter per build (no fork of a process that may hold torch threads)
    workers = min(jobs, len(todo))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures, by_model = {}, {}
        for preset, llm, expected in todo:  # dependencies first (_base_models_to_build)
            after = [by_model[d] for d in base.dependencies(preset, llm) if d in by_model]
            f = submit_after(pool, after, _build_one, preset, llm, expected, data_dir, checkpoints, profile_name,
                              print)
            futures[expected.resolve()] = by_model[preset, llm] = f
            f.add_done_callback(functools.partial(done, f"{preset}-{llm}"))
        failures = alongside(Builds(futures, workers)) if alongside else 0
        wait(list(futures.values()))  # a dependent build submits itself late: before the pool shuts down
    failures += sum(f.exception() is not None for f in futures.values())
    if timings is not None:
        timings["base models"] = round(max(ended, default=start) - start, 1)
    return failures


def _base_models_to_build(profile: Profile, checkpoints: str) -> list[tuple[str, str, Path]]:
    """(preset, llm, the path its notebooks read) for each base model the profile builds."""
    if not profile.base_models:
        return []
    # where the notebooks read each model: the profile's models and its larger ones (scaling_models)
    read = [Path(m.format(checkpoints=checkpoints))
            for m in [*profile.models.values(), *(m for ms in profile.scaling_models.values() for m in ms)]]
    todo = []
    for preset, llm in profile.base_models:
        expected = next((p for p in read if p.name == base.base_name(preset, llm)), None)
        if expected is None:
            raise GridError(f"profile {profile.name} builds base model {preset}-{llm}, but none of its models "
                            f"reads it: {', '.join(map(str, read))}")
        todo.append((preset, llm, expected))
    # a build that starts from another's Q-Former (base.dependencies; never a chain) after the others
    return sorted(todo, key=lambda t: bool(base.dependencies(t[0], t[1])))


def _source_failed(reason: str) -> RuntimeError:
    """The error of a build not attempted because the build its Q-Former starts from failed with `reason`."""
    return RuntimeError(f"not built: it starts from a base model whose build failed ({reason})")


def submit_after(pool: Any, after: "list[Future[str]]", fn: Callable[..., str], *args: Any) -> "Future[str]":
    """pool.submit(fn, *args) once every future in `after` has succeeded (at once when there are none). The
    future returned is running only from then on (Builds.cores counts running builds), and fails without
    running fn when one of `after` fails."""
    if not after:
        return pool.submit(fn, *args)
    proxy: "Future[str]" = Future()

    def chain() -> None:
        failed = [f.exception() for f in after if f.exception() is not None]  # exception() waits for each
        if failed:
            proxy.set_exception(_source_failed(f"{type(failed[0]).__name__}: {failed[0]}"))
            return
        proxy.set_running_or_notify_cancel()
        try:
            proxy.set_result(pool.submit(fn, *args).result())
        except BaseException as err:  # noqa: BLE001 - handed to whoever reads the future
            proxy.set_exception(err)

    threading.Thread(target=chain, name="build-after", daemon=True).start()
    return proxy


def _build_one(preset: str, llm: str, expected: Path, data_dir: Path, checkpoints: str, profile_name: str,
               log: Callable[[str], None]) -> str:
    """One base model (in this process or a pool's); the line that says where it is and how long it took."""
    start = time.time()
    path = base.ensure_base(preset, llm, base.DEFAULT_SEED, data_dir, checkpoints, log=log)
    if Path(path).resolve() != expected.resolve():
        raise RuntimeError(f"base model {preset}-{llm} was built into {path}, but the {profile_name} profile's "
                           f"notebooks read {expected}")
    return f"[study] base model {preset}-{llm}: {path} ({time.time() - start:.1f} s)"


def run_study(profile: str, *, root: str | Path = ".", jobs: int = 0, only: str | None = None,
              data_root: str | None = None, checkpoints: str | None = None, model_scaling: bool = False,
              full_grid: bool = False, extended: bool = False,
              allow_cpu: bool = False, limits: dict[str, int] | None = None,
              log: Callable[[str], None] = print) -> int:
    """Every stage of a profile (with its model-size axis when model_scaling: its extra base models, then
    only the cells not finished yet); returns the number of failures (capped like the grid's).
    The paper profile needs CUDA unless allow_cpu; limits (LIMITS) cap every run's size. Every input that no
    stage builds is checked first: a missing one stops the study before anything runs (GridError)."""
    layout = Layout(Path(root).resolve())
    prof = resolve_profile(profile, model_scaling, full_grid, extended)
    cuda_guard(prof, allow_cpu)
    cells = with_limits(select(expand(prof, root=layout.root, data_root=data_root, checkpoints=checkpoints), only),
                        dict(limits or {}))
    data_dir = Path(cells[0].parameters["data_dir"])
    ckpt = cells[0].parameters["checkpoints"]
    if prof.data_size is None:  # embedded profiles write their data and build their models first
        check_inputs(cells, [expected for _, _, expected in _base_models_to_build(prof, ckpt)])
    timings: dict[str, float] = {}
    failures = 0

    def stage(name: str, fn: Callable[[], int], timed: bool = True) -> None:
        nonlocal failures
        start = time.time()
        try:
            failures += fn()
        except Exception as err:  # noqa: BLE001 - one stage failing must not hide the others' results
            failures += 1
            log(f"[study] {name}: FAILED: {type(err).__name__}: {err}")
        if timed:
            timings[name] = round(time.time() - start, 1)

    def data() -> int:
        if prof.data_size is None:
            missing = [b for b in ("scienceqa", "iconqa", "vizwiz", "flickr30k") if not (data_dir / b).exists()]
            log(f"[study] data: real benchmarks in {data_dir}" + (f"; missing: {', '.join(missing)}" if missing else ""))
            return 0
        fresh = not (data_dir / ".complete").exists()
        ensure_data(data_dir, prof.data_size, prof.data_seed)
        log(f"[study] data: synthetic '{prof.data_size}' benchmarks {'written to' if fresh else 'present in'} {data_dir}")
        return 0

    def grid_stage(builds: Builds | None = None) -> int:
        start = time.time()
        result = run_grid(cells, out_dir=layout.notebooks_out, jobs=jobs, builds=builds, log=log)
        timings["grid"] = round(time.time() - start, 1)
        log(f"[study] grid: {result.count('done')} executed, {result.count('skipped')} already finished, "
            f"{len(result.failures)} failed")
        for o in result.failures:
            log(f"[study]   FAILED {o.cell}: {o.error}")
        return len(result.failures)

    def report_stage() -> int:
        from .report import build_report

        runs_dir = layout.runs(profile)
        if not runs.iter_runs(runs_dir):
            log(f"[study] report: nothing to report yet (no run folders in {runs_dir})")
            return 0
        index = build_report(runs_dir, notebooks_dir=layout.notebooks_out, out=layout.reports,
                             title=f"Q-Former PEFT study ({profile} profile)", cache_dir=layout.root / "cache", log=log)
        log(f"[study] report: {index}")
        return 0

    def models_and_grid() -> int:
        # with several workers the grid starts while the base models build: a cell once the models it reads
        # are there, on the cores the builds no longer hold (Builds)
        return build_base_models(prof, data_dir=data_dir, checkpoints=ckpt, log=log, jobs=jobs,
                                 alongside=grid_stage, timings=timings)

    jobs = jobs if jobs > 0 else auto_jobs()
    opts = [f for f, on in (("--model-scaling", model_scaling), ("--full-grid", full_grid), ("--extended", extended)) if on]
    log(f"[study] profile {profile}{' with ' + ' '.join(opts) if opts else ''} ({prof.description}); "
        f"study root {layout.root}; {jobs} worker(s)")
    began = time.time()
    stage("data", data)
    stage("base models and grid", models_and_grid, timed=False)  # each timed on its own
    stage("report", report_stage)
    total = round(time.time() - began, 1)
    overlap = jobs > 1 and "base models" in timings and "grid" in timings
    log("[study] wall time by stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + (" (the grid alongside the base models)" if overlap else "") + f"; total {total:.1f} s")
    layout.reports.mkdir(parents=True, exist_ok=True)
    runs.write_json(layout.reports / "study_timings.json", {"profile": profile, "model_scaling": model_scaling,
                                                            "full_grid": full_grid, "extended": extended, "jobs": jobs,
                                                            "stages_s": timings, "total_s": total,
                                                            "grid_alongside_base_models": overlap,
                                                            "failures": failures, "finished": runs.now()})
    if (layout.reports / "claims.json").is_file():  # the README's results block is generated from this file
        from .readme_results import results_markdown

        runs.atomic_write(layout.reports / "summary.md", results_markdown(layout.reports))
    return min(failures, 100)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("study", help="a profile end to end: data, base models, grid, report",
                              description=__doc__.splitlines()[0])
    add_common_arguments(p)
    p.add_argument("--allow-cpu", action="store_true",
                   help="let the paper profile run without CUDA (full-size models in fp32 on the CPU: use size caps)")
    for name in LIMITS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, metavar="N",
                       help=f"cap every run's {name.replace('_', ' ')} at N")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        return run_study(args.profile, root=args.out, jobs=max(0, args.jobs), only=args.only,
                         data_root=args.data_root, checkpoints=args.checkpoints, model_scaling=args.model_scaling,
                         full_grid=args.full_grid, extended=args.extended,
                         allow_cpu=args.allow_cpu,
                         limits={k: getattr(args, k) for k in LIMITS if getattr(args, k) is not None})
    except GridError as err:
        print(f"qformer-peft study: {err}", file=sys.stderr)
        return 2

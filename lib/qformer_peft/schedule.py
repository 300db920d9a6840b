"""Executing a profile's cells: a local pool of notebook workers (or submitit on a Slurm cluster), each cell
started once the cells it reads have finished, and the `qformer-peft grid` command.

    qformer-peft grid --profile mini [--jobs N] [--only PATTERN] [--data-root DIR] [--checkpoints DIR] [--out DIR]
                      [--model-scaling]   (the model-size axis: grid.with_model_scaling)

Rerunning after an interruption executes only what is missing (execute.is_finished), and the engine skips
finished runs inside a re-executed cell; the exit status counts the failures.
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import runs
from .grid_cells import CONNECTORS, NOTEBOOKS_DIR, Cell, Layout, expand
from .execute import (KERNEL_NAME, Outcome, Children, check_inputs, done_run_hashes, execute_cell, is_finished,
                      write_kernelspec)
from .grid import PROFILES, GridError
from .workbook import ensure_data


MAX_EXIT_STATUS = 100                  # the exit status counts failures, capped below the shell's 126+


FINAL_KINDS = ("analysis", "report")   # executed after every experiment cell, when anything ran


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_jobs() -> int:
    """Workers for --jobs 0: one per GPU, else one single-threaded worker per core (at most 8): small
    models keep one core busier than two cores share one model."""
    return _gpu_count() or max(1, min(_cores(), 8))


def _worker_env(slot: int, jobs: int, gpus: int) -> dict[str, str]:
    """Threads and device of one worker: cores split between CPU workers, one GPU per worker."""
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "QFP_WORKER": str(slot)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    threads = str(max(1, _cores() // jobs))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "QFP_NUM_THREADS": threads})
    return env


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver: CPU workers
        return 0


@dataclass
class GridResult:
    outcomes: list[Outcome]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state == "failed"]

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def exit_status(self) -> int:
        return min(len(self.failures), MAX_EXIT_STATUS)


def run_grid(cells: Sequence[Cell], *, out_dir: str | Path, notebooks_dir: str | Path = NOTEBOOKS_DIR,
             jobs: int = 1, backend: str = "local", kernel: str | None = None, timeout: float | None = None,
             builds: Any = None, log: Callable[[str], None] = print) -> GridResult:
    """Execute the cells not yet finished; the report cell last, whenever anything else ran.

    builds (study.Builds, local backend): base models still being built beside the grid. A cell waits while
    builds.blocks(cell), and builds.cores() of the `jobs` workers stay free for them."""
    out_dir, notebooks_dir = Path(out_dir).resolve(), Path(notebooks_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = jobs if jobs > 0 else auto_jobs()
    env: dict[str, str] = {}
    if kernel is None:
        kernel = KERNEL_NAME
        jpath = write_kernelspec(out_dir / ".jupyter")
        env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(jpath), os.environ.get("JUPYTER_PATH")) if p)
    main = [c for c in cells if c.kind not in FINAL_KINDS]
    final = [c for c in cells if c.kind in FINAL_KINDS]
    hashes: dict[str, set[str]] = {}

    def finished(c: Cell) -> bool:
        rd = c.parameters.get("runs_dir")
        if c.kind == "experiment" and rd not in hashes:
            hashes[rd] = done_run_hashes(rd)
        return is_finished(c, out_dir, hashes.get(rd))

    outcomes = [Outcome(c.name, "skipped") for c in main if finished(c)]
    todo = [c for c in main if c.name not in {o.cell for o in outcomes}]
    manifest = {c.name: {"notebook": c.notebook, "state": "pending"} for c in cells}
    for o in outcomes:
        manifest[o.cell]["state"] = "skipped"
    lock = threading.Lock()

    def record(o: Outcome) -> None:
        with lock:
            outcomes.append(o)
            manifest[o.cell].update(state=o.state, seconds=o.seconds, error=o.error)
            runs.write_json(out_dir / "grid.json", {"order": order, "cells": manifest, "updated": runs.now()})
            done = sum(x.state != "skipped" for x in outcomes)
            msg = f"[grid] {o.state:7s} {o.cell} ({o.seconds:.1f} s)" + (f": {o.error}" if o.error else "")
            log(msg + f"  [{done}/{len(todo) + len(final)}]")

    order = [c.name for c in cells]  # grid.json's keys get sorted; the report lists cells in this order
    runs.write_json(out_dir / "grid.json", {"order": order, "cells": manifest, "updated": runs.now()})
    log(f"[grid] {len(cells)} cells: {len(outcomes)} already finished, {len(todo)} to execute "
        f"({jobs} worker{'s' if jobs > 1 else ''}, backend {backend})")
    if backend == "submitit":
        if builds is not None and builds.cores():
            raise GridError("the submitit backend runs after the base models are built, not beside them")
        run_submitit(todo + final, notebooks_dir=notebooks_dir, out_dir=out_dir, kernel=kernel, env=env,
                      timeout=timeout, record=record, run_final=lambda: bool(todo) or not all(map(finished, final)))
        return GridResult(outcomes)
    if backend != "local":
        raise GridError(f"backend {backend!r} is not known; choose local or submitit")

    gpus = _gpu_count() if jobs > 1 else 0
    slots: queue.Queue[int] = queue.Queue()
    for i in range(jobs):
        slots.put(i)
    children = Children()

    def work(c: Cell) -> None:
        if children.stopping:
            return
        slot = slots.get()
        try:
            record(execute_cell(c, notebooks_dir=notebooks_dir, out_dir=out_dir, kernel=kernel,
                                env={**env, **_worker_env(slot, jobs, gpus)}, timeout=timeout, children=children))
        finally:
            slots.put(slot)

    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:  # a SIGTERM stops the children too instead of orphaning them
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        waiting = {c.name for c in todo}  # a cell starts once the cells it reads (`after`) are no longer waiting
        pending = start_order(todo)
        running: list[threading.Thread] = []
        while pending or running:  # at most `jobs` threads alive; the slot queue hands out devices
            running = [t for t in running if t.is_alive()]
            with lock:
                waiting -= {o.cell for o in outcomes}
            building = builds.cores() if builds is not None else 0
            startable = [c for c in pending if not (building and builds.blocks(c))]
            # nothing ready and nothing running or building (cells waiting on each other): start one anyway
            ready = ([c for c in startable if not waiting & set(c.after)]
                     or (startable[:1] if not running and not building else []))
            for c in ready[:max(0, jobs - building - len(running))]:
                pending.remove(c)
                t = threading.Thread(target=work, args=(c,), daemon=True)
                t.start()
                running.append(t)
            time.sleep(0.05)
        while builds is not None and builds.cores():  # no experiment cell left: the report reads every model's runs
            time.sleep(0.5)
        for c in final:
            if todo or not finished(c):
                work(c)
            else:
                record(Outcome(c.name, "skipped"))
    except KeyboardInterrupt:
        children.terminate()
        log("[grid] interrupted: rerun the same command to execute what is missing")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return GridResult(outcomes)


def start_order(cells: Sequence[Cell]) -> list[Cell]:
    """The order workers take cells in: longest first, so that no worker is left with a long notebook at the end
    while the others idle. The environment first; then the connector notebooks (each aligns several connectors
    before it trains); then by the epochs a cell may train, summed over its runs (stable: ties keep their order)."""
    return sorted(cells, key=lambda c: (c.kind != "environment", c.notebook != CONNECTORS,
                                        -sum(cfg.max_epochs for cfg in c.configs())))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_submitit(cells: Sequence[Cell], *, notebooks_dir: Path, out_dir: Path, kernel: str, env: Mapping[str, str],
                  timeout: float | None, record: Callable[[Outcome], None], run_final: Callable[[], bool],
                  executor: Any = None) -> None:
    """Each notebook as a submitit job (Slurm where there is one, else submitit's local executor)."""
    try:
        import submitit
    except ImportError:
        raise GridError("--backend submitit needs the optional extra: pip install 'qformer-peft[slurm]'") from None
    if executor is None:
        executor = submitit.AutoExecutor(folder=out_dir / ".submitit")
        executor.update_parameters(timeout_min=int((timeout or 24 * 3600) / 60) + 5, gpus_per_node=1,
                                   tasks_per_node=1, cpus_per_task=8, name="qformer-peft")
    main = [c for c in cells if c.kind not in FINAL_KINDS]
    final = [c for c in cells if c.kind in FINAL_KINDS]
    kwargs = {"notebooks_dir": notebooks_dir, "out_dir": out_dir, "kernel": kernel, "env": dict(env),
              "timeout": timeout}
    for wave in ([c for c in main if not c.after], [c for c in main if c.after]):  # readers after the others
        jobs = [(c, executor.submit(execute_cell, c, **kwargs)) for c in wave]
        for c, job in jobs:
            try:
                record(job.result())
            except Exception as err:  # noqa: BLE001 - the job itself died (node lost, time limit)
                record(Outcome(c.name, "failed", error=f"submitit job {job.job_id}: {type(err).__name__}: {err}"))
    for c in final:
        if run_final():
            record(executor.submit(execute_cell, c, **kwargs).result())


# --- command line ---------------------------------------------------------------------------------------
def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="mini", choices=sorted(PROFILES), help="which grid (default mini)")
    p.add_argument("--jobs", type=int, default=0,
                   help="parallel notebook workers; CPU: cores split between them; 0 (default): one per GPU, "
                        "else one per core")
    p.add_argument("--only", metavar="PATTERN",
                   help="run only the experiment cells whose name matches this regular expression")
    p.add_argument("--data-root", help="real data root: DIR/scienceqa, DIR/iconqa, ... (or $QFP_DATA_ROOT)")
    p.add_argument("--checkpoints", help="checkpoints root or hub namespace (or $QFP_CHECKPOINTS)")
    p.add_argument("--out", default=".", help="study root: runs/, reports/, cache/, data/ (default: .)")
    p.add_argument("--model-scaling", action="store_true",
                   help="add the model-size axis (mini: T5 base models twice as deep and twice as wide, built "
                        "first; finished cells are kept, only the new ones run)")
    p.add_argument("--full-grid", action="store_true",
                   help="the paper's whole grid at claim depth: every Table-1 row at ranks 1, 2, 4, 8 on the claim "
                        "seeds, AdaLoRA on every LLM x benchmark (mini: the default runs the claim rows at rank 8)")
    p.add_argument("--extended", action="store_true",
                   help="add what the default leaves out to keep its budget (mini: AdaLoRA on 3 seeds with its null "
                        "runs, the connector study, multi-task AdaLoRA, training-set sizes, ranks past the grid); "
                        "finished cells are kept, only the new ones run")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("grid", help="execute a profile's notebooks with papermill",
                              description=__doc__.splitlines()[0])
    add_common_arguments(p)
    p.add_argument("--backend", default="local", choices=("local", "submitit"),
                   help="local worker processes, or one submitit (Slurm) job per notebook")
    p.add_argument("--timeout", type=float, help="seconds allowed per notebook cell execution")
    p.add_argument("--kernel", help="Jupyter kernel name (default: this interpreter's ipykernel)")
    p.add_argument("--list", action="store_true", help="print the cells and whether each is finished, then exit")
    p.set_defaults(func=main)


def select(cells: Iterable[Cell], only: str | None) -> list[Cell]:
    """Experiment cells matching the pattern; the environment and report cells always stay."""
    if not only:
        return list(cells)
    try:
        rx = re.compile(only)
    except re.error as err:
        raise GridError(f"--only {only!r} is not a valid regular expression: {err}") from None
    return [c for c in cells if c.kind != "experiment" or rx.search(c.name)]


def main(args: argparse.Namespace) -> int:
    try:
        cells = select(expand(args.profile, root=args.out, data_root=args.data_root,
                              checkpoints=args.checkpoints, model_scaling=args.model_scaling,
                              full_grid=args.full_grid, extended=args.extended), args.only)
        if not args.list:
            check_inputs(cells)
    except GridError as err:
        print(f"qformer-peft grid: {err}", file=sys.stderr)
        return 2
    out_dir = Layout(Path(args.out).resolve()).notebooks_out
    if args.list:
        for c in cells:
            state = "finished" if is_finished(c, out_dir) else "to run"
            print(f"{c.name:55s} {c.notebook:26s} {len(c.configs()):3d} runs  {state}")
        return 0
    profile = PROFILES[args.profile]
    if profile.data_size:
        ensure_data(cells[0].parameters["data_dir"], profile.data_size, profile.data_seed)
    result = run_grid(cells, out_dir=out_dir, jobs=max(0, args.jobs), backend=args.backend, kernel=args.kernel,
                      timeout=args.timeout)
    print(f"[grid] {result.count('done')} executed, {result.count('skipped')} skipped, "
          f"{len(result.failures)} failed; notebooks in {out_dir}")
    for o in result.failures:
        print(f"[grid] FAILED {o.cell}: {o.error} (log: {out_dir / (o.cell + '.log')})", file=sys.stderr)
    return result.exit_status

"""Run folders: one self-describing directory per experiment run, and loading them all back.

A run folder holds everything the report needs, so the report never reaches back into code:

    <root>/<run_id>/
      config.json          the resolved config (the run id is a hash of it)
      env.json             library versions, git revision, device, command line
      status.json          {"state": "running" | "done" | "failed", "traceback": ..., "updated": ...}
      metrics.jsonl        one JSON object per epoch (and per evaluation)
      result.json          final metrics of the best-validation weights
      predictions.jsonl    test predictions, one object per item
      zero_shot_predictions.jsonl  the same test items scored before training (reference runs: baseline, null)
      adalora_ranks.jsonl  AdaLoRA rank history (tidy rows), only for AdaLoRA runs
      rerun.json           why this run reruns another at a lowered rate (reruns.RerunRule), only for reruns
      adapter/             adapter weights in peft format
      checkpoint.pt        last completed epoch, for resuming (deleted when the run is done)

Every write is atomic (write to a temp file in the same folder, then rename), so a run killed at
any moment leaves either the old file or the new one, never half a file.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback as _tb
from pathlib import Path
from typing import Any, Iterable, Mapping

STATES = ("running", "done", "failed")
ZERO_SHOT_FILE = "zero_shot_predictions.jsonl"


def config_hash(config: Mapping[str, Any], length: int = 12) -> str:
    """A stable hash of a JSON-able config: key order and float repr never change it."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextlib.contextmanager
def file_lock(target: str | Path):
    """An exclusive lock (POSIX flock on TARGET's sibling .<name>.lock) while TARGET is built: two processes
    (or threads) never build the same cached thing at once; the second waits, then finds it built."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, the atomic writes still keep it consistent
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                         f"delete the file or the run folder to recompute it") from None


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {i}: not valid JSON ({err.msg}); delete the run folder "
                                 f"to recompute it") from None
    return rows


def environment() -> dict[str, Any]:
    """Versions, device and git revision: enough to say what produced a number."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("qformer-peft", "torch", "transformers", "peft", "numpy", "pandas", "papermill"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "git_revision": _git_revision(),
        "argv": sys.argv,
    }


def _git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """One run's folder. Create with `RunDir.open(root, config)`; the folder name is the config hash."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def open(cls, root: str | Path, config: Mapping[str, Any], *, prefix: str = "") -> "RunDir":
        """The folder for this config under root (created if new). Same config -> same folder."""
        run_id = (prefix + "-" if prefix else "") + config_hash(config)
        run = cls(Path(root) / run_id)
        run.path.mkdir(parents=True, exist_ok=True)
        if (run.path / "config.json").exists():
            stored = read_json(run.path / "config.json")
            if config_hash(stored) != config_hash(config):
                raise ValueError(f"{run.path / 'config.json'}: holds a different config than this run "
                                 f"(hash collision or a hand edit); move the folder away")
        else:
            write_json(run.path / "config.json", dict(config))
        return run

    @property
    def id(self) -> str:
        return self.path.name

    # --- status -------------------------------------------------------------------------------
    @property
    def state(self) -> str | None:
        f = self.path / "status.json"
        return read_json(f)["state"] if f.exists() else None

    def is_done(self) -> bool:
        return self.state == "done" and (self.path / "result.json").exists()

    def mark_running(self) -> None:
        write_json(self.path / "env.json", environment())
        write_json(self.path / "status.json", {"state": "running", "updated": now()})

    def mark_done(self, result: Mapping[str, Any]) -> None:
        write_json(self.path / "result.json", dict(result))
        write_json(self.path / "status.json", {"state": "done", "updated": now()})
        (self.path / "checkpoint.pt").unlink(missing_ok=True)

    def mark_failed(self, exc: BaseException) -> None:
        tb = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        write_json(self.path / "status.json",
                   {"state": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": tb, "updated": now()})

    # --- records ------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return read_json(self.path / "config.json")

    @property
    def result(self) -> dict | None:
        f = self.path / "result.json"
        return read_json(f) if f.exists() else None

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")

    def write_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rewrite the whole metrics file (atomic), so a resumed run never duplicates an epoch."""
        self._write_jsonl("metrics.jsonl", rows)

    def predictions(self) -> list[dict]:
        return read_jsonl(self.path / "predictions.jsonl")

    def write_predictions(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._write_jsonl("predictions.jsonl", rows)

    def zero_shot_predictions(self) -> list[dict]:
        return read_jsonl(self.path / ZERO_SHOT_FILE)

    def write_zero_shot_predictions(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._write_jsonl(ZERO_SHOT_FILE, rows)

    def ranks(self) -> list[dict]:
        return read_jsonl(self.path / "adalora_ranks.jsonl")

    def write_ranks(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._write_jsonl("adalora_ranks.jsonl", rows)

    def _write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        atomic_write(self.path / name, "".join(json.dumps(dict(r), sort_keys=True, default=str) + "\n" for r in rows))

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """torch.save the training state atomically (used to resume after an interruption)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(dict(state), buf)
        atomic_write(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        import torch

        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)


def iter_runs(root: str | Path) -> list[RunDir]:
    root = Path(root)
    if not root.exists():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if (p / "config.json").exists()]


def load_runs(root: str | Path):
    """All run folders under root as one pandas DataFrame: config fields, state, final metrics.

    Columns: run_id, path, state, every config key, every result key prefixed with `result.`
    (nested results are flattened with dots), and superseded (superseded_hashes).
    """
    import pandas as pd

    rows, configs = [], []
    for run in iter_runs(root):
        row: dict[str, Any] = {"run_id": run.id, "path": str(run.path), "state": run.state}
        config = run.config
        configs.append((config, run.is_done()))
        row.update(config)
        result = run.result or {}
        row.update({f"result.{k}": v for k, v in _flatten(result).items()})
        rows.append(row)
    gone = superseded_hashes(configs)
    df = pd.DataFrame(rows)
    df["superseded"] = [config_hash(c) in gone for c, _ in configs]
    return df


def superseded_hashes(configs: Iterable[tuple[Mapping[str, Any], bool]]) -> set[str]:
    """Config hashes of the runs a finished rerun replaces, from (config, done) pairs: a rerun at a lowered
    learning rate (config field rerun_of, the paper's rerun rule) counts in place of the run it reruns; the
    original's folder stays, marked superseded. A rerun not yet done replaces nothing."""
    return {c["rerun_of"] for c, done in configs if done and c.get("rerun_of")}


def counted(df):
    """The runs that count for a configuration (Table 1, the claims): every run but those superseded by a finished
    rerun (load_runs' superseded column)."""
    return df[~df["superseded"].astype(bool)] if "superseded" in df else df


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out

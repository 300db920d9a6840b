#!/usr/bin/env bash
# The workbook's two commands:
#   ./run_all.sh            set up the environment if needed, then run the default profile (mini) end to end
#   ./run_all.sh test       same set-up, then the test suite
#   ./run_all.sh lab        same set-up, then JupyterLab on notebooks/ (the package importable in its kernel)
# Everything after the command word is passed on (see --help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

usage() {
  cat <<'USAGE'
usage: ./run_all.sh [test [PYTEST ARGS...]] | [lab [JUPYTERLAB ARGS...]] | [--profile smoke|mini|paper] [--extended] [--full-grid] [options]

  test                 set up the environment, then run the tests (pytest; extra args go to pytest)
  lab                  set up the environment, then open notebooks/ in JupyterLab (extra args go to jupyter lab)
  --profile NAME       smoke: every code path on tiny models, minutes on a CPU (what CI runs)
                       mini:  the default; the full grids on the embedded models and synthetic benchmarks
                       paper: real checkpoints and data on a CUDA GPU (needs --data-root and --checkpoints)
  --jobs N             parallel notebook workers (default 0: one single-threaded worker per CPU core,
                       or one per GPU)
  --only PATTERN       run only the grid cells whose name matches PATTERN
  --full-grid          the paper's whole grid at claim depth (every Table-1 row at ranks 1, 2, 4, 8 on 3
                       seeds, AdaLoRA on every LLM x benchmark); mini's default runs the claim rows at rank 8
                       and the other rows on one seed
  --extended           add what mini's default leaves out to keep its budget: AdaLoRA on 3 seeds with its
                       null runs (the allocation claims), the connector study, multi-task AdaLoRA,
                       training-set sizes and ranks past the grid; finished cells are kept
  --model-scaling      add the model-size axis (does PEFT's gap to full fine-tuning change with model size?).
                       mini: builds T5 base models twice as deep and twice as wide (mini's frozen encoder
                       reused, so only stage 3 and the build report: 16-17 min of CPU each, the two
                       side by side on 2 cores), then 12 runs on them;
                       after a finished mini study nothing else reruns but the report. Measured: 20 min
                       on a 2-core CPU. smoke: on random tiny presets, seconds
  --allow-cpu          let the paper profile start without CUDA (it refuses otherwise)
  --train-limit N      cap every run's training items (also --val-limit, --test-limit, --max-epochs)
  --data-root DIR      real data root (paper profile), or $QFP_DATA_ROOT
  --checkpoints DIR    real checkpoints root or hub ids (paper profile), or $QFP_CHECKPOINTS
  --out DIR            where runs, caches and the report go (default: this folder)
  -h, --help           this text

Environment: an active virtualenv or conda env is used as is; otherwise one is created under
${QFP_VENV_ROOT:-~/.cache/qformer-peft/venvs}, keyed by a hash of pyproject.toml, and reused.
QFP_TORCH overrides the torch requirement installed into a fresh environment (default: the CPU
build torch==2.13.0 when no NVIDIA driver is present, else the newest torch from the index).
USAGE
}

case "${1:-}" in -h|--help) usage; exit 0 ;; esac

# --- environment -------------------------------------------------------------------------
py="${PYTHON:-python3}"
if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
  venv_py="$(command -v python)"
else
  spec_hash="$(cat pyproject.toml | "$py" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:12])')"
  venv="${QFP_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/qformer-peft/venvs}/$spec_hash"
  venv_py="$venv/bin/python"
  if [[ ! -f "$venv/.complete" ]]; then
    echo "[run_all] creating the environment $venv (once per dependency spec)"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv_py" -m pip install -q --upgrade pip
    if [[ -n "${QFP_TORCH:-}" ]]; then torch_req="$QFP_TORCH"
    elif command -v nvidia-smi >/dev/null 2>&1; then torch_req="torch"
    else torch_req="torch==2.13.0"; fi
    "$venv_py" -m pip install -q "$torch_req"
    "$venv_py" -m pip install -q -e ".[dev]"
    touch "$venv/.complete"
  fi
  # The editable install points at whichever clone installed it; make this clone the one.
  if ! "$venv_py" - <<PYCHK 2>/dev/null
import qformer_peft, pathlib, sys
sys.exit(0 if pathlib.Path(qformer_peft.__file__).resolve().is_relative_to(pathlib.Path("$here").resolve()) else 1)
PYCHK
  then
    "$venv_py" -m pip install -q --no-deps -e .
  fi
fi

# --- commands ------------------------------------------------------------------------------
if [[ "${1:-}" == "test" ]]; then
  shift
  exec "$venv_py" -m pytest "$@"
fi
if [[ "${1:-}" == "lab" ]]; then
  shift
  # The notebooks ask for the kernel "python3": a spec of that name pointing at this environment's python comes
  # first on JUPYTER_PATH, so a user-wide "python3" elsewhere cannot shadow it.
  kernels="$(mktemp -d)"
  "$venv_py" -c 'import sys; from pathlib import Path; from qformer_peft.execute import write_kernelspec
write_kernelspec(Path(sys.argv[1]), name="python3")' "$kernels"
  export JUPYTER_PATH="$kernels${JUPYTER_PATH:+:$JUPYTER_PATH}"
  exec "$venv_py" -m jupyterlab --notebook-dir="$here/notebooks" "$@"
fi
exec "$venv_py" -m qformer_peft.cli study "$@"

"""JupyterLab from one command: `./run_all.sh lab` opens notebooks/ with this environment's python as the kernel."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from qformer_peft.execute import write_kernelspec

ROOT = Path(__file__).resolve().parents[1]


def test_jupyterlab_is_part_of_the_environment():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("jupyterlab") for d in deps)
    assert "jupyterlab" in (ROOT / "environment.yml").read_text()


@pytest.mark.slow
def test_run_all_lab_starts_jupyterlab_in_this_environment():
    # an active virtualenv is used as is (no install); --version makes jupyter lab answer and exit
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(ROOT / "run_all.sh"), "lab", "--version"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(".")[0].isdigit(), out.stdout
    assert "lab " in subprocess.run(["bash", str(ROOT / "run_all.sh"), "--help"], capture_output=True,
                                    text=True).stdout


def test_the_notebooks_kernel_resolves_to_this_interpreter(tmp_path, monkeypatch):
    # run_all.sh lab puts this spec first on JUPYTER_PATH: the notebooks' "python3" is this environment's python
    monkeypatch.setenv("JUPYTER_PATH", str(write_kernelspec(tmp_path, name="python3")))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable and Path(spec.resource_dir).is_relative_to(tmp_path)

"""Shared test settings: everything offline, seeded, tiny, one thread.

One torch thread: the test models are so small that a second thread only adds synchronisation,
and under load (parallel sessions, CI neighbours) it made the suite several times slower.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (after the offline switches)

torch.set_num_threads(1)

import pytest  # noqa: E402


def pytest_configure(config):
    # pytest resets warning filters per test, undoing the one qformer_peft/__init__.py sets for peft's read of
    # transformers' deprecated is_gradient_checkpointing (48 copies in a run's summary): the same filter here
    config.addinivalue_line("filterwarnings", "ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny synthetic world (four benchmarks + held-in tasks), written once per test module."""
    from qformer_peft import features
    from qformer_peft.data import synthetic

    root = tmp_path_factory.mktemp("world")
    synthetic.synthesize(root, "tiny", 0)
    features.clear_memory()
    return root


@pytest.fixture(scope="module")
def heldin_only(world, tmp_path_factory):
    """The same world with the four benchmark folders removed: what a base build reads (it must not notice)."""
    import shutil

    from qformer_peft.data import synthetic

    root = tmp_path_factory.mktemp("heldin_only") / "data"
    shutil.copytree(world, root)
    for bench in synthetic.BENCHMARKS:
        shutil.rmtree(root / bench)
    return root

"""Run folders: same config -> same folder, atomic writes, states, and loading back as a DataFrame."""
import json

import pytest

from qformer_peft import runs


def test_config_hash_ignores_key_order_and_changes_with_values():
    a = runs.config_hash({"rank": 8, "setup": "qf-lora"})
    assert a == runs.config_hash({"setup": "qf-lora", "rank": 8})
    assert a != runs.config_hash({"setup": "qf-lora", "rank": 4})


def test_same_config_opens_same_folder_and_a_tampered_config_is_refused(tmp_path):
    cfg = {"setup": "qf-lora", "rank": 8}
    r1 = runs.RunDir.open(tmp_path, cfg)
    r2 = runs.RunDir.open(tmp_path, dict(cfg))
    assert r1.path == r2.path and r1.config == cfg
    (r1.path / "config.json").write_text(json.dumps({"setup": "qf-lora", "rank": 2}))
    with pytest.raises(ValueError, match="different config"):
        runs.RunDir.open(tmp_path, cfg)


def test_lifecycle_and_load_runs(tmp_path):
    done = runs.RunDir.open(tmp_path, {"setup": "qf-lora", "rank": 8})
    done.mark_running()
    assert done.state == "running" and not done.is_done()
    done.write_metrics([{"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.7}])
    done.save_checkpoint({"epoch": 1, "x": [1, 2]})
    assert done.load_checkpoint()["epoch"] == 1
    done.mark_done({"test_acc": 0.75, "categories": {"NAT": 0.8}})
    assert done.is_done() and not done.checkpoint_path.exists()
    assert json.loads((done.path / "env.json").read_text())["versions"]["torch"]

    failed = runs.RunDir.open(tmp_path, {"setup": "baseline", "rank": None})
    try:
        raise RuntimeError("boom")
    except RuntimeError as err:
        failed.mark_failed(err)
    assert failed.state == "failed"
    assert "boom" in json.loads((failed.path / "status.json").read_text())["traceback"]

    df = runs.load_runs(tmp_path).set_index("setup")
    assert df.loc["qf-lora", "result.test_acc"] == 0.75
    assert df.loc["qf-lora", "result.categories.NAT"] == 0.8
    assert df.loc["baseline", "state"] == "failed"
    assert [m["epoch"] for m in done.metrics()] == [0, 1]


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    runs.atomic_write(target, "old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_corrupt_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2"):
        runs.read_jsonl(f)

"""The CPU efficiency bench on the tiny preset: counted FLOPs, the in-run matmul peak and the profile's time
split are consistent with each other and with what the setups train."""
import pytest
import torch

from qformer_peft import bench_efficiency


def test_interleaved_arms_take_turns_and_prepare_before_each_run():
    log = []
    arms = {k: (lambda k=k: log.append(("prepare", k)), lambda k=k: log.append(("run", k))) for k in "abc"}
    medians = bench_efficiency.interleaved(arms, warmup=1, rounds=3)
    assert set(medians) == set("abc") and all(v >= 0 for v in medians.values())
    runs = [k for what, k in log if what == "run"]
    assert runs == list("abc" "bca" "cab" "abc")  # a rotating order: no arm always runs first
    assert all(log[i] == ("prepare", k) and log[i + 1] == ("run", k) for i, (_, k) in enumerate(log) if i % 2 == 0)


def test_time_split_needs_the_step_range():
    with pytest.raises(ValueError, match="bench.step"):
        bench_efficiency.time_split([])


@pytest.mark.slow
def test_efficiency_rows_count_flops_and_split_the_step():
    eff = bench_efficiency.bench_efficiency(llms=("t5",), setups=("baseline", "qf-lora"), preset="tiny", batch_size=4,
                                            warmup=1, steps=2, profile_steps=1, data_size="tiny", progress=False)
    rows = {r["setup"]: r for r in eff["rows"]}
    assert set(rows) == {"baseline", "qf-lora"} and eff["threads"] == 1
    assert torch.get_num_threads() == 1  # restored (the suite runs on one thread)
    for r in rows.values():
        assert r["gflop_per_step"] > 0 and r["ms_per_step"] > 0
        assert r["gflops"] == pytest.approx(r["gflop_per_step"] / (r["ms_per_step"] / 1000))
        assert r["peak_share"] == pytest.approx(r["gflops"] / r["matmul_peak_gflops"])
        assert sum(r["split"].values()) == pytest.approx(1.0)
        assert r["split"]["matmul"] > 0 and r["split"]["optimizer"] > 0 and r["split"]["batch"] > 0
    # LoRA on a frozen Q-Former skips the Q-Former's weight gradients: fewer FLOPs than full fine-tuning
    assert rows["qf-lora"]["gflop_per_step"] < rows["baseline"]["gflop_per_step"]
    text = bench_efficiency.efficiency_table(eff)
    assert "qf-lora" in text and "share" in text

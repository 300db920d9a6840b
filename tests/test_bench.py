"""The CPU efficiency bench on the tiny preset: counted FLOPs, the in-run matmul peak and the profile's time
split are consistent with each other and with what the setups train."""
import pytest
import torch

from qformer_peft import bench


def test_matmul_peak_is_the_flop_rate_of_one_product():
    peak = bench.matmul_peak(n=128, repeats=2)
    assert 0 < peak < 1e5  # GFLOP/s: positive and far below anything a CPU core reaches


def test_time_split_needs_the_step_range():
    with pytest.raises(ValueError, match="bench.step"):
        bench.time_split([])


@pytest.mark.slow
def test_efficiency_rows_count_flops_and_split_the_step():
    eff = bench.bench_efficiency(llms=("t5",), setups=("baseline", "qf-lora"), preset="tiny", warmup=1, steps=2,
                                 profile_steps=1, progress=False)
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
    text = bench.efficiency_table(eff)
    assert "qf-lora" in text and "share" in text

"""The full-size GPU check (bench_cuda.py) without a GPU: its peak table, FLOP accounting, the same code path on a
tiny config on the CPU, and a clear refusal where there is no CUDA."""
import pytest
import torch

from qformer_peft import bench_cuda, cli
from qformer_peft.models.presets import build_config


def test_the_peak_is_the_cards_own():
    assert bench_cuda.bf16_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_cuda.bf16_peak("NVIDIA H100 PCIe") == 756.0  # not the SXM figure
    assert bench_cuda.bf16_peak("NVIDIA H200") == 989.0
    assert bench_cuda.bf16_peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_cuda.bf16_peak("Tesla T4") is None
    assert bench_cuda.mfu(989e12 * 0.5, 1.0, 989.0) == pytest.approx(0.5)
    assert bench_cuda.mfu(1e12, 1.0, None) is None


def test_flops_of_a_step_are_forward_and_backward_matrix_products():
    b, i, o = 4, 8, 16
    layer = torch.nn.Linear(i, o)
    x = torch.randn(b, i, requires_grad=True)
    # forward 2*b*i*o; backward: the input's gradient and the weight's, 2*b*i*o each
    assert bench_cuda.count_flops(lambda: layer(x).sum().backward()) == 6 * b * i * o


@pytest.mark.parametrize("llm, setup, precision", [("llama", "qf-lora+llm-lora", "fp16"), ("t5", "qf-lora", "bf16")])
def test_the_gpu_code_path_runs_on_a_tiny_config_on_the_cpu(llm, setup, precision):
    config = build_config("tiny", llm, llm_vocab_size=64, qformer_vocab_size=64, image_token_index=63)
    row = bench_cuda.measure(config, setup=setup, precision=precision, batch_size=2, device="cpu", warmup=0,
                             steps=1, prompt_tokens=8, target_tokens=2)
    assert row["flops_per_step"] > 0 and row["samples_per_s"] > 0 and row["mfu"] is None
    model = bench_cuda.build(config, torch.device("cpu"), bench_cuda.DTYPES[precision], setup)
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert dtypes == {torch.float32} and frozen == {bench_cuda.DTYPES[precision]}


def test_without_cuda_the_check_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", "--cuda", "--full-size"]) == 2
    assert "needs CUDA" in capsys.readouterr().err

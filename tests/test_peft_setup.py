"""PEFT setups: exactly the intended modules adapted, outputs unchanged at init, gradients only where trainable."""
import pytest
import torch
from PIL import Image

from qformer_peft.models import build_model, encode_images, forward, make_batch, unwrap
from qformer_peft.models.build import default_tokenizers
from qformer_peft.paper import QF_SUBLAYERS, SETUPS, paper_grid
from qformer_peft.peft_setup import GROUPS, apply_peft, lora_module_names, target_module_names, trainable_parameters

TOKENIZERS = default_tokenizers(["Question: what colour is the ball ? Options: (a) red (b) blue"])
PROMPTS = ["Question: what colour is the ball ?", "Options: (a) red (b) blue"]
TARGETS = ["(a) red", "blue"]
RUNS = [  # one run of each setup, plus AdaLoRA
    dict(setup="baseline"),
    dict(setup="qf-fft+llm-lora", llm_targets="all", rank=2),
    dict(setup="qf-lora", qf_sublayers="all", rank=4),
    dict(setup="qf-lora+llm-lora", qf_sublayers="all", llm_targets="all", rank=1),
    dict(setup="qf-lora", qf_sublayers="all", adalora={"total_step": 10}),
]


def tiny(llm, seed=0):
    return build_model("tiny", llm, qformer_tokenizer=TOKENIZERS[0], llm_tokenizer=TOKENIZERS[1], seed=seed)


def batch_for(bundle):
    pictures = [Image.new("RGB", (32, 32), (200, 30 * i, 60)) for i in range(2)]
    return make_batch(bundle, bundle.image_processor(pictures), PROMPTS, TARGETS)


def test_paper_grid_has_the_codes_33_runs():
    grid = paper_grid()
    assert len(grid) == 33
    count = lambda **kw: sum(all(run[k] == v for k, v in kw.items()) for run in grid)
    assert count(setup="baseline") == 1 and count(setup="qf-fft+llm-lora") == 12
    assert count(setup="qf-lora") == 16 and count(setup="qf-lora+llm-lora", llm_targets="all", qf_sublayers="all") == 4
    assert set(SETUPS) == {run["setup"] for run in grid}


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_target_names_are_exactly_the_protocol_modules(llm):
    model = tiny(llm).model  # 2 Q-Former layers, cross-attention on layer 0 only
    layer = "qformer.encoder.layer.{}.".format
    assert target_module_names(model, "self_attn") == [
        layer(i) + f"attention.attention.{p}" for i in (0, 1) for p in ("query", "value")]
    assert target_module_names(model, "cross_attn") == [
        layer(0) + s for s in ("crossattention.attention.query", "crossattention.attention.key",
                               "crossattention.attention.value", "crossattention.output.dense")]
    assert target_module_names(model, "ffn") == [
        layer(i) + s for i in (0, 1) for s in ("intermediate.dense", "output.dense", "intermediate_query.dense", "output_query.dense")]
    assert sorted(target_module_names(model, "all")) == sorted(
        sum((target_module_names(model, s) for s in ("self_attn", "cross_attn", "ffn")), []))
    attn, ffn = target_module_names(model, llm_targets="attn"), target_module_names(model, llm_targets="ffn")
    if llm == "t5":  # q, v of encoder self-, decoder self- and decoder cross-attention; gated FFN
        assert sorted(attn) == sorted(
            [f"language_model.encoder.block.{i}.layer.0.SelfAttention.{p}" for i in (0, 1) for p in "qv"]
            + [f"language_model.decoder.block.{i}.layer.0.SelfAttention.{p}" for i in (0, 1) for p in "qv"]
            + [f"language_model.decoder.block.{i}.layer.1.EncDecAttention.{p}" for i in (0, 1) for p in "qv"])
        assert sorted(ffn) == sorted(
            [f"language_model.encoder.block.{i}.layer.1.DenseReluDense.{w}" for i in (0, 1) for w in ("wi_0", "wi_1", "wo")]
            + [f"language_model.decoder.block.{i}.layer.2.DenseReluDense.{w}" for i in (0, 1) for w in ("wi_0", "wi_1", "wo")])
    else:
        assert attn == [f"language_model.model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
        assert ffn == [f"language_model.model.layers.{i}.mlp.{p}_proj" for i in (0, 1) for p in ("gate", "up", "down")]
    with pytest.raises(ValueError, match="unknown Q-Former sublayer set 'mlp'"):
        target_module_names(model, "mlp")


def test_cross_attention_targets_only_on_even_layers_at_full_size():
    model = build_model("flan-t5-xl", device="meta").model
    names = target_module_names(model, "cross_attn")
    assert len(names) == 6 * 4
    assert {int(n.split(".")[3]) for n in names} == {0, 2, 4, 6, 8, 10}
    assert len(target_module_names(model, "self_attn")) == 24 and len(target_module_names(model, "ffn")) == 48


@pytest.mark.parametrize("llm", ["t5", "llama"])
@pytest.mark.parametrize("run", RUNS, ids=lambda r: r["setup"] + ("-adalora" if "adalora" in r else ""))
def test_adapters_change_nothing_at_init_and_sit_exactly_on_the_targets(llm, run):
    bundle = tiny(llm)
    batch = batch_for(bundle)
    with torch.no_grad():
        before = bundle.model(**batch).logits
    torch.manual_seed(0)
    model = apply_peft(bundle.model, **run)
    with torch.no_grad():
        after = unwrap(model)(**batch).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    expected = target_module_names(bundle.model, run.get("qf_sublayers"), run.get("llm_targets"))
    assert lora_module_names(model) == expected


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_trainable_groups_follow_the_setup(llm):
    counts = {}
    for run in RUNS[:4]:
        bundle = tiny(llm)
        total_qformer = sum(p.numel() for p in bundle.model.qformer.parameters())
        counts[run["setup"]] = c = trainable_parameters(apply_peft(bundle.model, **run))
        assert list(c) == list(GROUPS) and c["other"] == 0
        assert c["query_tokens"] == 8 * 64 and c["projection"] == 64 * 64 + 64 and c["vit_layernorm"] == 2 * 64
        full = SETUPS[run["setup"]].qformer == "full"
        assert c["qformer_full"] == (total_qformer if full else 0)
        assert (c["qformer_lora"] > 0) == (not full)
        assert (c["llm_lora"] > 0) == (SETUPS[run["setup"]].llm == "lora")
    # same rank, same targets: qf-lora at r=4 has 4x the Q-Former LoRA of r=1 in qf-lora+llm-lora
    assert counts["qf-lora"]["qformer_lora"] == 4 * counts["qf-lora+llm-lora"]["qformer_lora"]


@pytest.mark.parametrize("llm", ["t5", "llama"])
@pytest.mark.parametrize("run", [RUNS[0], RUNS[3], RUNS[4]], ids=["baseline", "qf-lora+llm-lora", "adalora"])
def test_backward_reaches_exactly_the_trainable_parameters(llm, run):
    bundle = tiny(llm)
    batch = batch_for(bundle)
    model = apply_peft(bundle.model, **run)
    model.train()
    forward(model, batch).loss.backward()
    for name, param in unwrap(model).named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
        if name.startswith("vision_model.") and not name.startswith("vision_model.post_layernorm."):
            assert not param.requires_grad, name  # the ViT is always frozen
        if name.startswith("language_model.") and "lora_" not in name:
            assert not param.requires_grad, name
    grads = {n: p.grad for n, p in unwrap(model).named_parameters() if p.grad is not None}
    assert grads["query_tokens"].abs().sum() > 0 and grads["vision_model.post_layernorm.weight"].abs().sum() > 0


def test_adalora_loss_carries_the_orthogonality_penalty_and_cached_features_match():
    bundle = tiny("t5")
    batch = batch_for(bundle)
    model = apply_peft(bundle.model, "qf-lora", qf_sublayers="all", adalora={"total_step": 10})
    with torch.no_grad():
        plain = unwrap(model)(**batch).loss
        penalised = forward(model, batch).loss
        cached = forward(model, batch, image_embeds=encode_images(model, batch["pixel_values"])).loss
    assert penalised > plain  # forward goes through AdaLoraModel, which adds 0.5 * orth. penalty
    torch.testing.assert_close(cached, penalised, rtol=0, atol=1e-6)


def test_apply_peft_rejects_inconsistent_requests():
    model = tiny("t5").model
    with pytest.raises(ValueError, match="qf_sublayers must be given"):
        apply_peft(model, "qf-lora", rank=2)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        apply_peft(model, "qf-lora", qf_sublayers="all", rank=0)
    with pytest.raises(ValueError, match="llm_targets must be None"):
        apply_peft(model, "qf-lora", qf_sublayers="all", llm_targets="all", rank=2)
    with pytest.raises(ValueError, match="AdaLoRA is defined for setup 'qf-lora' only"):
        apply_peft(model, "baseline", adalora={"total_step": 10})
    with pytest.raises(ValueError, match="total_step"):
        apply_peft(model, "qf-lora", qf_sublayers="all", adalora={})
    with pytest.raises(ValueError, match="unknown setup 'lora'"):
        apply_peft(model, "lora")
    assert set(QF_SUBLAYERS) == {"self_attn", "cross_attn", "ffn", "all"}


def test_lora_alpha_sets_the_scaling():
    model = apply_peft(tiny("t5").model, "qf-lora", qf_sublayers="self_attn", rank=4, lora_alpha=16)
    layer = unwrap(model).qformer.encoder.layer[0].attention.attention.query
    assert layer.scaling["default"] == 16 / 4


def test_adalora_adapter_loaded_for_inference_scores_a_batch(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    bundle = tiny("t5")
    model = apply_peft(bundle.model, "qf-lora", qf_sublayers="all", adalora={"total_step": 10})
    with torch.no_grad():
        for name, p in unwrap(model).named_parameters():
            if "lora_E" in name:
                p.fill_(0.5)  # a non-zero update, so the reloaded adapter matters
    model.eval()
    batch = batch_for(bundle)
    expected = forward(unwrap(model), batch).loss  # the adapted model without the training-only penalty
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny("t5").model, tmp_path).eval()  # inference mode: no allocator
    assert torch.allclose(forward(reloaded, batch).loss, expected, atol=1e-5)

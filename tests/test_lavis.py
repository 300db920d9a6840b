"""LAVIS checkpoints: key renaming onto transformers, full and trainable-only state dicts, LoRA factors."""
import pytest
import torch

from qformer_peft.models import build_model, load_lavis_checkpoint
from qformer_peft.models.build import default_tokenizers
from qformer_peft.models.lavis import rename_key
from qformer_peft.peft_setup import apply_peft

TOKENIZERS = default_tokenizers()

# Names as LAVIS's blip2_t5_instruct / blip2_vicuna_instruct and EVA ViT save them -> transformers
GOLDEN = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.blocks.38.attn.qkv.weight": "vision_model.encoder.layers.38.self_attn.qkv.weight",
    "visual_encoder.blocks.3.attn.proj.bias": "vision_model.encoder.layers.3.self_attn.projection.bias",
    "visual_encoder.blocks.0.norm2.weight": "vision_model.encoder.layers.0.layer_norm2.weight",
    "visual_encoder.blocks.0.mlp.fc1.weight": "vision_model.encoder.layers.0.mlp.fc1.weight",
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "query_tokens": "query_tokens",
    "Qformer.bert.embeddings.word_embeddings.weight": "qformer.embeddings.word_embeddings.weight",
    "Qformer.bert.embeddings.LayerNorm.bias": "qformer.embeddings.layernorm.bias",
    "Qformer.bert.encoder.layer.0.attention.self.query.weight": "qformer.encoder.layer.0.attention.attention.query.weight",
    "Qformer.bert.encoder.layer.0.attention.output.LayerNorm.weight": "qformer.encoder.layer.0.attention.output.LayerNorm.weight",
    "Qformer.bert.encoder.layer.10.crossattention.self.key.bias": "qformer.encoder.layer.10.crossattention.attention.key.bias",
    "Qformer.bert.encoder.layer.11.output_query.dense.weight": "qformer.encoder.layer.11.output_query.dense.weight",
    "t5_proj.weight": "language_projection.weight",
    "llm_proj.bias": "language_projection.bias",
    "t5_model.encoder.block.0.layer.0.SelfAttention.q.weight": "language_model.encoder.block.0.layer.0.SelfAttention.q.weight",
    "llm_model.model.layers.31.mlp.down_proj.weight": "language_model.model.layers.31.mlp.down_proj.weight",
    # the paper's LoRA: loralib-style on the Q-Former, peft on the LLM
    "Qformer.bert.encoder.layer.1.attention.self.value.lora_B": "qformer.encoder.layer.1.attention.attention.value.lora_B.weight",
    "t5_model.base_model.model.decoder.block.2.layer.1.EncDecAttention.q.lora_A.default.weight":
        "language_model.decoder.block.2.layer.1.EncDecAttention.q.lora_A.weight",
    "Qformer.cls.predictions.bias": None,
    "temp": None,
}


def test_lavis_names_map_onto_transformers_names():
    assert {key: rename_key(key) for key in GOLDEN} == GOLDEN


def to_lavis(name: str, llm: str) -> str:
    """transformers name -> LAVIS name (the inverse of the table in models/lavis.py, written out here)."""
    head, prefix = ("t5_proj", "t5_model") if llm == "t5" else ("llm_proj", "llm_model")
    for ours, theirs in [("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
                         ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
                         ("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
                         ("vision_model.post_layernorm.", "ln_vision."), ("vision_model.encoder.layers.", "visual_encoder.blocks."),
                         (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."), (".self_attn.qkv.", ".attn.qkv."),
                         (".self_attn.projection.", ".attn.proj."), ("qformer.embeddings.layernorm.", "Qformer.bert.embeddings.LayerNorm."),
                         ("qformer.", "Qformer.bert."), (".attention.attention.", ".attention.self."),
                         (".crossattention.attention.", ".crossattention.self."),
                         ("language_projection.", head + "."), ("language_model.", prefix + ".")]:
        name = name.replace(ours, theirs)
    return name


def lavis_state_dict(model, llm):
    """The model's weights as LAVIS stores them: q/v biases separate, no key bias, position_ids buffer."""
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("self_attn.qkv.bias"):
            q, _, v = value.chunk(3)
            block = to_lavis(name, llm).removesuffix(".qkv.bias")
            state[block + ".q_bias"], state[block + ".v_bias"] = q.clone(), v.clone()
        else:
            state[to_lavis(name, llm)] = value.clone()
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    return state


def tiny(llm, seed):
    model = build_model("tiny", llm, qformer_tokenizer=TOKENIZERS[0], llm_tokenizer=TOKENIZERS[1], seed=seed).model
    with torch.no_grad():  # EVA's attention has no key bias: LAVIS checkpoints cannot carry one
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias.chunk(3)[1].zero_()
    return model


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_full_checkpoint_reproduces_the_model(tmp_path, llm):
    source, target = tiny(llm, seed=1), tiny(llm, seed=2)
    state = lavis_state_dict(source, llm)
    state["Qformer.cls.predictions.bias"] = torch.zeros(3)  # BLIP-2 pretraining head: no place in InstructBLIP
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint_best.pth")
    report = load_lavis_checkpoint(target, tmp_path / "checkpoint_best.pth")
    assert report.unmatched == ["Qformer.cls.predictions.bias"] and report.shape_mismatch == []
    assert report.missing == []
    expected = source.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in target.state_dict().items())
    assert "1 checkpoint keys unmatched: Qformer.cls.predictions.bias" in report.summary()


def test_trainable_only_checkpoint_loads_what_it_has(tmp_path):
    source, target = tiny("t5", seed=1), tiny("t5", seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    trainable = {k: v for k, v in lavis_state_dict(source, "t5").items()
                 if k.startswith(("Qformer.", "query_tokens", "t5_proj.", "ln_vision."))}
    torch.save(trainable, tmp_path / "bare.pth")  # a bare state dict, without {'model': ...}
    report = load_lavis_checkpoint(target, tmp_path / "bare.pth")
    assert report.unmatched == [] and len(report.loaded) == len(trainable) - 1  # position_ids is dropped
    assert all(n.startswith(("vision_model.embeddings", "vision_model.encoder", "language_model.")) for n in report.missing)
    after, wanted = target.state_dict(), source.state_dict()
    for name in after:
        assert torch.equal(after[name], wanted[name] if name in report.loaded else before[name]), name


def test_lora_factors_land_on_the_peft_adapters_and_wrong_ranks_are_reported(tmp_path):
    model = apply_peft(tiny("t5", seed=0), "qf-lora+llm-lora", qf_sublayers="all", llm_targets="all", rank=2)
    a = torch.randn(2, 64)  # [r, in]
    b = torch.randn(64, 2)  # [out, r]
    state = {
        "Qformer.bert.encoder.layer.0.attention.self.query.lora_A": a,
        "t5_model.base_model.model.encoder.block.1.layer.0.SelfAttention.v.lora_B.default.weight": b,
        "Qformer.bert.encoder.layer.1.attention.self.value.lora_A": torch.zeros(4, 64),  # rank 4 != 2
        "Qformer.bert.encoder.layer.1.attention.self.key.lora_A": torch.zeros(2, 64),  # key is never adapted
    }
    torch.save({"model": state}, tmp_path / "lora.pth")
    report = load_lavis_checkpoint(model, tmp_path / "lora.pth")
    params = dict(model.named_parameters())
    assert torch.equal(params["base_model.model.qformer.encoder.layer.0.attention.attention.query.lora_A.default.weight"], a)
    assert torch.equal(params["base_model.model.language_model.encoder.block.1.layer.0.SelfAttention.v.lora_B.default.weight"], b)
    assert report.shape_mismatch == [("Qformer.bert.encoder.layer.1.attention.self.value.lora_A", (4, 64), (2, 64))]
    assert report.unmatched == ["Qformer.bert.encoder.layer.1.attention.self.key.lora_A"]


def test_unreadable_checkpoint_names_the_file(tmp_path):
    torch.save([1, 2, 3], tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="odd.pth: expected a state dict"):
        load_lavis_checkpoint(tiny("t5", seed=0), tmp_path / "odd.pth")

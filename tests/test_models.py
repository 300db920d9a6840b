"""Models: presets, offline tokenizers, batch layout, cached-feature forward, save/load, meta builds."""
import os

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from qformer_peft.models import build_config, build_model, encode_images, forward, load_bundle, make_batch, word_tokenizer
from qformer_peft.models.build import default_tokenizers
from qformer_peft.models.inputs import IGNORE

WORDS = ["Question: what colour is the ball ? Options: (a) red (b) blue Answer: Red Blue Context: {} grass sky"]


@pytest.fixture(scope="module")
def tokenizers():
    return default_tokenizers(WORDS)


@pytest.fixture(scope="module", params=["t5", "llama"])
def bundle(request, tokenizers):
    qf, llm = tokenizers
    return build_model("tiny", request.param, qformer_tokenizer=qf, llm_tokenizer=llm, seed=0)


def images(n, size=40):
    return [Image.new("RGB", (size + 7 * i, size), (40 * i, 200 - 30 * i, 90)) for i in range(n)]


# --- tokenizers -------------------------------------------------------------------------------------

def test_word_tokenizer_splits_punctuation_keeps_case_and_fixes_special_ids(tokenizers):
    qf, llm = tokenizers
    ids = llm("Options: (a) Red.", add_special_tokens=False)["input_ids"]
    assert llm.convert_ids_to_tokens(ids) == ["Options", ":", "(", "a", ")", "Red", "."]
    assert llm.convert_tokens_to_ids("Red") != llm.convert_tokens_to_ids("red")
    assert llm("zebra", add_special_tokens=False)["input_ids"] == [llm.unk_token_id]
    assert (llm.pad_token_id, llm.eos_token_id, llm.unk_token_id, llm.bos_token_id) == (0, 1, 2, 3)
    assert llm.convert_tokens_to_ids("<image>") == 4
    assert (qf.pad_token_id, qf.unk_token_id, qf.cls_token_id, qf.sep_token_id) == (0, 1, 2, 3)
    assert qf.convert_tokens_to_ids("<image>") == qf.unk_token_id  # the image placeholder is the LLM's only
    with pytest.raises(ValueError, match="role"):
        word_tokenizer(["a"], role="bert")


def test_word_tokenizer_round_trips_through_save_pretrained(tmp_path, tokenizers):
    _, llm = tokenizers
    llm.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "<image> Context: {grass} Question: what is (b) ?"
    assert again(text, add_special_tokens=False)["input_ids"] == llm(text, add_special_tokens=False)["input_ids"]
    assert again.get_vocab() == llm.get_vocab()


# --- configs and builds -----------------------------------------------------------------------------

def test_full_size_configs_match_the_paper_models():
    t5 = build_config("flan-t5-xl")
    v, q = t5.vision_config, t5.qformer_config
    assert (v.hidden_size, v.num_hidden_layers, v.intermediate_size, v.image_size, v.patch_size) == (1408, 39, 6144, 224, 14)
    assert v.initializer_range == 0.02
    assert (q.hidden_size, q.num_hidden_layers, q.cross_attention_frequency, q.encoder_hidden_size) == (768, 12, 2, 1408)
    assert q.vocab_size == 30523 and t5.num_query_tokens == 32  # BERT + LAVIS's [DEC] token
    tc = t5.text_config
    assert (tc.d_model, tc.num_layers, tc.num_heads, tc.d_ff, tc.is_gated_act) == (2048, 24, 32, 5120, True)
    assert not t5.use_decoder_only_language_model
    lc = build_config("vicuna-7b").text_config
    assert (lc.hidden_size, lc.num_hidden_layers, lc.intermediate_size, lc.model_type) == (4096, 32, 11008, "llama")
    with pytest.raises(ValueError, match="t5 model"):
        build_config("flan-t5-xl", "llama")
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny, mini"):
        build_config("huge", "t5")
    with pytest.raises(ValueError, match="needs llm="):
        build_model("tiny")


def test_build_is_seeded_with_blip2_query_tokens_and_a_live_vision_tower(tokenizers):
    qf, llm = tokenizers
    a = build_model("tiny", "t5", qformer_tokenizer=qf, llm_tokenizer=llm, seed=3).model
    b = build_model("tiny", "t5", qformer_tokenizer=qf, llm_tokenizer=llm, seed=3).model
    c = build_model("tiny", "t5", qformer_tokenizer=qf, llm_tokenizer=llm, seed=4).model
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["query_tokens"], sc["query_tokens"])
    mini = build_model("mini", "t5").model
    queries = mini.query_tokens.detach()  # [1, 16, 64]
    assert 0.017 < queries.std().item() < 0.023 and abs(queries.mean().item()) < 0.005
    # transformers' default initializer_range (1e-10) would make this ~1e-10
    pixels = torch.randn(2, 3, 32, 32)
    assert encode_images(a, pixels).std().item() > 0.1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_full_size_builds_on_meta_without_memory():
    before = _rss_bytes()
    bundle = build_model("vicuna-7b", device="meta")
    grown = _rss_bytes() - before
    params = list(bundle.model.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) > 7.5e9  # ~30 GB in float32 if it were real
    assert grown < 300 * 2**20
    assert bundle.llm_kind == "llama" and bundle.llm_tokenizer is None


# --- batches --------------------------------------------------------------------------------------

def test_token_ids_are_cached_per_tokenizer_and_equal_a_fresh_tokenization(tokenizers):
    from qformer_peft.models import inputs

    qf, _ = tokenizers
    calls = []

    class Counting:  # the tokenizer, counting the texts it is asked to tokenize
        def __call__(self, texts, **kw):
            calls.append(list(texts))
            return qf(texts, **kw)

    tok = Counting()
    texts = ["Question: what colour is the ball ?", "red", "Question: what colour is the ball ?"]
    first = inputs.token_ids(tok, texts)
    assert first == qf(texts, add_special_tokens=False)["input_ids"]
    assert calls == [texts[:2]]                       # each distinct text once
    assert inputs.token_ids(tok, ["red", texts[0], "blue"]) == qf(["red", texts[0], "blue"],
                                                               add_special_tokens=False)["input_ids"]
    assert calls[1:] == [["blue"]]                    # only the new text
    assert inputs.token_ids(Counting(), ["red"]) == qf(["red"], add_special_tokens=False)["input_ids"]
    assert len(calls) == 3                            # another tokenizer object has its own cache


def test_make_batch_layout_and_left_truncation(bundle):
    qf, llm = bundle.qformer_tokenizer, bundle.llm_tokenizer
    q = bundle.model.config.num_query_tokens
    img = llm.convert_tokens_to_ids("<image>")
    prompt = "Context: {grass} Question: what colour is the ball ?"  # 12 tokens
    batch = make_batch(bundle, None, [prompt, "Question: what ?"], ["(a) red", "blue"], max_prompt_tokens=6)
    tail = llm("the ball ?", add_special_tokens=False)["input_ids"]
    assert batch["qformer_input_ids"][0].tolist() == [qf.cls_token_id, *qf("is the ball ?", add_special_tokens=False)["input_ids"], qf.sep_token_id]
    target = llm("(a) red", add_special_tokens=False)["input_ids"] + [llm.eos_token_id]
    first = batch["input_ids"][0].tolist()
    assert first[:q] == [img] * q
    colour = llm("colour is", add_special_tokens=False)["input_ids"]
    if bundle.llm_kind == "t5":
        assert first == [img] * q + colour + tail + [llm.eos_token_id]  # 5 prompt tokens + </s> = 6
        assert batch["labels"][0].tolist() == target
        assert batch["labels"][1].tolist()[-1] == IGNORE and batch["decoder_attention_mask"][1].tolist()[-1] == 0
    else:
        assert first == [img] * q + [llm.bos_token_id] + colour + tail + target  # <s> + 5 prompt tokens = 6
        labels = batch["labels"][0].tolist()
        assert labels == [IGNORE] * (q + 6) + target
        # right padding: the shorter sample is padded at the end, with no loss there
        assert batch["attention_mask"][1].tolist()[-1] == 0 and batch["labels"][1].tolist()[-1] == IGNORE
    assert batch["attention_mask"][0].all()


def _sample_nll(logits, labels, decoder_only):
    """Summed token NLL per sample: [B]."""
    if decoder_only:
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return nll.sum(-1)


def test_padding_gives_each_sample_its_own_loss(bundle):
    pixels = bundle.image_processor(images(3))
    prompts = ["Question: what colour is the ball ?", "Question: what ?", "Context: {sky} Answer:"]
    targets = ["(a) red", "(b) blue blue blue", "Red"]
    decoder_only = bundle.llm_kind == "llama"
    with torch.no_grad():
        batch = make_batch(bundle, pixels, prompts, targets)
        together = _sample_nll(bundle.model(**batch).logits, batch["labels"], decoder_only)
        for i in range(3):
            alone = make_batch(bundle, pixels[i:i + 1], prompts[i:i + 1], targets[i:i + 1])
            nll = _sample_nll(bundle.model(**alone).logits, alone["labels"], decoder_only)
            torch.testing.assert_close(together[i], nll[0], rtol=1e-5, atol=1e-5)


def test_cached_vit_features_give_the_pixel_loss_and_logits(bundle):
    pixels = bundle.image_processor(images(2))
    batch = make_batch(bundle, pixels, ["Question: what colour ?", "Options: (a) red"], ["(a) red", "blue"])
    with torch.no_grad():
        direct = bundle.model(**batch)
        cached = forward(bundle.model, batch, image_embeds=encode_images(bundle.model, pixels))
    torch.testing.assert_close(cached.loss, direct.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached.logits, direct.logits, rtol=0, atol=1e-5)
    # the post-ViT LayerNorm runs on the cached features: changing it changes the output
    with torch.no_grad():
        bundle.model.vision_model.post_layernorm.bias.add_(0.5)
        shifted = forward(bundle.model, batch, image_embeds=encode_images(bundle.model, pixels))
        bundle.model.vision_model.post_layernorm.bias.sub_(0.5)
    assert not torch.allclose(shifted.logits, direct.logits)


# --- images, save and load ------------------------------------------------------------------------

def test_image_processor_resizes_and_normalises_like_blip(bundle):
    white = Image.new("RGB", (50, 30), (255, 255, 255))
    pixels = bundle.image_processor([white, *images(1)])
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(pixels[0, :, 5, 5], (1 - mean) / std, rtol=0, atol=1e-4)


def test_bundle_save_and_load_round_trip(tmp_path, bundle, capfd):
    from transformers.utils import logging as hf_logging

    directory = bundle.save(tmp_path / "ckpt")
    assert (directory / "model.safetensors").exists() and (directory / "qformer_tokenizer").is_dir()
    capfd.readouterr()
    again = load_bundle(directory)
    # a local checkpoint loads without transformers' progress bar (it filled every notebook of the report)
    assert "Loading weights" not in "".join(capfd.readouterr()) and hf_logging.is_progress_bar_enabled()
    assert again.llm_kind == bundle.llm_kind
    pictures = images(2)
    pixels = bundle.image_processor(pictures)
    assert torch.equal(again.image_processor(pictures), pixels)
    prompts, targets = ["Question: what colour is the ball ?", "Context: {grass}"], ["(a) red", "blue"]
    batch = make_batch(bundle, pixels, prompts, targets)
    batch_again = make_batch(again, pixels, prompts, targets)
    assert all(torch.equal(batch[k], batch_again[k]) for k in batch)
    with torch.no_grad():
        assert torch.equal(bundle.model(**batch).logits, again.model(**batch_again).logits)


def test_load_bundle_refuses_a_missing_directory_instead_of_asking_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bundle(str(tmp_path / "no" / "such" / "checkpoint"))


# --- the model-size axis (presets.SCALED_FROM) -------------------------------------------------------

def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("root", ["tiny", "mini"])
@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_wide_and_deep_presets_double_what_sits_above_the_same_vision_tower(root, llm):
    """Counted on the meta device with the synthetic world's vocabulary. Deep adds exactly one more copy of the
    base's Q-Former layers and LLM blocks (T5's relative-position bias lives in the first block only); wide keeps
    the head size; the vision tower is the base's; and the profile's scaling models are ascending by count."""
    from qformer_peft import grid
    from qformer_peft.data import synthetic
    from qformer_peft.models import presets

    qf, tok = default_tokenizers(list(synthetic.vocabulary()))
    m = {name: build_model(name, llm, qformer_tokenizer=qf, llm_tokenizer=tok, device="meta").model
         for name in (root, f"{root}-deep", f"{root}-wide")}
    base, deep, wide = m[root], m[f"{root}-deep"], m[f"{root}-wide"]
    for other in (deep, wide):
        assert other.config.vision_config.to_dict() == base.config.vision_config.to_dict()
    assert presets.vision_signature(f"{root}-wide") == presets.vision_signature(root)
    blocks = (base.language_model.encoder.block, base.language_model.decoder.block) if llm == "t5" else \
        (base.language_model.model.layers,)
    bias = sum(p.numel() for n, p in base.language_model.named_parameters() if "relative_attention_bias" in n)
    added = _count(base.qformer.encoder.layer) + sum(_count(b) for b in blocks) - bias
    assert _count(deep) - _count(base) == added
    assert deep.config.qformer_config.num_hidden_layers == 2 * base.config.qformer_config.num_hidden_layers
    for cfg in (wide.config.qformer_config, wide.config.text_config):
        heads = getattr(cfg, "num_attention_heads", None) or cfg.num_heads
        hidden = getattr(cfg, "d_model", None) or cfg.hidden_size
        assert hidden // heads == 16
    assert _count(base) < _count(deep) < _count(wide)
    option = grid.PROFILES["mini" if root == "mini" else "smoke"].model_scaling_models["t5"]
    names = [p.rsplit("/", 1)[-1].removesuffix("-t5") for p in option]   # mini: built checkpoints; smoke: presets
    assert sorted(names) == [f"{root}-deep", f"{root}-wide"] and names == sorted(names, key=lambda n: _count(m[n]))

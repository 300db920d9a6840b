"""Evaluation: ranking picks the lowest summed NLL, batching changes nothing, and the metrics match
their reference implementations."""
import math

import pytest
import torch

from qformer_peft.evaluate import (Example, bleu4, candidate_nll, candidate_nll_loop, cider, evaluate, generate,
                                   normalize_answer, scienceqa_categories, vqa_accuracy, vqa_score)
from qformer_peft.models.build import build_model, default_tokenizers
from qformer_peft.models.inputs import encode_images

WORDS = "<Image> Question: what color is it ? Options: ( a ) b c d red blue green dark . Short answer:".split()
PROMPTS = ["<Image> Question: what color is it ? Options: (a) red (b) blue (c) dark green. Short answer:",
           "<Image> Question: what is it ? Options: (a) blue (b) red green. Short answer:"]
CANDIDATES = [["(a) red", "(b) blue", "(c) dark green"], ["(a) blue", "(b) red green"]]


@pytest.fixture(scope="module", params=["t5", "llama"])
def bundle(request):
    qtok, ltok = default_tokenizers(WORDS)
    b = build_model("tiny", request.param, qformer_tokenizer=qtok, llm_tokenizer=ltok, seed=3)
    b.model.eval()
    return b


def _embeds(bundle, n=2, seed=0):
    pixels = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return encode_images(bundle.model, pixels)


def test_batched_ranking_equals_the_per_candidate_loop(bundle):
    embeds = _embeds(bundle)
    calls = []  # batch sizes seen by the Q-Former and (T5) the LLM encoder
    parts = [bundle.model.qformer] + ([bundle.model.language_model.get_encoder()] if bundle.llm_kind == "t5" else [])
    hooks = [m.register_forward_hook(lambda mod, args, kwargs, out: calls.append(len(out[0])), with_kwargs=True)
             for m in parts]
    try:
        batched = candidate_nll(bundle, embeds, PROMPTS, CANDIDATES)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [2] * len(parts)  # once per question (2), not once per candidate (5)
    looped = candidate_nll_loop(bundle, embeds, PROMPTS, CANDIDATES)
    assert [len(b) for b in batched] == [3, 2]
    for b, lp in zip(batched, looped):
        torch.testing.assert_close(b, lp, rtol=1e-5, atol=1e-5)
    assert len({round(float(v), 3) for v in batched[0]}) == 3  # a random model does tell them apart


def test_ranking_sums_token_nll_and_picks_the_lowest(bundle):
    """With a zero LM head every token costs log|V|: the summed NLL is (#target tokens) x log|V|, so the
    shortest candidate wins (a mean over tokens would tie them)."""
    lm_head = bundle.model.language_model.lm_head
    saved = lm_head.weight.detach().clone()
    try:
        with torch.no_grad():
            lm_head.weight.zero_()
        embeds = _embeds(bundle, 1)
        cands = ["(b) red green", "(a) red", "(c) dark green blue"]
        nll = candidate_nll(bundle, embeds, PROMPTS[:1], [cands])[0]
        # "(", letter, ")", words..., then </s> for T5; LLaMA without </s>, as the public Vicuna code scores them
        n_tokens = torch.tensor([5.0, 4.0, 6.0]) + (1 if bundle.llm_kind == "t5" else 0)
        torch.testing.assert_close(nll, n_tokens * math.log(lm_head.weight.shape[0]))
        ex = Example(id="q", image="unused", prompt=PROMPTS[0], target=cands[1], candidates=tuple(cands), answer=1)
        metrics, preds = evaluate(bundle, [ex], "iconqa", lambda chunk: embeds)
        assert preds[0]["pred"] == 1 and preds[0]["correct"] and metrics["accuracy"] == 100.0
    finally:
        with torch.no_grad():
            lm_head.weight.copy_(saved)


def test_generation_returns_only_new_text(bundle):
    """A hook makes "red" the only likely token: every step emits it, the prompt is never echoed."""
    red = bundle.llm_tokenizer.convert_tokens_to_ids("red")

    def favour_red(module, inputs, output):
        output = output.clone()
        output[..., red] += 100.0
        return output

    handle = bundle.model.language_model.lm_head.register_forward_hook(favour_red)
    try:
        texts = generate(bundle, _embeds(bundle), PROMPTS, max_new_tokens=3, num_beams=2)
    finally:
        handle.remove()
    assert texts == ["red red red", "red red red"]


def test_scienceqa_categories_follow_the_official_evaluator():
    metas = [
        {"subject": "natural science", "grade": "grade2", "has_hint": True, "has_image": True},
        {"subject": "natural science", "grade": "grade8", "has_hint": False, "has_image": True},
        {"subject": "social science", "grade": "grade11", "has_hint": True, "has_image": False},
        {"subject": "language science", "grade": "grade5", "has_hint": False, "has_image": False},
    ]
    cats = scienceqa_categories(metas, [True, False, True, False])
    assert cats == {"NAT": 50.0, "SOC": 100.0, "LAN": 0.0, "TXT": 100.0, "IMG": 50.0, "NO": 0.0,
                    "G1-6": 50.0, "G7-12": 50.0, "Avg": 50.0}
    # the IMG subset has no item without context: that category is None, not 0
    assert scienceqa_categories(metas[:2], [True, True])["NO"] is None


def test_vqa_accuracy_with_the_official_normalisation():
    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer("the Red, ball!") == "red ball"
    assert normalize_answer("dont know") == "don't know"
    humans = ["red"] * 3 + ["blue"] * 7
    assert vqa_score("Red", humans) == pytest.approx(0.9)  # 3 of 10: 0.9 after leave-one-out averaging
    assert vqa_score("a blue", humans) == 1.0
    assert vqa_score("green", humans) == 0.0
    assert vqa_score("red", ["red"] * 2 + ["x"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy(["red", "green"], [humans, humans]) == pytest.approx(45.0)
    with pytest.raises(ValueError, match="2 predictions but 1 answer lists"):
        vqa_accuracy(["a", "b"], [humans])


def test_cider_and_bleu4_match_pycocoevalcap():
    # reference values computed with pycocoevalcap 1.2's CiderScorer / BleuScorer on these strings
    cands = ["a dog runs on the grass", "a red ball", "two cats sit"]
    refs = [["a dog runs on grass", "the dog is running on the green grass", "a brown dog runs"],
            ["a red ball on the floor", "red ball", "a small red ball"],
            ["two cats sitting on a sofa", "cats sit together", "two small cats sit on a mat"]]
    assert cider(cands, refs) == pytest.approx(326.63154102381463, abs=1e-9)
    assert bleu4(cands, refs) == pytest.approx(62.04032392936911, abs=1e-9)
    assert bleu4(["A dog runs, fast."], [["a dog runs fast"]]) == pytest.approx(100.0)
    assert cider([], []) is None

"""Embedded base models (pretrain/base.py, vision.py, stages.py, quality.py) on the tiny preset and tiny data.

One real build is shared by the module: it is trained once in memory (train_base) and once through the
cache (ensure_base) on a copy of the data without the four benchmarks, and the two must agree bit for bit.
"""
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from qformer_peft.data import synthetic
from qformer_peft.data.synthetic_world import patch_labels
from qformer_peft.models import load_bundle, make_batch
from qformer_peft.pretrain import adaptability, base, build_report, quality, stages
from qformer_peft.pretrain import vision as vision_stage
from qformer_peft.pretrain import heldin as heldin_mod
from qformer_peft.pretrain import recipe as recipes
from qformer_peft.pretrain import cli as base_cli
from qformer_peft.models.build import build_model, default_tokenizers

RECIPE = recipes.RECIPES["tiny"].replace(eval_limit=12)


@pytest.fixture(scope="module")
def data(world):
    """The tiny world (conftest.py); heldin_only is the same without the benchmarks."""
    return world


@pytest.fixture(scope="module")
def built(heldin_only, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = base.ensure_base("tiny", "t5", 0, heldin_only, cache, recipe=RECIPE, log=None)
    return path, cache


@pytest.fixture(scope="module")
def in_memory(data, tmp_path_factory):
    bundle, report, _, _ = base.train_base("tiny", "t5", 0, data, tmp_path_factory.mktemp("cache2"), recipe=RECIPE,
                                           log=None)
    return bundle, report


def logits_of(bundle):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    batch = make_batch(bundle, pixels, ["<Image> Question: What color is the circle? Answer:"] * 2, ["red", "blue"])
    with torch.no_grad():
        return bundle.model(**batch).logits


# --- the build ----------------------------------------------------------------------------------------

def test_build_is_deterministic_reloads_to_identical_logits_and_never_needs_the_benchmarks(built, in_memory):
    path, _ = built
    bundle, _ = in_memory  # trained on the full world, in another cache: stage 1 trained again
    loaded = load_bundle(path)
    saved, fresh = loaded.model.state_dict(), bundle.model.state_dict()
    assert saved.keys() == fresh.keys()
    assert [k for k in saved if not torch.equal(saved[k], fresh[k])] == []
    assert torch.equal(logits_of(loaded), logits_of(bundle))
    assert loaded.llm_tokenizer.get_vocab() == bundle.llm_tokenizer.get_vocab()
    report = base.runs.read_json(path / "build_report.json")
    assert report["quality"]["zero_shot_iconqa"]["skipped"].endswith("iconqa absent")


def test_stage3_leaves_the_stage1_encoder_bit_identical_and_trains_what_sits_above_it(built, heldin_only):
    path, cache = built
    (vision_file,) = (cache / "vision").glob("*/vision.safetensors")
    stage1 = load_file(vision_file)
    model = load_bundle(path).model
    vision = model.vision_model.state_dict()
    frozen = [k for k in stage1 if not k.startswith("post_layernorm.")]
    assert frozen and all(torch.equal(vision[k], stage1[k]) for k in frozen)
    assert not torch.equal(vision["post_layernorm.weight"], stage1["post_layernorm.weight"])  # trainable, as in LAVIS
    qf, llm = default_tokenizers(base.heldin_vocabulary(heldin_only))
    untrained = build_model("tiny", "t5", qformer_tokenizer=qf, llm_tokenizer=llm, seed=0).model
    key = "encoder.layer.0.crossattention.attention.query.weight"
    assert not torch.equal(model.qformer.state_dict()[key], untrained.qformer.state_dict()[key])


def test_build_report_holds_every_stage_the_controls_and_the_times(built):
    path, _ = built
    report = base.runs.read_json(path / "build_report.json")
    assert set(report["stages"]) == {"stage1_vision", "features", "stage3_qformer"}  # no text stage by default
    assert {"shape_acc", "color_acc", "size_acc", "row_acc", "col_acc", "count_acc", "shape_object_acc"} <= set(
        report["stages"]["stage1_vision"]["quality"])
    stage3 = report["stages"]["stage3_qformer"]
    assert stage3["llm"] == "trained" and stage3["trainable"]["llm"] > 0
    assert stage3["n_extra"] > 0 and stage3["n_multiple_choice"] > 0
    q = report["quality"]
    assert q["heldin"]["n_vqa"] + q["heldin"]["n_caption"] == RECIPE.eval_limit
    assert {"heldin", "heldin_shuffled", "heldin_chance"} <= set(q)
    assert set(report["time_s"]) == {"stage1_vision", "features", "stage3_qformer", "quality"}
    md = (path / "build_report.md").read_text()
    assert "shuffled images" in md and "Stage 1" in md and "no text stage" in md


def test_adaptability_scores_the_same_test_items_before_and_after_with_a_paired_error(built, data, tmp_path):
    path, cache = built
    a = adaptability.adaptability(path, data, tmp_path / "adapt", cache_dir=cache / "features", train_limit=16,
                                  epochs=1, val_limit=8, heldin_limit=6, seed=0, lr=3e-3)
    assert a["test_n"] == 8 and a["steps"] >= 1 and a["lr"] == 3e-3  # the check's own rate, not the grid's
    assert a["test_gain"] == pytest.approx(a["test_after"] - a["test_before"], abs=0.02)
    assert 0 <= a["test_gain_se"] <= 100
    report = base.runs.read_json(path / "build_report.json")
    md = build_report.report_markdown({**report, "quality": {**report["quality"], "adaptability": a}})
    assert f"held-out test {a['test_before']} -> {a['test_after']}" in md and "steps at lr 0.003 on" in md


def test_paired_gain_is_the_mean_item_difference_with_its_standard_error():
    before = {"a": True, "b": False, "c": False, "d": True}
    after = {"a": True, "b": True, "c": False, "d": False}
    assert adaptability.paired_gain(before, after) == {"gain": 0.0, "se": 40.82, "n": 4}  # d = 0, +1, 0, -1
    assert adaptability.paired_gain(before, {**after, "b": True, "d": True}) == {"gain": 25.0, "se": 25.0, "n": 4}
    with pytest.raises(ValueError, match="same items"):
        adaptability.paired_gain(before, {"a": True})


# --- the cache ------------------------------------------------------------------------------------------

def test_ensure_base_reuses_a_current_build_and_rebuilds_on_a_new_seed_data_or_recipe(built, heldin_only, monkeypatch,
                                                                                        tmp_path):
    path, cache = built
    calls = []
    monkeypatch.setattr(base, "build_base", lambda *a, **k: calls.append((a, k)))
    assert base.ensure_base("tiny", "t5", 0, heldin_only, cache, recipe=RECIPE, log=None) == path
    assert calls == []
    assert base.ensure_base("tiny", "t5", 1, heldin_only, cache, recipe=RECIPE, log=None) == cache / "tiny-t5-s1"
    assert len(calls) == 1
    base.ensure_base("tiny", "t5", 0, heldin_only, cache, recipe=RECIPE.replace(qformer_epochs=2), log=None)
    assert len(calls) == 2
    changed = tmp_path / "data"
    shutil.copytree(heldin_only, changed)
    with open(changed / "heldin" / "text_train.txt", "a") as f:
        f.write("A dog is a mammal.\n")
    assert base.data_version(changed) != base.data_version(heldin_only)
    base.ensure_base("tiny", "t5", 0, changed, cache, recipe=RECIPE, log=None)
    assert len(calls) == 3


def test_data_version_ignores_the_benchmarks(data, heldin_only):
    assert base.data_version(data) == base.data_version(heldin_only)


def test_base_path_names_match_the_grid_and_the_cache_location(monkeypatch, tmp_path):
    assert base.base_path("mini", "t5", 0, tmp_path) == tmp_path / "mini-t5"
    assert base.base_path("mini", "llama", 3, tmp_path) == tmp_path / "mini-llama-s3"
    monkeypatch.setenv("QFP_CACHE", str(tmp_path / "c"))
    assert base.default_cache_dir() == tmp_path / "c" / "base"
    with pytest.raises(ValueError, match="llm must be one of"):
        base.base_name("mini", "gpt")


def test_recipe_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown recipe field.*qformer_epoch\\b"):
        recipes.recipe_for("mini", {"qformer_epoch": 3})
    with pytest.raises(ValueError, match="needs a text stage"):
        recipes.recipe_for("mini", {"text_epochs": 0, "stage3_llm": "frozen"})
    with pytest.raises(ValueError, match="no base-model recipe for preset 'flan-t5-xl'"):
        recipes.recipe_for("flan-t5-xl")


# --- the stages' pieces ----------------------------------------------------------------------------------

def test_mirrored_labels_are_the_labels_of_the_mirrored_scene(data):
    heldin = heldin_mod.read_heldin(data)
    scenes = [sc for _, sc in heldin.scenes["train"][:8]]
    labels = vision_stage.dense_labels(scenes, "mini")
    grid = patch_labels(scenes[0], patch=8)
    assert torch.equal(labels["shape"][0], torch.as_tensor(grid["shape"]).flatten())
    flipped = vision_stage.flip_labels(labels)
    again = vision_stage.flip_labels(flipped)
    assert all(torch.equal(again[k], labels[k]) for k in labels)
    on = labels["col"] >= 0
    assert torch.equal(flipped["col"].view(-1, 8, 8).flip(2).view(labels["col"].shape)[on], 2 - labels["col"][on])
    # every shape of the world is left-right symmetric: the labels of the mirrored scene, up to rasterisation
    mirrored = [{**sc, "objects": [{**o, "cx": sc["size"] - o["cx"]} for o in sc["objects"]]} for sc in scenes]
    direct = vision_stage.dense_labels(mirrored, "mini")
    for k in ("shape", "color", "size"):
        assert (flipped[k] == direct[k]).float().mean() > 0.97, k
    close = (flipped["geometry"] - direct["geometry"]).abs().max(-1).values < 1e-6
    assert close.float().mean() > 0.97


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_text_stage_lowers_held_out_perplexity_and_leaves_the_llm_frozen(data, llm):
    heldin = heldin_mod.read_heldin(data)
    bundle = build_model("tiny", llm, seed=0, qformer_tokenizer=default_tokenizers(base.heldin_vocabulary(data))[0],
                         llm_tokenizer=default_tokenizers(base.heldin_vocabulary(data))[1])
    lm = bundle.model.language_model
    report = stages.train_language(lm, bundle.llm_tokenizer, llm, heldin, epochs=1, batch_size=32, lr=3e-3,
                                        seed=0, mc_fraction=0.25, extra_per_picture=1, log=None)
    q = report["quality"]
    assert q["perplexity"] < q["perplexity_before"] / 4
    assert report["objective"] == ("prefix LM" if llm == "t5" else "causal LM")
    assert not any(p.requires_grad for p in lm.parameters())


def test_a_llama_build_reloads_to_identical_logits(heldin_only, tmp_path):
    recipe = RECIPE.replace(text_epochs=1, stage3_llm="frozen")  # the other stage-2 choice, on the other LLM
    bundle, report, _, _ = base.train_base("tiny", "llama", 0, heldin_only, tmp_path, recipe=recipe, log=None)
    assert report["stages"]["stage3_qformer"]["trainable"]["llm"] == 0
    bundle.save(tmp_path / "ckpt")
    assert torch.equal(logits_of(load_bundle(tmp_path / "ckpt")), logits_of(bundle))


def test_lm_batches_put_the_loss_where_each_objective_wants_it():
    _, tok = default_tokenizers(["the circle is red"])
    t5 = stages.lm_batch(tok, "t5", [("the circle", "is red")])
    assert tok.convert_ids_to_tokens(t5["input_ids"][0].tolist()) == ["the", "circle", "</s>"]
    assert tok.convert_ids_to_tokens(t5["labels"][0].tolist()) == ["is", "red", "</s>"]
    llama = stages.lm_batch(tok, "llama", [("the circle", "is red")])
    assert tok.convert_ids_to_tokens(llama["input_ids"][0].tolist()) == ["<s>", "the", "circle", "is", "red", "</s>"]
    assert llama["labels"][0].tolist()[0] == -100 and (llama["labels"][0, 1:] == llama["input_ids"][0, 1:]).all()


def test_shuffled_control_never_keeps_a_picture_and_chance_uses_the_training_answers(data):
    images = [f"img{i}" for i in range(7)] * 3
    swap = quality.derangement(images, seed=0)
    assert sorted(swap) == sorted(set(images)) and all(a != b for a, b in swap.items())
    assert sorted(swap.values()) == sorted(swap)
    chance = quality.heldin_chance(data)
    assert 0 <= chance["vqa_em"] <= 100 and chance["n_vqa"] == sum(
        t["task"] == "vqa" for t in heldin_mod.read_heldin(data).tasks["val"])


def test_missing_heldin_data_says_how_to_write_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="heldin/train.jsonl not found.*qformer-peft data synth --out"):
        heldin_mod.read_heldin(tmp_path)


def _scene():
    from qformer_peft.data.synthetic_world import make_object

    objs = [make_object("circle", "red", "large", 26, 14, 40), make_object("star", "blue", "small", 14, 50, 12),
            make_object("square", "red", "small", 13, 44, 48)]
    return {"size": 64, "background": [240, 240, 240], "quality": "ok", "objects": objs}


def test_extra_questions_answer_what_the_scene_shows_in_the_worlds_words():
    import random
    import re

    sc = _scene()
    vocab = set(synthetic.vocabulary())
    seen = set()
    for seed in range(40):
        for kind in heldin_mod.EXTRA_QUESTIONS:
            qa = heldin_mod.extra_question(random.Random(seed), sc, kind)
            if qa is None:
                continue
            _, q, a, distractors = qa
            seen.add(kind)
            attr = {"color_of": "color"}.get(kind, "shape")
            in_picture = sorted({o[attr] for o in sc["objects"]} - {a})
            assert distractors == {"than": [{"bigger": "smaller", "smaller": "bigger"}.get(a)],
                                   "left_of": [{"left": "right", "right": "left"}.get(a)],
                                   "count_shapes": [], "count_color_shapes": []}.get(kind, in_picture), (q, a)
            assert set(re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]", q + " " + a)) <= vocab, q
            expected = {
                "How many shapes can you see?": "3", "How many red shapes can you see?": "2",
                "How many blue shapes can you see?": "1", "What is the largest shape?": "circle",
                "What is the biggest shape?": "circle", "What is the shape farthest to the left?": "circle",
                "What is the shape farthest to the right?": "star", "What is the shape closest to the top?": "star",
                "What is the shape closest to the bottom?": "square",
                "In the picture, is the red circle bigger or smaller next to the blue star?": "bigger",
                "In the picture, is the blue star bigger or smaller next to the red circle?": "smaller",
                "In the picture, is the red circle bigger or smaller next to the red square?": "bigger",
                "In the picture, is the red square bigger or smaller next to the red circle?": "smaller",
                "In the picture, is the red circle on the left or on the right of the blue star?": "left",
                "In the picture, is the blue star on the left or on the right of the red circle?": "right",
                "In the picture, is the red square on the left or on the right of the blue star?": "left",
                "In the picture, is the blue star on the left or on the right of the red square?": "right",
                "In the picture, is the red circle on the left or on the right of the red square?": "left",
                "In the picture, is the red square on the left or on the right of the red circle?": "right",
                "What is the color of the circle?": "red", "What is the color of the square?": "red",
                "What is the color of the star?": "blue",
                "What is the shape of the blue object?": "star",   # red is on two objects: never asked
            }
            assert expected.get(q) == a, (q, a)
    # smallest: two small objects, neither clearly smaller than the other -> never asked
    assert seen == set(heldin_mod.EXTRA_QUESTIONS)


def test_multiple_choice_keeps_the_question_and_letters_the_gold_answer(data):
    heldin = heldin_mod.read_heldin(data)
    vqa = [t for t in heldin.tasks["train"] if t["task"] == "vqa"]
    assert heldin_mod.multiple_choice(heldin.tasks["train"], 0.0, 0) == []
    mc = heldin_mod.multiple_choice(heldin.tasks["train"], 1.0, 0)
    assert 0 < len(mc) <= len(vqa)
    for t in mc:
        question = t["prompt"].split(" Options: ")[0]
        assert any(v["prompt"].removesuffix(" Answer:") == question and v["image"] == t["image"] for v in vqa)
        options = dict((m[0], m[1]) for m in __import__("re").findall(r"\(([a-z])\) (.*?)(?= \([a-z]\) |\. Answer:$)",
                                                                         t["prompt"]))
        letter, gold = t["answer"][1], t["answer"][4:]
        assert options[letter] == gold and len(set(options.values())) == len(options) >= 2


def test_multiple_choice_asks_the_extra_questions_against_what_the_picture_shows(data):
    """The options of an extra question are its gold answer and the other objects' values (a colour or shape
    that is in the picture), so that only binding, not presence, tells them apart, as in IconQA; counts, and
    pictures that show one value only, draw from the question type's pool."""
    heldin = heldin_mod.read_heldin(data)
    scenes = dict(heldin.scenes["train"])
    extra = heldin_mod.extra_questions(heldin, "train", 3, 0)
    mc = heldin_mod.multiple_choice(extra, 1.0, 0)
    by_kind = {}
    for t in mc:
        options = re.findall(r"\(([a-z])\) (.*?)(?= \([a-z]\) |\. Answer:$)", t["prompt"])
        values = {o for _, o in options}
        objects = scenes[t["image"]]["objects"]
        kind = t["qtype"].removeprefix("extra_")
        by_kind.setdefault(kind, set()).add(len(values))
        if kind in ("color_of", "shape_of", "largest", "extreme"):
            attr = "color" if kind == "color_of" else "shape"
            present = {o[attr] for o in objects}
            assert values <= present or len(present) == 1, t["prompt"]  # one value: the pool serves
        elif kind in ("than", "left_of"):
            assert len(values) == 2
    assert {"color_of", "shape_of", "count_shapes"} <= set(by_kind)
    assert max(by_kind["count_shapes"]) > 2  # pool distractors: other counts


def test_wide_and_deep_presets_reuse_the_stage1_encoder_bit_for_bit(built, heldin_only, tmp_path, monkeypatch):
    """tiny-wide / tiny-deep (presets.SCALED_FROM) have tiny's vision tower and recipe, so their builds read the
    encoder tiny's build trained (never train another) and every model size sees the very same frozen encoder."""
    path, cache = built
    (vision_file,) = (cache / "vision").glob("*/vision.safetensors")
    stage1 = load_file(vision_file)
    key = base.build_key("tiny", "t5", 0, heldin_only, RECIPE)
    assert vision_file.parent == base.vision_dir(cache, key)
    monkeypatch.setattr(vision_stage, "train_vision", lambda *a, **k: pytest.fail("stage 1 trained a second time"))
    shared = tmp_path / "shared"
    shutil.copytree(cache / "vision", shared / "vision")
    for preset in ("tiny-wide", "tiny-deep"):
        assert recipes.recipe_for(preset, llm="t5") == recipes.recipe_for("tiny", llm="t5")
        assert base.vision_dir(cache, base.build_key(preset, "t5", 0, heldin_only, RECIPE)) == vision_file.parent
        built_path = base.ensure_base(preset, "t5", 0, heldin_only, shared, recipe=RECIPE, quality=False, log=None)
        model = load_bundle(built_path).model
        assert model.config.qformer_config.to_dict() != load_bundle(path).model.config.qformer_config.to_dict()
        vision = model.vision_model.state_dict()
        frozen = [k for k in stage1 if not k.startswith("post_layernorm.")]
        assert frozen and all(torch.equal(vision[k], stage1[k]) for k in frozen), preset
    assert [p.parent.name for p in (shared / "vision").glob("*/vision.safetensors")] == [vision_file.parent.name]


def test_a_llama_build_can_start_its_qformer_from_the_t5_build_and_its_key_follows_that_build(
        built, heldin_only, tmp_path, monkeypatch):
    """recipe.qformer_from: stage 3 starts from the named LLM's build (built first when missing): the Q-Former and
    query tokens it trains from are that build's, bit for bit; its key holds that build's key, so that rebuilding
    the source rebuilds it."""
    _, cache = built
    shutil.copytree(cache / "vision", tmp_path / "vision")  # stage 1 is not what this test is about
    recipe = RECIPE.replace(qformer_from="t5")
    seen = {}
    train = stages.train_qformer

    def spy(bundle, *a, **k):
        seen.update({n: t.clone() for n, t in bundle.model.state_dict().items()
                     if n.startswith("qformer.") or n == "query_tokens"})
        return train(bundle, *a, **k)

    monkeypatch.setattr(stages, "train_qformer", spy)
    bundle, report, _, _ = base.train_base("tiny", "llama", 0, heldin_only, tmp_path, recipe=recipe, log=None)
    source = tmp_path / "tiny-t5"
    t5 = load_file(source / "model.safetensors")
    assert seen and seen.keys() == {k for k in t5 if k.startswith("qformer.") or k == "query_tokens"}
    assert all(torch.equal(seen[k], t5[k]) for k in seen)
    assert not torch.equal(bundle.model.query_tokens, t5["query_tokens"])  # and stage 3 trained them on
    source_key = base.runs.read_json(source / "build_key.json")
    assert report["stages"]["qformer_source"] == {"from": "tiny-t5", "tensors": len(seen),
                                                  "build_key": base.runs.config_hash(source_key)}
    key = base.build_key("tiny", "llama", 0, heldin_only, recipe)
    assert "starting from tiny-t5's Q-Former" in build_report.report_markdown(
        {"name": "tiny-llama", "key": key, **report, "time_s": {}, "cpu_s": {}})
    assert key["qformer_from"] == source_key
    monkeypatch.setitem(recipes.LLM_RECIPES, ("tiny", "t5"), {"qformer_lr": 5e-4})  # another T5 build
    assert base.build_key("tiny", "llama", 0, heldin_only, recipe)["qformer_from"] != key["qformer_from"]
    assert "qformer_from" not in base.build_key("tiny", "llama", 0, heldin_only, RECIPE)  # from scratch


def test_a_qformer_starts_only_from_another_llms_build_of_the_same_preset(built, monkeypatch):
    path, _ = built
    with pytest.raises(ValueError, match="qformer_from='gpt'"):
        RECIPE.replace(qformer_from="gpt")
    with pytest.raises(ValueError, match="names the build itself"):
        base.qformer_source("tiny", "t5", RECIPE.replace(qformer_from="t5"))
    monkeypatch.setitem(recipes.LLM_RECIPES, ("tiny", "t5"), {"qformer_from": "llama"})
    with pytest.raises(ValueError, match="chains are not supported"):
        base.qformer_source("tiny", "llama", RECIPE.replace(qformer_from="t5"))
    deep = build_model("tiny-deep", "llama", seed=0).model
    with pytest.raises(ValueError, match="same preset"):
        base.load_qformer(deep, path)


def test_the_qformer_source_takes_the_builds_own_recipe_changes_so_one_command_builds_one_t5(heldin_only, tmp_path,
                                                                                            capsys):
    changed = RECIPE.replace(qformer_from="t5", qformer_epochs=2)  # RECIPE: tiny with eval_limit 12
    assert base.qformer_source("tiny", "llama", changed) == ("tiny", "t5", RECIPE.replace(qformer_epochs=2))
    assert base.qformer_source("tiny", "llama", recipes.recipe_for("tiny", llm="llama"))[2] == recipes.RECIPES["tiny"]
    import argparse

    parser = argparse.ArgumentParser()
    base_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["base", "build", "--preset", "tiny", "--llm", "both", "--data", str(heldin_only),
                              "--cache", str(tmp_path), "--set", "eval_limit=10", "--no-quality"])
    assert args.func(args) == 0
    t5_key = base.runs.read_json(tmp_path / "tiny-t5" / "build_key.json")
    assert t5_key["recipe"]["eval_limit"] == 10  # the command's T5, not one LLaMA built for itself
    assert base.runs.read_json(tmp_path / "tiny-llama" / "build_key.json")["qformer_from"] == t5_key
    assert capsys.readouterr().out.count("[base] building tiny-t5") == 1


def test_the_shipped_llama_recipes_start_from_the_t5_builds_qformer():
    """Measured on mini (LLM_RECIPES): from scratch, LLaMA's Q-Former never learns to read the question."""
    for preset in ("tiny", "mini", "mini-deep", "mini-wide"):
        assert base.dependencies(preset, "llama") == [(preset, "t5")]
        assert base.dependencies(preset, "t5") == []


def test_base_build_command_accepts_the_scaled_presets():
    import argparse

    parser = argparse.ArgumentParser()
    base_cli.add_parser(parser.add_subparsers())
    for preset in ("mini-wide", "mini-deep", "tiny-wide", "tiny-deep"):
        args = parser.parse_args(["base", "build", "--preset", preset, "--llm", "t5"])
        assert args.preset == preset and base_cli.DATA_SIZE[preset] == base_cli.DATA_SIZE[preset.split("-")[0]]
        assert recipes.recipe_for(preset, llm="llama") == recipes.recipe_for(preset.split("-")[0], llm="llama")


def test_context_questions_need_the_text_and_the_picture():
    """Each held-in context question names objects by one attribute and a label; its answer is the other
    attribute of the labelled object in the scene, its options the other named objects' values."""
    import random
    import types

    from qformer_peft.data.synthetic_world import random_scene

    rng = random.Random(0)
    scenes = [(f"img{i}.png", random_scene(rng, rng.randint(1, 5))) for i in range(200)]
    heldin = types.SimpleNamespace(scenes={"train": scenes})
    lines = heldin_mod.context_questions(heldin, "train", 1, seed=0)
    assert 50 < len(lines) <= len(scenes)
    by_image = dict(scenes)
    kinds = set()
    for t in lines:
        objs = by_image[t["image"]]["objects"]
        facts = dict((label, value) for value, label in re.findall(r"The (\w+)(?: shape)? is called (\d)\.", t["prompt"]))
        label = re.search(r"called (\d)\? Answer:$", t["prompt"]).group(1)
        asks_shape = "Which shape is called" in t["prompt"]
        kinds.add(asks_shape)
        key, asked = ("color", "shape") if asks_shape else ("shape", "color")
        target = [o for o in objs if o[key] == facts[label]]
        assert len(target) == 1 and t["answer"] == target[0][asked]            # the scene decides the answer
        assert t["answer"] not in t["distractors"] and len(facts) >= 2
        assert t["prompt"].startswith("<Image> Context: ") and t["answer"] not in t["prompt"].split("Question:")[0]
    assert kinds == {True, False}
    assert lines == heldin_mod.context_questions(heldin, "train", 1, seed=0)  # deterministic

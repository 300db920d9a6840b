"""The synthetic world: deterministic bytes, real-format output the loaders read cleanly, pictures that match
their scenes, dense labels, a closed vocabulary, a 128-token prompt budget, held-in data apart from benchmarks."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qformer_peft.data import Record, load
from qformer_peft.data.synthetic import (BENCHMARKS, build_items, load_scenes, question_types, scene_key,
                                         synthesize, vocabulary)
from qformer_peft.data.synthetic_world import COLORS, IMAGE_SIZE, patch_labels, words
from qformer_peft.templates import candidates, prompt, target


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "world"
    synthesize(out, "tiny", seed=3)
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(world, tmp_path):
    synthesize(tmp_path / "again", "tiny", seed=3)
    synthesize(tmp_path / "other", "tiny", seed=4)
    first, again, other = _digest(world), _digest(tmp_path / "again"), _digest(tmp_path / "other")
    assert len(first) > 150 and first == again
    common = first.keys() & other.keys()  # which ScienceQA problems have a picture depends on the seed
    changed = [k for k in common if first[k] != other[k]]
    assert len(common) > 0.8 * len(first) and len(changed) > 0.9 * len(common)
    assert first["vocab.txt"] == other["vocab.txt"]  # the vocabulary is closed: the same for every seed


def test_loaders_read_the_synthetic_benchmarks_without_problems(world):
    counts = json.loads((world / "synth.json").read_text())["counts"]
    for dataset in BENCHMARKS:
        for split in ("train", "val", "test"):
            loaded = load(dataset, world / dataset, split, img_only=False)  # strict: any problem raises
            assert len(loaded.records) == counts[dataset][split]
    sqa = load("scienceqa", world / "scienceqa", "train", img_only=False).records
    assert any(r.image is None for r in sqa) and any(r.image for r in sqa)
    assert {c for r in sqa for c in r.meta["categories"]} >= {"NAT", "SOC", "LAN", "TXT", "IMG", "G1-6"}


def test_rewrites_an_interrupted_synthesis(tmp_path):
    synthesize(tmp_path, "tiny", 0)
    (tmp_path / "scenes.jsonl").unlink()  # as if the run had died before the end
    (tmp_path / "iconqa" / "stale.txt").write_text("from an older run")
    synthesize(tmp_path, "tiny", 0)
    assert not (tmp_path / "iconqa" / "stale.txt").exists() and (tmp_path / "scenes.jsonl").is_file()
    assert json.loads((tmp_path / "synth.json").read_text())["complete"] is True


def test_refuses_to_write_over_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no earlier synthesis"):
        synthesize(tmp_path, "tiny", 0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_every_picture_has_a_scene_and_matches_it(world):
    scenes = load_scenes(world)
    pictures = {p.relative_to(world).as_posix() for p in world.rglob("*") if p.suffix in (".png", ".jpg")}
    assert set(scenes) == pictures
    record = load("iconqa", world / "iconqa", "val").records[0]
    assert scenes[scene_key(world, record.image)]["id"] == record.id
    assert question_types(world)["iconqa", record.id] == scenes[scene_key(world, record.image)]["qtype"]
    for key, entry in scenes.items():
        sc = entry["scene"]
        if sc["quality"] != "ok":
            continue
        img = np.asarray(Image.open(world / key).convert("RGB"), dtype=np.int32)
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        boxes = [o["bbox"] for o in sc["objects"]]
        for i, o in enumerate(sc["objects"]):
            assert o["extent"] >= 13  # large enough to be seen at 64 px with 8-px patches
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 and 0 <= y0 and x1 <= IMAGE_SIZE and y1 <= IMAGE_SIZE
            for j in range(i):  # no overlap
                a = boxes[j]
                assert x1 <= a[0] or a[2] <= x0 or y1 <= a[1] or a[3] <= y0
            # the drawn colour is at the object's centre (JPEG adds a little noise)
            assert np.abs(img[o["cy"], o["cx"]] - np.array(COLORS[o["color"]])).sum() < 60, (key, o)


def test_patch_labels_put_each_object_under_its_centre_patch(world):
    entries = list(load_scenes(world).values())[:40]
    for entry in entries:
        sc = entry["scene"]
        labels = patch_labels(sc)
        assert labels["shape"].shape == (8, 8) and int(labels["count"]) == len(sc["objects"])
        for i, o in enumerate(sc["objects"]):
            r, c = o["cy"] // 8, o["cx"] // 8
            assert labels["object"][r, c] == i
            assert labels["color"][r, c] == list(COLORS).index(o["color"])
        assert (labels["object"] == -1).sum() > 0  # background stays unlabelled


def _texts(items: dict):
    """Every text the benchmarks and held-in tasks contain, as the models will see it."""
    for bench in ("iconqa", "scienceqa"):
        for split, its in items[bench].items():
            for it in its:
                rec = Record(id="0", dataset=bench, split=split, image=None, question=it["question"],
                             choices=tuple(it["choices"]), answer=it["answer"], context=it.get("hint", ""),
                             lecture=it.get("lecture", ""))
                yield bench, prompt(rec), [target(rec), *candidates(rec), it.get("solution", "")]
    for its in items["vizwiz"].values():
        for it in its:
            rec = Record(id="0", dataset="vizwiz", split="x", image=None, question=it["question"],
                         answers=tuple(a["answer"] for a in it["answers"]))
            yield "vizwiz", prompt(rec), list(rec.answers)
    for its in items["flickr30k"].values():
        for it in its:
            yield "flickr30k", "<Image> A short image description:", it["captions"]
    for its in items["heldin"].values():
        for it in its:
            for task in it["tasks"]:
                yield "heldin", task["prompt"], [task["answer"]]


def test_closed_vocabulary_covers_all_text_and_prompts_fit_128_tokens(world):
    vocab = set(vocabulary())
    assert (world / "vocab.txt").read_text().split("\n")[:-1] == sorted(vocab)
    assert len(vocab) < 1000
    unseen, longest = set(), {}
    for bench, text, others in _texts(build_items("smoke", seed=1)):
        n = len(words(text))
        longest[bench] = max(longest.get(bench, 0), n)
        for t in [text, *others]:
            unseen |= set(words(t)) - vocab
    for split in ("train", "val"):
        unseen |= set(words((world / "heldin" / f"text_{split}.txt").read_text())) - vocab
    assert unseen == set()
    assert max(longest.values()) <= 128, longest  # left truncation never cuts a synthetic prompt


def test_heldin_is_apart_from_the_benchmarks(world):
    items = build_items("smoke", seed=1)
    bench_scenes = {json.dumps(it["scene"]["objects"]) for b in BENCHMARKS for its in items[b].values()
                    for it in its if it["scene"] is not None}
    heldin = [it for its in items["heldin"].values() for it in its]
    assert not any(json.dumps(it["scene"]["objects"]) in bench_scenes for it in heldin)
    bench_questions = {it["question"] for b in ("iconqa", "scienceqa", "vizwiz") for its in items[b].values()
                       for it in its}
    heldin_questions = {t["prompt"].split("Question: ")[1].rsplit(" Answer:", 1)[0]
                        for it in heldin for t in it["tasks"] if t["task"] == "vqa"}
    assert len(heldin_questions) > 50 and not heldin_questions & bench_questions
    lines = [json.loads(x) for x in (world / "heldin" / "train.jsonl").read_text().splitlines()]
    assert {x["task"] for x in lines} == {"caption", "vqa"}
    assert all((world / "heldin" / x["image"]).is_file() for x in lines)


def test_vizwiz_answers_disagree_but_majority_is_gold_and_some_are_unanswerable():
    items = [it for its in build_items("smoke", seed=2, benchmarks=("vizwiz",))["vizwiz"].values() for it in its]
    assert all(len(it["answers"]) == 10 for it in items)
    unanswerable = [it for it in items if not it["answerable"]]
    assert 0.05 < len(unanswerable) / len(items) < 0.3
    assert all(it["answer_type"] == "unanswerable" and it["scene"]["quality"] != "ok" for it in unanswerable)
    majority = [target(Record(id="0", dataset="vizwiz", split="x", image=None, question="",
                              answers=tuple(a["answer"] for a in it["answers"]))) for it in unanswerable]
    assert set(majority) == {"unanswerable"}
    answerable = [it for it in items if it["answerable"]]
    assert sum(len({a["answer"] for a in it["answers"]}) > 1 for it in answerable) > 0.5 * len(answerable)

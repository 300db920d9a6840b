"""Loaders on small fixtures in each benchmark's real layout (written here), every validation error, `data check`."""
import json
from pathlib import Path

import pytest
from PIL import Image

from qformer_peft.data import DataError, load, load_image
from qformer_peft.data.cli import add_parser


def cli_main(argv):
    """`qformer-peft data ...` without importing every other stage (the full CLI loads torch models)."""
    import argparse
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _png(path: Path, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


# ------------------------------------------------------------------------------------------ ScienceQA

def sqa_problem(**kw):
    # field for field as in lupantech/ScienceQA data/scienceqa/problems.json
    prob = {"question": "Which animal's legs are also adapted for wading?", "choices": ["bar-tailed godwit",
            "Arctic fox"], "answer": 0, "hint": "Flamingos live near water.", "image": "image.png",
            "task": "closed choice", "grade": "grade4", "subject": "natural science", "topic": "biology",
            "category": "Adaptations", "skill": "Animal adaptations: feet and legs",
            "lecture": "An adaptation is an inherited trait.", "solution": "The godwit wades.", "split": "train"}
    prob.update(kw)
    return prob


def write_scienceqa(root: Path, problems: dict, splits: dict) -> Path:
    _json(root / "problems.json", problems)
    _json(root / "pid_splits.json", {**{"train": [], "val": [], "test": []}, **splits})
    for pid, prob in problems.items():
        if prob.get("image"):
            _png(root / "images" / prob["split"] / pid / prob["image"])
    return root


@pytest.fixture
def sqa_root(tmp_path):
    problems = {
        "5": sqa_problem(),
        "9": sqa_problem(question="Which of these states is farthest north?", image=None, hint="",
                         choices=["West Virginia", "Louisiana", "Arizona", "Oklahoma"], subject="social science",
                         grade="grade2", topic="geography"),
        "12": sqa_problem(split="test", grade="grade9", hint=""),
    }
    return write_scienceqa(tmp_path / "sqa", problems, {"train": ["5", "9"], "test": ["12"]})


def test_scienceqa_reads_img_subset_with_official_categories(sqa_root):
    train = load("scienceqa", sqa_root, "train")
    assert [r.id for r in train.records] == ["5"] and train.problems == []
    r = train.records[0]
    assert r.choices == ("bar-tailed godwit", "Arctic fox") and r.answer == 0
    assert r.context == "Flamingos live near water." and r.lecture.startswith("An adaptation")
    assert r.image == str(sqa_root / "images/train/5/image.png")
    assert r.meta["categories"] == ("NAT", "TXT", "IMG", "G1-6")
    assert load_image(r).mode == "RGB" and load_image(r).size == (8, 6)
    everything = load("scienceqa", sqa_root, "train", img_only=False).records
    assert [x.id for x in everything] == ["5", "9"] and everything[1].image is None
    assert everything[1].meta["categories"] == ("SOC", "NO", "G1-6")
    assert load("scienceqa", sqa_root, "test").records[0].meta["categories"] == ("NAT", "IMG", "G7-12")


@pytest.mark.parametrize("change, what", [
    (lambda p: p.update(answer=2), "answer index 2 out of range for 2 choices"),
    (lambda p: p.update(choices=[]), "empty choices"),
    (lambda p: p.update(choices=[f"c{i}" for i in range(27)]), "27 choices, more than the 26"),
    (lambda p: p.update(answer="0"), "is not an integer index"),
])
def test_scienceqa_bad_record_names_file_pid_and_problem(tmp_path, change, what):
    bad = sqa_problem()
    change(bad)
    root = write_scienceqa(tmp_path / "sqa", {"5": sqa_problem(), "6": bad}, {"train": ["5", "6"]})
    with pytest.raises(DataError) as err:
        load("scienceqa", root, "train")
    message = str(err.value)
    assert str(root / "problems.json") in message and "[pid 6]" in message and what in message
    skipped = load("scienceqa", root, "train", skip_bad=True)
    assert [r.id for r in skipped.records] == ["5"]
    assert [(p.pid, p.file) for p in skipped.problems] == [("6", str(root / "problems.json"))]


def test_scienceqa_pid_without_problem_and_missing_image(sqa_root):
    _json(sqa_root / "pid_splits.json", {"train": ["5", "404"], "val": [], "test": ["12"]})
    (sqa_root / "images/test/12/image.png").unlink()
    with pytest.raises(DataError, match=r"pid_splits.json \[pid 404\]: listed in .* absent from problems.json"):
        load("scienceqa", sqa_root, "train")
    with pytest.raises(DataError, match=r"images/test/12/image.png \[pid 12\]: image file missing. Fix: "):
        load("scienceqa", sqa_root, "test")
    assert len(load("scienceqa", sqa_root, "test", skip_bad=True).problems) == 1


def test_missing_file_malformed_json_and_missing_split_always_raise(sqa_root):
    (sqa_root / "problems.json").write_text('{"5": {"question": "x",\n  "choices": [1,, 2]}}')
    with pytest.raises(DataError, match=r"problems.json: malformed JSON at line 2, column 17"):
        load("scienceqa", sqa_root, "train", skip_bad=True)
    (sqa_root / "problems.json").unlink()
    with pytest.raises(DataError, match=r"problems.json: file not found. Fix: point --root"):
        load("scienceqa", sqa_root, "train", skip_bad=True)
    write_scienceqa(sqa_root, {"5": sqa_problem()}, {})
    _json(sqa_root / "pid_splits.json", {"train": ["5"]})
    with pytest.raises(DataError, match=r"pid_splits.json: no 'val' list of pids"):
        load("scienceqa", sqa_root, "val")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load("scienceqa", sqa_root, "dev")


def test_scienceqa_parquet_export(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    import io
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), (0, 0, 255)).save(buf, format="PNG")
    rows = [dict(sqa_problem(), image={"bytes": buf.getvalue(), "path": None}),
            dict(sqa_problem(hint=""), image=None)]
    for row in rows:
        row.pop("split")
    (tmp_path / "data").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet")
    loaded = load("scienceqa", tmp_path, "val", img_only=False)
    assert [r.id for r in loaded.records] == ["val-0", "val-1"]
    assert loaded.records[0].image.endswith("validation-00000-of-00001.parquet::0")
    assert load_image(loaded.records[0]).getpixel((2, 2)) == (0, 0, 255)
    assert loaded.records[1].image is None


# --------------------------------------------------------------------------------------------- IconQA

def write_iconqa(root: Path, problems: dict, splits: dict, skills: dict | None = None) -> Path:
    data = root / "iconqa_data"
    _json(data / "problems.json", problems)
    _json(data / "pid_splits.json", {**{f"choose_txt_{s}": [] for s in ("train", "val", "test")}, **splits})
    if skills is not None:
        _json(data / "pid2skills.json", skills)
    for key, pids in splits.items():
        for pid in pids:
            if pid in problems:
                _png(data / "iconqa" / key.rsplit("_", 1)[1] / "choose_txt" / pid / "image.png")
    return root


def icon_problem(**kw):
    prob = {"question": "How many dots are there?", "choices": ["3", "5", "9"], "answer": 2,
            "ques_type": "choose_txt", "grade": "prek", "label": "count"}
    prob.update(kw)
    return prob


def test_iconqa_reads_choose_txt_with_skills(tmp_path):
    root = write_iconqa(tmp_path / "icon", {"31": icon_problem(), "40": icon_problem(answer=0)},
                        {"choose_txt_train": ["31"], "choose_txt_val": ["40"]}, {"31": ["counting"]})
    r = load("iconqa", root, "train").records[0]
    assert (r.id, r.choices, r.answer, r.meta["skills"]) == ("31", ("3", "5", "9"), 2, ("counting",))
    assert r.image == str(root / "iconqa_data/iconqa/train/choose_txt/31/image.png")
    assert load("iconqa", root / "iconqa_data", "val").records[0].id == "40"  # root may be iconqa_data itself


def test_iconqa_errors_name_file_and_pid(tmp_path):
    problems = {"1": icon_problem(), "2": icon_problem(answer=-1), "3": icon_problem(ques_type="choose_img")}
    root = write_iconqa(tmp_path / "icon", problems, {"choose_txt_train": ["1", "2", "3", "77"]})
    with pytest.raises(DataError, match=r"iconqa_data/problems.json \[pid 2\]: answer index -1 out of range"):
        load("iconqa", root, "train")
    skipped = load("iconqa", root, "train", skip_bad=True)
    assert [r.id for r in skipped.records] == ["1"]
    assert [p.pid for p in skipped.problems] == ["2", "3", "77"]
    assert "absent from problems.json" in skipped.problems[2].what


# --------------------------------------------------------------------------------------------- VizWiz

def vizwiz_entry(name, answers=("white", "white", "grey") * 3 + ("unanswerable",)):
    return {"image": name, "question": "What color is this shirt?", "answer_type": "other", "answerable": 1,
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}


def test_vizwiz_reads_ten_answers_and_answerless_test(tmp_path):
    root = tmp_path / "vizwiz"
    _json(root / "Annotations/train.json", [vizwiz_entry("VizWiz_train_00000000.jpg")])
    _json(root / "Annotations/test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What is it?"}])
    _png(root / "train/VizWiz_train_00000000.jpg")
    _png(root / "test/VizWiz_test_00000000.jpg")
    r = load("vizwiz", root, "train").records[0]
    assert r.id == "VizWiz_train_00000000" and len(r.answers) == 10 and r.answers[0] == "white"
    assert r.meta["answerable"] == 1 and r.choices == () and r.answer is None
    assert load("vizwiz", root, "test").records[0].answers == ()


def test_vizwiz_missing_image_and_bad_answers(tmp_path):
    root = tmp_path / "vizwiz"
    bad = vizwiz_entry("VizWiz_val_00000001.jpg")
    bad["answers"] = "white"
    _json(root / "Annotations/val.json", [vizwiz_entry("VizWiz_val_00000000.jpg"), bad])
    _png(root / "val/VizWiz_val_00000001.jpg")
    with pytest.raises(DataError, match=r"val/VizWiz_val_00000000.jpg \[pid VizWiz_val_00000000\]: image file "
                                        r"missing"):
        load("vizwiz", root, "val")
    assert [p.pid for p in load("vizwiz", root, "val", skip_bad=True).problems] == [
        "VizWiz_val_00000000", "VizWiz_val_00000001"]


# ------------------------------------------------------------------------------------------ Flickr30k

def karpathy_image(imgid, split, n=5):
    sentences = [{"tokens": ["two", "young", "guys"], "raw": f"Two young guys {i}.", "imgid": imgid,
                  "sentid": 5 * imgid + i} for i in range(n)]
    return {"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences, "split": split,
            "filename": f"{1000092795 + imgid}.jpg"}


def test_flickr_karpathy_with_restval_as_train(tmp_path):
    root = tmp_path / "flickr"
    images = [karpathy_image(0, "train"), karpathy_image(1, "restval"), karpathy_image(2, "test")]
    _json(root / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    for img in images:
        _png(root / "flickr30k-images" / img["filename"])
    train = load("flickr30k", root, "train").records
    assert [r.id for r in train] == ["1000092795", "1000092796"]
    assert train[1].meta["karpathy_split"] == "restval" and len(train[0].answers) == 5
    assert load("flickr30k", root, "test").records[0].answers[0] == "Two young guys 0."


def test_flickr_errors(tmp_path):
    root = tmp_path / "flickr"
    _json(root / "dataset_flickr30k.json", {"images": [karpathy_image(0, "train", n=0), karpathy_image(1, "train")]})
    _png(root / "flickr30k-images/1000092795.jpg")
    with pytest.raises(DataError, match=r"\[pid 1000092795\]: no captions"):
        load("flickr30k", root, "train")
    problems = load("flickr30k", root, "train", skip_bad=True).problems
    assert [(p.pid, p.what) for p in problems] == [("1000092795", problems[0].what), ("1000092796",
                                                                                       "image file missing")]


# ----------------------------------------------------------------------------------------- data check

def test_data_check_exit_status_and_report(sqa_root, capsys):
    assert cli_main(["data", "check", "--dataset", "scienceqa", "--root", str(sqa_root)]) == 0
    out = capsys.readouterr().out
    assert "train: 2 records (1 with image), 0 problems" in out and "0 problem(s)" in out
    (sqa_root / "images/train/5/image.png").unlink()
    assert cli_main(["data", "check", "--dataset", "scienceqa", "--root", str(sqa_root)]) == 1
    out = capsys.readouterr().out
    assert "[pid 5]: image file missing" in out and "1 problem(s)" in out

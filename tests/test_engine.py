"""run_experiment end to end on a tiny model and a tiny IconQA written in its real layout: reproducible,
resumable, never recomputed, cache-neutral, and its saved adapter gives back the same model."""
import json
import random

import pytest
import torch
from PIL import Image, ImageDraw

from qformer_peft import cli, data, engine, features, peft_setup, run_inputs, runs, templates
from qformer_peft.engine import attach_trained, load_trained, run_experiment, save_trained
from qformer_peft.engine_cli import config_from_args
from qformer_peft.evaluate import candidate_nll
from qformer_peft.models.build import build_model
from qformer_peft.data.records import load_image
from qformer_peft.models.inputs import encode_images, make_batch, unwrap

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}


def write_iconqa(data, n=(8, 4, 4), seed=0):
    """DATA/iconqa in IconQA's distributed layout (choose_txt) + DATA/vocab.txt, as `data synth` writes."""
    rng = random.Random(seed)
    root = data / "iconqa" / "iconqa_data"
    problems, splits = {}, {}
    for split, count in zip(("train", "val", "test"), n):
        splits[f"choose_txt_{split}"] = []
        for i in range(count):
            pid, color = f"{split}{i}", rng.choice(sorted(COLORS))
            img = Image.new("RGB", (32, 32), "white")
            ImageDraw.Draw(img).rectangle([rng.randint(2, 8), rng.randint(2, 8), 25, 25], fill=COLORS[color])
            folder = root / "iconqa" / split / "choose_txt" / pid
            folder.mkdir(parents=True)
            img.save(folder / "image.png")
            choices = sorted(COLORS)
            problems[pid] = {"question": "What color is the square?", "choices": choices,
                             "answer": choices.index(color), "ques_type": "choose_txt", "split": split}
            splits[f"choose_txt_{split}"].append(pid)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    words = "<Image> Question: What color is the square ? Options: ( a ) b c . Short answer: blue green red"
    (data / "vocab.txt").write_text("\n".join(words.split()))
    (data / "synth.json").write_text("{}")  # marks DATA as `data synth` output: one root per benchmark
    return data / "iconqa"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_iconqa(tmp_path_factory.mktemp("data"))


CONFIG = {"benchmark": "iconqa", "model": "tiny", "llm": "t5", "setup": "qf-lora", "qf_sublayers": "all", "rank": 4,
          "max_epochs": 2, "patience": 3, "batch_size": 4, "seed": 7}


@pytest.fixture(scope="module")
def config(data_root):
    return {**CONFIG, "data_root": str(data_root)}


@pytest.fixture(scope="module")
def finished(config, tmp_path_factory):
    """(result, run folder) of one uninterrupted run, shared by the tests that only read it."""
    features.clear_memory()
    out = tmp_path_factory.mktemp("finished")
    result = run_experiment(config, out=out)
    return result, _only_run(out)


def _timeless(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def _only_run(out):
    (run,) = runs.iter_runs(out)
    return run


def test_seeded_run_reproduces_and_a_resumed_run_equals_an_uninterrupted_one(config, finished, tmp_path, monkeypatch):
    first, a = finished
    again = run_experiment(config, out=tmp_path / "b")
    b = _only_run(tmp_path / "b")
    assert _timeless(a.metrics()) == _timeless(b.metrics()) and a.predictions() == b.predictions()
    assert first["test"] == again["test"] and len(a.metrics()) == 3  # 2 epochs + the test row

    def crash_after_first_epoch(state):
        if state["epoch"] == 1:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        run_experiment(config, out=tmp_path / "c", on_epoch_end=crash_after_first_epoch)
    c = _only_run(tmp_path / "c")
    assert c.state == "failed" and "power cut" in runs.read_json(c.path / "status.json")["traceback"]
    assert c.checkpoint_path.exists() and len(c.metrics()) == 1
    resumed = run_experiment(config, out=tmp_path / "c")
    assert c.state == "done" and not c.checkpoint_path.exists()
    assert _timeless(c.metrics()) == _timeless(a.metrics()) and c.predictions() == a.predictions()
    assert resumed["test"] == first["test"] and resumed["best_epoch"] == first["best_epoch"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    for step in ("resolve_bundle", "fit"):  # a finished run loads no model and trains nothing
        monkeypatch.setattr(engine, step, must_not_run)
    assert run_experiment(config, out=a.path.parent) == first


def test_feature_cache_changes_nothing_but_speed(config, finished, tmp_path):
    cached, run = finished
    plain = run_experiment({**config, "feature_cache": False}, out=tmp_path)
    assert plain["feature_cache"] is None and cached["feature_cache"]["computed"] > 0
    assert _timeless(_only_run(tmp_path).metrics()) == _timeless(run.metrics())


def test_run_folder_is_complete_and_its_adapter_reloads_to_the_same_predictions(config, finished):
    result, run = finished
    for name in ("config.json", "env.json", "status.json", "metrics.jsonl", "predictions.jsonl", "result.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/trainable.safetensors"):
        assert (run.path / name).is_file(), name
    assert run.id == f"iconqa_qf-lora_qf-all_r4_s7-{runs.config_hash(run.config)}"
    targets = json.loads((run.path / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert len(targets) > 1 and targets == sorted(targets)  # the same bytes in every process (peft keeps a set)
    assert set(result["trainable_params"]) >= {"qformer_lora", "query_tokens", "projection", "vit_layernorm"}
    assert runs.load_runs(run.path.parent).loc[0, "result.test.accuracy"] == result["test"]["accuracy"]

    bundle, model = load_trained(run.path)  # PeftModel.from_pretrained + trainable.safetensors
    stored = run.predictions()
    records = data.load("iconqa", config["data_root"], "test").records
    embeds = encode_images(model, bundle.image_processor([load_image(r) for r in records]))
    nll = candidate_nll(bundle, embeds, [templates.prompt(r) for r in records],
                        [templates.candidates(r) for r in records], model=model)
    for row, scores in zip(stored, nll):
        torch.testing.assert_close(torch.tensor(row["nll"]), scores, rtol=0, atol=2e-6)


@pytest.mark.parametrize("setup, qf, llm_targets, rank, adalora", [
    ("baseline", None, None, None, None), ("qf-fft+llm-lora", None, "ffn", 2, None),
    ("qf-lora+llm-lora", "all", "all", 1, None), ("qf-lora", "all", None, None, {"total_step": 10}),
])
def test_save_and_attach_round_trip_gives_identical_outputs(setup, qf, llm_targets, rank, adalora, tmp_path):
    def fresh():
        torch.manual_seed(0)
        return build_model("tiny", "t5", seed=5)

    bundle = fresh()
    model = peft_setup.apply_peft(bundle.model, setup, qf_sublayers=qf, llm_targets=llm_targets, rank=rank,
                                  adalora=adalora)
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for name, p in unwrap(model).named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
                if "lora_E" in name:
                    p[: p.shape[0] // 2] = 0.0  # AdaLoRA's pruned singular values
    if adalora:  # an allocation in force: saving must not slice the factors by it
        tuner = model.base_model
        cfg = tuner.peft_config["default"]
        cfg.rank_pattern = {f"{n}.lora_E.default": [True] * 3 + [False] * 9 for n in peft_setup.lora_module_names(model)}
    save_trained(model, tmp_path / "adapter")
    model.eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = make_batch(bundle, pixels, ["<Image> a b c", "d e"], ["f", "g h"])
    with torch.no_grad():  # transformers' own forward: the adapters sit inside the modules
        expected = unwrap(model)(**batch).logits
        loaded = attach_trained(fresh().model, tmp_path / "adapter")
        got = unwrap(loaded)(**batch).logits
    # same parameters bit for bit; the outputs may differ in the 6th digit because oneDNN's reductions
    # depend on the alignment of (non-contiguous) activation buffers, which differs between two models
    # (1.1e-5 seen on an AMD EPYC; a wrong or missing adapter moves them by ~1e-2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    saved = {n: p for n, p in unwrap(model).named_parameters()}
    assert all(torch.equal(p, saved[n]) for n, p in unwrap(loaded).named_parameters())
    assert ((tmp_path / "adapter" / "adapter_config.json").exists()) == (setup != "baseline")


def test_adalora_run_writes_its_rank_table_and_resumes_its_budget(config, tmp_path):
    cfg = {**config, "method": "adalora", "rank": None, "max_epochs": 2, "adalora_init_r": 4, "adalora_target_r": 2,
           "adalora_delta_t": 1}
    run_experiment(cfg, out=tmp_path / "a")
    ranks = _only_run(tmp_path / "a").ranks()
    final = [r for r in ranks if r["phase"] == "final"]
    assert len(final) == 16 and sum(r["rank"] for r in final) == 2 * 16  # 2 layers: 4 self, 4 cross (layer 0), 8 ffn
    assert {r["epoch"] for r in ranks if r["phase"] == "epoch"} == {1, 2}
    assert set(final[0]) == {"layer", "sublayer", "branch", "module", "name", "rank", "step", "epoch", "phase"}

    def crash(state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out=tmp_path / "b", on_epoch_end=crash)
    run_experiment(cfg, out=tmp_path / "b")  # the allocator's importance scores come back from the checkpoint
    b = _only_run(tmp_path / "b")
    assert b.ranks() == ranks and _timeless(b.metrics()) == _timeless(_only_run(tmp_path / "a").metrics())


def test_cli_run_writes_a_run_folder(data_root, tmp_path, capsys):
    features.clear_memory()
    status = cli.main(["run", "--preset", "tiny", "--setup", "qf-lora", "--qf-sublayers", "all", "--rank", "4",
                       "--dataset", "iconqa", "--data-root", str(data_root.parent), "--out", str(tmp_path),
                       "--max-epochs", "1", "--set", "batch_size=6", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0 and "test accuracy:" in out
    run = _only_run(tmp_path)
    assert run.state == "done" and run.config["batch_size"] == 6 and run.config["max_epochs"] == 1


def test_cli_config_parsing(tmp_path):
    parser = cli.build_parser()
    base = ["run", "--out", str(tmp_path)]
    cfg = config_from_args(parser.parse_args(base + ["--setup", "baseline", "--augment", "true"]))
    assert cfg.setup == "baseline" and cfg.rank is None and cfg.qf_sublayers is None and cfg.augment
    cfg = config_from_args(parser.parse_args(base + ["--method", "adalora", "--llm-targets", "none"]))
    assert cfg.rank is None and cfg.method == "adalora"
    (tmp_path / "c.json").write_text(json.dumps({"rank": 2, "seed": 3}))
    cfg = config_from_args(parser.parse_args(base + ["--config", str(tmp_path / "c.json"), "--seed", "5"]))
    assert (cfg.rank, cfg.seed) == (2, 5)
    from qformer_peft.config import ConfigError
    with pytest.raises(ConfigError, match="--rank 'x': expected int"):
        config_from_args(parser.parse_args(base + ["--rank", "x"]))
    with pytest.raises(ConfigError, match="unknown config key"):
        config_from_args(parser.parse_args(base + ["--set", "rnak=2"]))


def test_bench_full_size_path_runs_on_a_tiny_config_and_prints_ratios():
    """The CUDA measurement's code path (random bf16 weights, FLOP count) on a tiny config on the CPU."""
    from qformer_peft.bench import bench_cuda, table
    from qformer_peft.models.presets import build_config

    cfg = build_config("tiny", "t5", llm_vocab_size=50, qformer_vocab_size=40, image_token_index=4)
    full = bench_cuda(device="cpu", preset="tiny", config=cfg, batch_size=2, prompt_tokens=6, target_tokens=3,
                      warmup=0, steps=1, progress=False)
    assert [r["setup"] for r in full["train"]] == ["qf-lora", "qf-lora+llm-lora"]
    assert all(r["flops_per_step"] > 0 and r["samples_per_s"] > 0 for r in full["train"])
    cpu = {"preset": "mini", "llm": "t5", "batch_size": 16, "threads": 1, "peak_rss_mb": 500.0,
           "train": [{"setup": "qf-lora", "trainable": 64832, "cached_samples_per_s": 150.0,
                      "uncached_samples_per_s": 100.0, "cache_speedup": 1.5}],
           "eval": {"questions": 32, "candidates_per_question": 2.7, "batched_questions_per_s": 300.0,
                    "loop_questions_per_s": 30.0, "batched_speedup": 10.0}}
    text = table({"cpu": cpu, "cuda": full})
    assert "qf-lora                64,832      150.0       100.0     1.50" in text
    assert "batched x 10.00" in text and "tiny bf16 random weights, batch 2" in text


def test_null_run_shuffles_its_training_answers_from_the_seed_and_records_the_base_zero_shot(config, tmp_path):
    cfg = engine.ExperimentConfig.from_dict({**config, "setup": "baseline", "qf_sublayers": None, "rank": None,
                                             "max_epochs": 1, "shuffle_answers": True})
    plain = cfg.replace(shuffle_answers=False)
    assert cfg.hash != plain.hash and "shuffle_answers" not in plain.to_dict()   # older run folders keep their hash
    true, null = run_inputs.load_examples(plain), run_inputs.load_examples(cfg)
    assert null["test"] == true["test"] and null["val"] == true["val"]            # only training answers move
    assert null["train"] == run_inputs.load_examples(cfg)["train"]                    # a function of the seed
    assert all(e.target == e.candidates[e.answer] for e in null["train"])
    assert [e.answer for e in null["train"]] != [e.answer for e in true["train"]]
    assert [e.answer for e in run_inputs.shuffled_answers(true["train"], 8)] != [e.answer for e in null["train"]]

    run_experiment(cfg, out=tmp_path)
    run = _only_run(tmp_path)
    zero_shot = run.zero_shot_predictions()
    assert "null" in run.id and [r["id"] for r in zero_shot] == [r["id"] for r in run.predictions()]
    bundle = run_inputs.resolve_bundle(cfg)                                         # the untrained base model
    records = data.load("iconqa", config["data_root"], "test").records
    embeds = encode_images(bundle.model, bundle.image_processor([load_image(r) for r in records]))
    nll = candidate_nll(bundle, embeds, [templates.prompt(r) for r in records],
                        [templates.candidates(r) for r in records])
    for row, scores in zip(zero_shot, nll):
        torch.testing.assert_close(torch.tensor(row["nll"]), scores, rtol=0, atol=2e-6)
    (run.path / runs.ZERO_SHOT_FILE).unlink()                                  # a run folder from before
    engine.record_zero_shot(run.path)
    for row, again in zip(zero_shot, run.zero_shot_predictions()):
        assert row["pred"] == again["pred"]
        torch.testing.assert_close(torch.tensor(row["nll"]), torch.tensor(again["nll"]), rtol=0, atol=2e-6)

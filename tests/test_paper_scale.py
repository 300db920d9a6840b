"""The paper scale on a CPU, in miniature: checkpoints in the hub layout (tests/fixtures/paper_world.py) and the
benchmarks in their published layouts. Each test names the way a paper run went wrong without a word before."""
import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file

from fixtures.paper_world import T5_NAME, VICUNA_NAME, paper_world
from qformer_peft import grid_cells, execute, grid, runs, schedule
from qformer_peft.config import ConfigError, ExperimentConfig
from qformer_peft.engine import run_experiment
from qformer_peft.models.build import CheckpointError, load_bundle

TINY = {"setup": "qf-lora", "rank": 2, "max_epochs": 1, "batch_size": 4, "train_limit": 8, "val_limit": 4,
        "test_limit": 4, "num_beams": 1, "seed": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return paper_world(tmp_path_factory.mktemp("paper"))


def copy_ckpt(world, llm, tmp_path):
    return shutil.copytree(world[llm], tmp_path / world[llm].name)


# 1. a checkpoint without (or with the wrong) tokenizer is refused before the model loads ------------------------
def _drop_llm_tokenizer(d):
    for f in d.glob("tokenizer*.json"):
        f.unlink()


def _set_config(d, **text):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in text.items():
        if k == "image_token_index":
            cfg[k] = v
        else:
            cfg["text_config"][k] = v
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("damage, piece", [
    (_drop_llm_tokenizer, "LLM tokenizer is missing"),
    (lambda d: shutil.rmtree(d / "qformer_tokenizer"), "Q-Former tokenizer is missing"),
    (lambda d: _set_config(d, image_token_index=3), "image_token_index is 3"),
    (lambda d: _set_config(d, vocab_size=100), "embeddings have 100 rows"),
])
def test_a_damaged_checkpoint_is_refused_before_its_weights_load(world, tmp_path, monkeypatch, damage, piece):
    ckpt = copy_ckpt(world, "t5", tmp_path)
    damage(ckpt)
    from transformers import InstructBlipForConditionalGeneration

    def no_weights(*a, **k):
        raise AssertionError("the weights were loaded before the checkpoint was checked")
    monkeypatch.setattr(InstructBlipForConditionalGeneration, "from_pretrained", no_weights)
    with pytest.raises(CheckpointError, match=piece) as err:
        load_bundle(ckpt)
    assert str(ckpt) in str(err.value)


def test_a_checkpoint_without_tokenizers_does_not_train(world, tmp_path):
    ckpt = copy_ckpt(world, "t5", tmp_path)
    _drop_llm_tokenizer(ckpt)
    shutil.rmtree(ckpt / "qformer_tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer is missing"):
        run_experiment({**TINY, "benchmark": "iconqa", "model": str(ckpt), "data_root": str(world["data"] / "iconqa")},
                       out=tmp_path / "runs")


# 2. VizWiz: the official test split has no answers: val is scored, and data check says so -------------------------
def test_vizwiz_scores_val_when_the_test_split_has_no_answers(world, tmp_path, capsys):
    from qformer_peft import cli

    assert cli.main(["data", "check", "--dataset", "vizwiz", "--root", str(world["data"] / "vizwiz")]) == 0
    assert "test:" in (out := capsys.readouterr().out) and "UNANSWERED" in out
    result = run_experiment({**TINY, "benchmark": "vizwiz", "model": str(world["t5"]),
                             "data_root": str(world["data"] / "vizwiz")}, out=tmp_path / "runs")
    assert result["splits"] == {"train": "train", "val": "val", "test": "val"}
    assert result["test"]["n"] == 4 and result["test"]["vqa_acc"] is not None
    from qformer_peft.report_charts import run_summary, runs_frame

    assert run_summary(runs_frame(tmp_path / "runs"))["splits.test"].tolist() == ["val"]  # the report's run table
    with pytest.raises(ValueError, match="no answers"):  # asked for explicitly, the unanswered split is an error
        run_experiment({**TINY, "benchmark": "vizwiz", "model": str(world["t5"]), "test_split": "test",
                        "data_root": str(world["data"] / "vizwiz")}, out=tmp_path / "runs")


# 3. the LLM kind is the checkpoint's ---------------------------------------------------------------------------
def test_the_llm_kind_comes_from_the_checkpoint_and_a_contradiction_is_an_error(world):
    assert ExperimentConfig(model=str(world["llama"])).llm == "llama"
    assert ExperimentConfig(model=str(world["t5"])).llm == "t5"
    with pytest.raises(ConfigError, match="whose LLM is llama"):
        ExperimentConfig(model=str(world["llama"]), llm="t5")
    assert ExperimentConfig(model="Salesforce/instructblip-vicuna-7b").llm == "llama"  # a hub id: its name says
    with pytest.raises(ConfigError, match="does not say its LLM"):
        ExperimentConfig(model="someone/instructblip-custom")


# 4. stored dtypes do not leak into training; fp16 with the scaler and bf16 run on the CPU -------------------------
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_half_precision_checkpoint_trains_fp32_master_weights(world, tmp_path, precision):
    bundle = load_bundle(world["llama"], dtype=torch.float16)
    assert bundle.model.language_projection.weight.dtype == torch.float16
    ckpt = tmp_path / "fp16-vicuna"
    bundle.save(ckpt)
    out = tmp_path / "runs"
    result = run_experiment({**TINY, "benchmark": "iconqa", "model": str(ckpt), "precision": precision,
                             "data_root": str(world["data"] / "iconqa")}, out=out)
    assert result["precision"] == precision and result["dtypes"]["trainable"] == "float32"
    (run,) = runs.iter_runs(out)
    saved = load_file(run.adapter_dir / "trainable.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


@pytest.mark.parametrize("llm, precision", [("llama", "fp16"), ("t5", "bf16")])
def test_the_cuda_path_frozen_weights_in_half_precision_trainable_in_fp32(world, tmp_path, monkeypatch, llm, precision):
    """On CUDA the frozen weights load in the autocast dtype; the same code path, forced on the CPU."""
    from qformer_peft import engine

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    monkeypatch.setattr(engine, "weights_dtype", lambda precision, device: half)
    out = tmp_path / "runs"
    result = run_experiment({**TINY, "benchmark": "iconqa", "model": str(world[llm]), "precision": precision,
                             "setup": "qf-fft+llm-lora", "qf_sublayers": None, "llm_targets": "all",
                             "data_root": str(world["data"] / "iconqa")}, out=out)
    assert str(half).removeprefix("torch.") in result["dtypes"]["frozen"] and result["precision"] == precision
    (run,) = runs.iter_runs(out)
    assert all(t.dtype == torch.float32 for t in load_file(run.adapter_dir / "trainable.safetensors").values())


# 5. paths: absolute before anything, hub ids only for owner/name, offline fails at once ----------------------------
def test_relative_paths_are_stored_absolute_and_keep_the_run_folder(world, monkeypatch):
    monkeypatch.chdir(world["checkpoints"].parent)
    rel = ExperimentConfig(model=f"checkpoints/{T5_NAME}", data_root="data/iconqa")
    absolute = ExperimentConfig(model=str(world["t5"]), data_root=str(world["data"] / "iconqa"))
    assert rel.model == str(world["t5"].resolve()) and rel.data_root == str((world["data"] / "iconqa").resolve())
    assert rel.hash == absolute.hash


def test_a_missing_local_checkpoint_fails_at_once_naming_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:  # looks like owner/name: a hub id, but offline
        load_bundle(f"ckpts/{T5_NAME}")
    assert str(tmp_path / "ckpts" / T5_NAME) in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ckpts" / "a" / "b")):  # not owner/name: a path
        load_bundle("ckpts/a/b")
    assert time.perf_counter() - start < 5


def test_the_grid_lists_every_missing_input_before_anything_runs(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    cells = grid_cells.expand("paper", root=tmp_path, data_root=str(empty), checkpoints=str(tmp_path / "none"))
    with pytest.raises(grid.GridError) as err:
        execute.check_inputs(cells)
    msg = str(err.value)
    for piece in (T5_NAME, VICUNA_NAME, "scienceqa/", "iconqa/", "vizwiz/", "flickr30k/", "huggingface-cli download"):
        assert piece in msg, piece
    assert "flan-t5-xxl" not in msg  # the model-size axis is optional
    execute.check_inputs(grid_cells.expand("paper", root=tmp_path, data_root=str(world["data"]),
                                  checkpoints=str(world["checkpoints"])))  # all there: no error


# 6. a paper study without the larger checkpoints: those cells are 'not run', the rest exits 0 ---------------------
def test_model_size_cells_without_their_checkpoints_are_not_run_and_do_not_fail(world, tmp_path):
    cells = grid_cells.expand("paper", root=tmp_path, data_root=str(world["data"]), checkpoints=str(world["checkpoints"]))
    cell = next(c for c in cells if c.name == "open_scaling_model_t5_iconqa")
    result = schedule.run_grid([cell], out_dir=tmp_path / "nb", log=lambda m: None)
    assert result.exit_status == 0 and result.outcomes[0].state == "not run"
    error = result.outcomes[0].error
    assert error.startswith("not run: needs") and "Salesforce/instructblip-flan-t5-xxl" in error
    from qformer_peft.report import grid_status_html

    assert "not run: needs" in grid_status_html(tmp_path / "nb", tmp_path)


# 7. AdaLoRA runs its whole rank schedule ---------------------------------------------------------------------------
def test_adalora_never_stops_before_its_schedule_ends(world, tmp_path):
    # lr 0: validation never improves after epoch 1, so patience 1 would stop LoRA at epoch 2
    result = run_experiment({**TINY, "benchmark": "iconqa", "model": str(world["t5"]), "setup": "qf-lora",
                             "method": "adalora", "rank": None, "max_epochs": 3, "patience": 1, "lr": 0.0,
                             "adalora_delta_t": 1, "data_root": str(world["data"] / "iconqa")}, out=tmp_path / "runs")
    assert result["epochs"] == 3 and not result["stopped_early"] and result["adalora_schedule"] == "complete"


# 8. the paper profile needs CUDA unless --allow-cpu ------------------------------------------------------------
def test_the_paper_profile_refuses_a_machine_without_cuda(world, tmp_path, monkeypatch, capsys):
    from qformer_peft import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["study", "--profile", "paper", "--data-root", str(world["data"]), "--checkpoints",
            str(world["checkpoints"]), "--out", str(tmp_path), "--only", "nothing"]
    assert cli.main(argv) == 2
    assert "--allow-cpu" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


# 9. LAVIS: .base_layer. keys map; a file of the other LLM is refused -----------------------------------------------
def test_lavis_full_file_from_a_peft_wrapped_llm_and_the_wrong_llm_kind(tmp_path):
    from test_lavis import lavis_state_dict, tiny

    from qformer_peft.models.lavis import load_lavis_checkpoint
    from qformer_peft.peft_setup import apply_peft

    source = apply_peft(tiny("t5", seed=1), "qf-fft+llm-lora", llm_targets="all", rank=2)
    state = {k.removeprefix("base_model.model."): v for k, v in source.state_dict().items()}
    lavis = {}
    for name, value in state.items():  # LAVIS keeps the peft wrapper inside t5_model: base_model.model. + base_layer
        key = lavis_state_dict.__globals__["to_lavis"](name, "t5")
        if key.startswith("t5_model."):
            key = "t5_model.base_model.model." + key.removeprefix("t5_model.")
        lavis[key] = value
    lavis = {k: v for k, v in lavis.items() if "qkv.bias" not in k}
    torch.save({"model": lavis}, tmp_path / "peft_full.pth")
    target = apply_peft(tiny("t5", seed=2), "qf-fft+llm-lora", llm_targets="all", rank=2)
    report = load_lavis_checkpoint(target, tmp_path / "peft_full.pth")
    assert not [k for k in report.unmatched if ".base_layer." in k]
    assert report.unmatched == []
    with pytest.raises(ValueError, match="t5 checkpoint .* cannot load into this llama model"):
        load_lavis_checkpoint(tiny("llama", seed=2), tmp_path / "peft_full.pth")


# 10, 11. export: the run's model as a plain transformers checkpoint; the report writes no ./cache ---------------
@pytest.mark.slow
def test_export_reproduces_the_runs_predictions_and_report_keeps_the_cwd_clean(world, tmp_path, monkeypatch):
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    from qformer_peft import cli
    from qformer_peft.run_inputs import load_examples
    from qformer_peft.evaluate import evaluate
    from qformer_peft.features import ImageEncoder
    from qformer_peft.models.build import Bundle, ImageProcessor

    config = ExperimentConfig.from_dict({**TINY, "benchmark": "iconqa", "model": str(world["llama"]),
                                         "setup": "qf-lora+llm-lora", "qf_sublayers": "all", "llm_targets": "all",
                                         "data_root": str(world["data"] / "iconqa")})
    run_experiment(config, out=tmp_path / "runs")
    (run,) = runs.iter_runs(tmp_path / "runs")
    readme = (run.adapter_dir / "README.md").read_text()
    assert "trainable.safetensors" in readme and "qformer-peft export" in readme
    assert cli.main(["export", str(run.path), "--out", str(tmp_path / "exported")]) == 0

    model = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "exported", local_files_only=True).eval()
    processor = InstructBlipProcessor.from_pretrained(tmp_path / "exported", local_files_only=True)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    bundle = Bundle(model, processor.qformer_tokenizer, processor.tokenizer, ImageProcessor(processor.image_processor),
                    "llama")
    images = ImageEncoder(model, bundle.image_processor)
    test = load_examples(config)["test"]
    _, predictions = evaluate(bundle, test, "iconqa", lambda chunk: images([e.image for e in chunk]), batch_size=4,
                              max_prompt_tokens=config.max_prompt_tokens)
    stored = runs.read_jsonl(run.path / "predictions.jsonl")
    assert [p["pred"] for p in predictions] == [p["pred"] for p in stored]
    for ours, theirs in zip(predictions, stored):  # the same model: the same candidate NLLs
        assert ours["nll"] == pytest.approx(theirs["nll"], abs=1e-4)

    monkeypatch.chdir(tmp_path / "runs")
    assert cli.main(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert not (tmp_path / "runs" / "cache").exists() and (tmp_path / "report" / "index.html").exists()


# the paper profile end to end on a CPU: a couple of cells, tiny sizes -------------------------------------------
@pytest.mark.slow
def test_the_paper_profile_runs_end_to_end_on_a_cpu_with_allow_cpu(world, tmp_path):
    from qformer_peft import cli

    argv = ["study", "--profile", "paper", "--allow-cpu", "--data-root", str(world["data"]), "--checkpoints",
            str(world["checkpoints"]), "--out", str(tmp_path), "--only", "adalora_llama_vizwiz|open_scaling_model_t5",
            "--train-limit", "8", "--val-limit", "4", "--test-limit", "4", "--max-epochs", "1", "--jobs", "2"]
    assert cli.main(argv) == 0  # the model-size cells lack their checkpoints: not run, not failed
    done = [r for r in runs.iter_runs(tmp_path / "runs" / "paper") if r.is_done()]
    assert len(done) == 3  # the claim seeds
    for r in done:
        assert r.config["llm"] == "llama" and r.config["train_limit"] == 8
        assert r.result["splits"]["test"] == "val" and r.result["adalora_schedule"] == "complete"
    page = (tmp_path / "reports" / "index.html").read_text()
    assert "open_scaling_model_t5_iconqa" in page and "not run: needs" in page

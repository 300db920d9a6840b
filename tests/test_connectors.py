"""Connectors (models/connectors.py), their alignment stage (pretrain/alignment.py) and the connector study's
claims (connector_study.py), on the tiny preset: 32 px images in 8 px patches (a 4x4 grid + CLS), a 2-layer
ViT, 8 queries, 64-wide everywhere."""
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from qformer_peft import connector_study, features, runs
from qformer_peft.config import ConfigError, ExperimentConfig
from qformer_peft.engine import load_trained, run_experiment
from qformer_peft.evaluate import candidate_nll
from qformer_peft.models import connectors
from qformer_peft.pretrain.alignment import ALIGNED_FILE
from qformer_peft.models.build import build_model
from qformer_peft.models.connectors import ConnectorSpec, GroupedLinear, PoolConnector, attach
from qformer_peft.models.inputs import encode_images, forward, image_features, make_batch
from qformer_peft.peft_setup import GROUPS, apply_peft, trainable_parameters

D = 64  # the tiny preset's width (ViT, Q-Former, LLM)
SPECS = {  # spec -> image tokens on the tiny preset
    ConnectorSpec("qformer"): 8,
    ConnectorSpec("qformer", 4, init="scratch"): 4,
    ConnectorSpec("pool"): 4,              # default: the largest square <= 8 queries
    ConnectorSpec("pool", 16): 16,
    ConnectorSpec("projector"): 16,        # every patch
    ConnectorSpec("projector", variant="linear"): 16,
    ConnectorSpec("bottleneck"): 2,        # the CLS token of each of the 2 layers
    ConnectorSpec("bottleneck", 1, "gelu"): 1,
}


def tiny(llm="t5", spec=None, seed=0):
    bundle = build_model("tiny", llm, seed=seed)
    if spec is not None:
        attach(bundle.model, spec, seed=seed)
    return bundle


def _pixels(bundle, n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- shapes, token counts, the forward ------------------------------------------------------------------

@pytest.mark.parametrize("llm", ["t5", "llama"])
@pytest.mark.parametrize("spec, tokens", list(SPECS.items()), ids=lambda s: getattr(s, "label", None))
def test_each_connector_feeds_its_token_count_and_the_batch_has_as_many_placeholders(spec, tokens, llm):
    bundle = tiny(llm, spec)
    assert connectors.image_token_count(bundle.model) == tokens
    pixels = _pixels(bundle)
    batch = make_batch(bundle, pixels, ["what color ?"] * 2, ["( a ) red"] * 2)
    assert int((batch["input_ids"] == bundle.model.config.image_token_index).sum()) == 2 * tokens
    embeds = encode_images(bundle.model, pixels)
    expected = (2, tokens if spec.kind == "bottleneck" else 17, D)  # bottleneck: one CLS token per chosen layer
    assert tuple(embeds.shape) == expected
    feats = image_features(bundle.model, embeds, batch["qformer_input_ids"], batch["qformer_attention_mask"])
    assert tuple(feats.pooler_output.shape) == (2, tokens, D)
    loss = forward(bundle.model, batch).loss  # the pixel path
    torch.testing.assert_close(loss, forward(bundle.model, batch, image_embeds=embeds).loss)
    loss.backward()


def test_the_budget_rules_name_what_is_valid():
    with pytest.raises(ValueError, match=r"8 tokens is not k\*k with k <= 4 \(the 4x4 patch grid\); choose one of "
                                         r"1, 4, 9, 16"):
        tiny(spec=ConnectorSpec("pool", 8))
    with pytest.raises(ValueError, match="feeds every patch: 16 tokens, not 4"):
        tiny(spec=ConnectorSpec("projector", 4))
    with pytest.raises(ValueError, match="3 CLS tokens but the ViT has 2 layers"):
        tiny(spec=ConnectorSpec("bottleneck", 3))
    with pytest.raises(ValueError, match="pretrained Q-Former has 8 queries; a budget of 4 starts from scratch"):
        tiny(spec=ConnectorSpec("qformer", 4))
    with pytest.raises(ValueError, match="only the Q-Former has pretrained weights"):
        ConnectorSpec("pool", init="pretrained")


def test_a_batch_built_for_another_connector_is_refused():
    bundle = tiny(spec=ConnectorSpec("pool", 4))
    other = tiny()  # Q-Former: 8 placeholders
    batch = make_batch(other, _pixels(other), ["what ?"] * 2, ["red"] * 2)
    with pytest.raises(ValueError, match=r"16 image placeholders in the batch but the connector gives \(2, 4\)"):
        forward(bundle.model, batch)


def test_a_scratch_qformer_is_redrawn_from_its_seed_and_keeps_nothing_pretrained():
    base, a, b = tiny(), tiny(spec=ConnectorSpec("qformer", 8, init="scratch"), seed=0), tiny(seed=0)
    attach(b.model, ConnectorSpec("qformer", 8, init="scratch"), seed=0)
    for (name, x), y in zip(a.model.qformer.state_dict().items(), b.model.qformer.state_dict().values()):
        assert torch.equal(x, y), name  # same seed, same weights
    assert not torch.equal(a.model.query_tokens, base.model.query_tokens)
    assert not torch.equal(a.model.qformer.encoder.layer[0].attention.attention.query.weight,
                           base.model.qformer.encoder.layer[0].attention.attention.query.weight)
    torch.testing.assert_close(a.model.vision_model.state_dict(), base.model.vision_model.state_dict())


# --- what each connector computes ---------------------------------------------------------------------

def test_pooling_is_a_mean_over_patch_blocks_in_row_major_order_and_ignores_cls():
    # 4x4 grid, patch i holds the value i; CLS holds 1000 and must not leak into any pooled token
    embeds = torch.cat([torch.full((1, 1, 3), 1000.0), torch.arange(16.0).view(1, 16, 1).expand(1, 16, 3)], dim=1)
    pooled = PoolConnector(3, 5, grid=4, side=2).pooled(embeds)  # [1, 4, 3]
    assert pooled[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]  # means of {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, ...
    x = torch.randn(2, 17, D)
    for side in (1, 2, 3, 4):  # 3 does not divide 4: overlapping windows, as torch defines them
        grid = x[:, 1:].transpose(1, 2).reshape(2, D, 4, 4)
        reference = torch.nn.AdaptiveAvgPool2d(side)(grid).flatten(2).transpose(1, 2)
        torch.testing.assert_close(PoolConnector(D, D, 4, side).pooled(x), reference)


def test_pooling_to_the_whole_grid_is_the_mlp_projector():
    pool, projector = tiny(spec=ConnectorSpec("pool", 16), seed=5), tiny(spec=ConnectorSpec("projector"), seed=5)
    x = torch.randn(2, 17, D)
    torch.testing.assert_close(pool.model.connector(x), projector.model.connector(x))


@pytest.mark.parametrize("variant, linear", [("linear", True), ("gelu", False)])
def test_the_bottleneck_projection_is_affine_without_its_gelu_and_not_with_it(variant, linear):
    torch.manual_seed(0)
    proj = connectors.BottleneckConnector(D, 48, (1, 2), variant)
    x, y, zero = torch.randn(3, 2, D), torch.randn(3, 2, D), torch.zeros(3, 2, D)

    def g(v):  # f minus its bias: linear iff f is affine
        return proj(v) - proj(zero)

    a, b = 1.7, -0.6
    close = torch.allclose(g(a * x + b * y), a * g(x) + b * g(y), atol=1e-5)
    assert close == linear


def test_grouped_projection_is_block_diagonal():
    torch.manual_seed(0)
    up = GroupedLinear(8, 6, groups=2)
    h = torch.randn(4, 8)
    moved = h.clone()
    moved[:, 4:] += torch.randn(4, 4)  # change only the second group's inputs
    out, out_moved = up(h), up(moved)
    torch.testing.assert_close(out[:, :3], out_moved[:, :3])  # the first group's outputs do not see them
    assert not torch.allclose(out[:, 3:], out_moved[:, 3:])


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_llm_adapters_start_as_the_identity_and_change_the_output_once_trained(llm):
    bundle = tiny(llm)
    lm = bundle.model.language_model
    ids = torch.tensor([[5, 6, 7, 8, 1]])
    kwargs = {"input_ids": ids, **({"decoder_input_ids": torch.tensor([[0, 5, 6]])} if llm == "t5" else {})}
    with torch.no_grad():
        before = lm(**kwargs).logits
        attach(bundle.model, ConnectorSpec("bottleneck"), seed=0)
        sites = connectors.adapter_sites(bundle.model)
        assert len(sites) == (8 if llm == "t5" else 4)  # T5: 2+2 blocks x (self-attention, FFN); LLaMA: 2 x 2
        torch.testing.assert_close(lm(**kwargs).logits, before, rtol=0, atol=0)
        adapter = getattr(lm.get_submodule(sites[0]), connectors.ADAPTER_ATTR)
        adapter.up.weight.normal_()
        assert not torch.allclose(lm(**kwargs).logits, before)


# --- trainable groups ---------------------------------------------------------------------------------

MLP = D * D + D + D * D + D  # Linear(64, 64) + GELU + Linear(64, 64)
BOTTLENECK = (D * 8 + 8) + (2 * 4 * 32 + D)  # dense 64 -> 8, grouped 8 -> 64 (2 groups)
ADAPTER = (D * 8 + 8) + (2 * 4 * 32 + D)  # down 64 -> 8, grouped up 8 -> 64


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_trainable_groups_are_exact_per_connector(llm):
    sites = 8 if llm == "t5" else 4
    qformer = sum(p.numel() for p in tiny(llm).model.qformer.parameters())
    expected = {
        ConnectorSpec("qformer"): {"qformer_full": qformer, "query_tokens": 8 * D, "projection": D * D + D},
        ConnectorSpec("qformer", 4, init="scratch"): {"qformer_full": qformer, "query_tokens": 4 * D,
                                                      "projection": D * D + D},
        ConnectorSpec("pool", 4): {"connector": MLP},
        ConnectorSpec("projector"): {"connector": MLP},
        ConnectorSpec("projector", variant="linear"): {"connector": D * D + D},
        ConnectorSpec("bottleneck"): {"connector": BOTTLENECK, "llm_adapter": sites * ADAPTER},
        ConnectorSpec("bottleneck", variant="gelu"): {"connector": BOTTLENECK, "llm_adapter": sites * ADAPTER},
    }
    for spec, groups in expected.items():
        counts = trainable_parameters(apply_peft(tiny(llm, spec).model, "baseline"))
        assert counts == {**dict.fromkeys(GROUPS, 0), **groups, "vit_layernorm": 2 * D}, spec.label
    # with LLM LoRA the connector is still trained in full; the Q-Former's LoRA setups are refused
    counts = trainable_parameters(apply_peft(tiny(llm, ConnectorSpec("bottleneck")).model, "qf-fft+llm-lora",
                                             llm_targets="attn", rank=2))
    assert counts["connector"] == BOTTLENECK and counts["llm_adapter"] == sites * ADAPTER and counts["llm_lora"] > 0
    assert counts["qformer_full"] == counts["query_tokens"] == counts["other"] == 0
    with pytest.raises(ValueError, match="adapts the Q-Former, which this model's connector replaces"):
        apply_peft(tiny(llm, ConnectorSpec("pool", 4)).model, "qf-lora", qf_sublayers="all", rank=2)


def test_config_fields_are_validated_and_name_the_run():
    base = {"setup": "baseline", "qf_sublayers": None, "rank": None}
    cfg = ExperimentConfig(connector="bottleneck", connector_variant="gelu", align_steps=300, **base)
    assert cfg.run_name == "iconqa_bottleneck-gelu-a300_baseline_s42"
    assert ExperimentConfig(connector="qformer", connector_tokens=4, connector_init="scratch", **base).run_name \
        == "iconqa_qformer4-scratch_baseline_s42"
    assert ExperimentConfig().run_name == "iconqa_qf-lora_qf-all_r8_s42"  # the paper's runs keep their names
    for changes, message in [({"connector": "pool", "connector_variant": "gelu"}, "does not exist for connector 'pool'"),
                             ({"connector": "pool", "connector_init": "pretrained"}, "only the Q-Former"),
                             ({"connector_tokens": 0}, "connector_tokens must be >= 1"),
                             ({"align_steps": -1}, "align_steps must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig(**{**base, **changes})


# --- end to end: alignment, training, reload -------------------------------------------------------------

RUN = {"benchmark": "iconqa", "model": "tiny", "llm": "t5", "setup": "baseline", "qf_sublayers": None, "rank": None,
       "max_epochs": 1, "batch_size": 8, "train_limit": 8, "val_limit": 4, "test_limit": 4, "seed": 3,
       "align_steps": 2}


@pytest.mark.parametrize("spec", [{"connector": "qformer", "connector_init": "scratch", "connector_tokens": 4},
                                  {"connector": "pool", "connector_tokens": 4}, {"connector": "projector"},
                                  {"connector": "bottleneck"}], ids=lambda s: s["connector"])
def test_run_experiment_aligns_then_trains_only_the_connector(spec, world, tmp_path):
    out = tmp_path / "runs"
    result = run_experiment({**RUN, "data_root": str(world / "iconqa"), **spec}, out=out)
    (run,) = runs.iter_runs(out)
    tokens = {"qformer": 4, "pool": 4, "projector": 16, "bottleneck": 2}[spec["connector"]]
    assert result["connector"]["image_tokens"] == tokens and result["connector"]["kind"] == spec["connector"]
    al = result["alignment"]
    assert [c["step"] for c in al["curve"]] == [0, 1, 2] and al["examples"] == 2 * 16 and not al["cached"]
    assert [c["step"] for c in result["val_curve"]] == [1] and result["train_samples_per_s"] > 0
    assert result["trainable_params"]["other"] == 0
    aligned = load_file(run.adapter_dir / ALIGNED_FILE)
    trained = load_file(run.adapter_dir / "trainable.safetensors")
    assert set(aligned) == set(trained)  # the same tensors: aligned, then fine-tuned
    assert any(not torch.equal(aligned[n], trained[n]) for n in aligned)
    assert not any(n.startswith(("vision_model.encoder", "language_model.shared")) for n in trained)


def test_alignment_is_cached_and_a_reloaded_run_scores_as_it_did(world, tmp_path):
    config = {**RUN, "data_root": str(world / "iconqa"), "connector": "bottleneck", "setup": "qf-fft+llm-lora",
              "llm_targets": "attn", "rank": 2}
    cache = tmp_path / "cache"
    first = run_experiment(config, out=tmp_path / "a", cache_dir=cache)
    again = run_experiment(config, out=tmp_path / "b", cache_dir=cache)
    assert not first["alignment"]["cached"] and again["alignment"]["cached"]
    assert again["alignment"]["curve"] == first["alignment"]["curve"] and again["test"] == first["test"]
    (run,) = runs.iter_runs(tmp_path / "a")
    bundle, model = load_trained(run.path)
    preds = run.predictions()
    items = [p for p in preds][:2]
    from qformer_peft.run_inputs import load_examples

    test = {e.id: e for e in load_examples(ExperimentConfig.from_dict(config))["test"]}
    examples = [test[p["id"]] for p in items]
    embeds = features.ImageEncoder(model, bundle.image_processor)([e.image for e in examples])
    nll = candidate_nll(bundle, embeds, [e.prompt for e in examples], [e.candidates for e in examples], model=model)
    for p, scores in zip(items, nll):
        assert [round(float(v), 4) for v in scores] == pytest.approx([round(v, 4) for v in p["nll"]], abs=2e-4)


def test_the_bottleneck_caches_cls_tokens_apart_from_the_last_hidden_state(tmp_path):
    plain, bottleneck = tiny(), tiny(spec=ConnectorSpec("bottleneck"))
    a = features.FeatureCache(plain.model, plain.image_processor, tmp_path)
    b = features.FeatureCache(bottleneck.model, bottleneck.image_processor, tmp_path)
    assert b.prefix == a.prefix + "-cls1_2"  # same ViT, another entry


# --- the study's claims ----------------------------------------------------------------------------------

def _study_frame(pool_minus_qformer: float, gelu_minus_linear: float, chance: float = 33.3) -> pd.DataFrame:
    """Runs of pool16, qformer16-scratch and the two bottlenecks on 3 seeds; pooling's accuracy, validation curve
    and held-in loss are ahead of the Q-Former's by pool_minus_qformer (points; loss / 100)."""
    rows = []
    for seed, base_noise in zip((1, 2, 3), (0.3, -0.2, 0.1)):
        for label, acc in (("pool", 60 + pool_minus_qformer), ("qformer", 60), ("bottleneck-linear", 50),
                           ("bottleneck-gelu", 50 + gelu_minus_linear)):
            noise = base_noise * (1.5 if label in ("pool", "bottleneck-gelu") else 1.0)  # paired differences spread
            kind, _, variant = label.partition("-")
            spec = {"connector": kind, "connector_tokens": 16 if kind in ("pool", "qformer") else None,
                    "connector_variant": variant or None, "connector_init": "scratch" if kind == "qformer" else None}
            curve = [{"epoch": e, "step": 10 * e, "score": acc + noise - 10 / e} for e in (1, 2, 3)]
            loss = 1.0 - {"pool": pool_minus_qformer / 100, "bottleneck-gelu": gelu_minus_linear / 100}.get(
                label if kind == "bottleneck" else kind, 0) + noise / 1000
            align = [{"step": s, "val_loss": loss + 1 / (s + 1)} for s in (0, 5, 10)]
            rows.append({"run_id": f"{label}{seed}", "path": "", "state": "done", "llm": "t5", "benchmark": "iconqa",
                         "seed": seed, "tags": ["scale:embedded", connector_study.STUDY_TAG], **spec,
                         "acc": acc + noise, "trainable": 1, "result.connector.image_tokens": spec["connector_tokens"],
                         "result.val_curve": curve, "result.alignment.curve": align, "align_steps": 10,
                         "chance": chance, "n_test": 300})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("pool_gap, gelu_gap, verdicts", [
    (3.0, 0.0, {"DeCo-acc": "holds", "DeCo-conv": "holds", "DeCo-conv-task": "holds", "BA-linear": "holds",
                "BA-linear-align": "holds"}),
    (-5.0, 5.0, {"DeCo-acc": "does not hold", "DeCo-conv": "does not hold", "DeCo-conv-task": "does not hold",
                 "BA-linear": "does not hold", "BA-linear-align": "does not hold"}),
])
def test_connector_claims_flip_with_the_data(pool_gap, gelu_gap, verdicts):
    claims = {c["id"]: c for c in connector_study.connector_claims(_study_frame(pool_gap, gelu_gap))}
    assert {k: claims[k]["verdict"] for k in verdicts} == verdicts
    assert claims["BA-projector"]["verdict"] == "not resolvable at this scale"  # no projector runs: nothing to judge
    assert "--extended" in claims["BA-projector"]["resolve"]
    assert claims["DeCo-acc"]["scale"] == "embedded" and "16 tokens, t5/iconqa (10 alignment steps): pool16" in claims["DeCo-acc"]["evidence"]
    # an early-stopped curve is compared on the epochs both runs have
    assert connector_study.mean_gap([60, 70, 90], [50, 80]) == pytest.approx(0.0)


def test_accuracy_claims_between_connectors_that_learned_nothing_are_not_resolvable():
    # 60% where guessing gives 58% (n=300: the 95% binomial interval reaches 63.6): pooling "matching" the
    # Q-Former says nothing; the held-in loss along the alignment still compares them
    claims = {c["id"]: c for c in connector_study.connector_claims(_study_frame(0.5, 0.0, chance=58.0))}
    assert claims["DeCo-acc"]["verdict"] == claims["BA-linear"]["verdict"] == "not resolvable at this scale"
    assert "within the 95% binomial interval of chance 58.0%" in claims["DeCo-acc"]["evidence"]
    assert claims["DeCo-conv"]["verdict"] == "holds"


def test_the_notebook_defaults_build_valid_smoke_sized_configs_for_every_connector():
    import ast

    import nbformat

    from qformer_peft import grid_cells

    nb = nbformat.read(str(grid_cells.NOTEBOOKS_DIR / "30_connectors.ipynb"), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    p = {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body for t in n.targets}
    configs = connector_study.cell_configs(**p)
    assert [dict(c) for c in p["connectors"]] == [dict(c) for c in connector_study.SMOKE_CONNECTORS]
    assert {c.connector for c in configs} == set(connectors.KINDS) and p["data_size"] == "smoke"
    assert all(c.model == "tiny" and c.setup == "baseline" and c.align_steps <= 8 and c.train_limit <= 64
               for c in configs)
    for c in configs:  # every default budget exists on the tiny preset
        connectors.resolve(build_model("tiny", "t5").model, connectors.spec_of(c))


def test_two_alignments_of_the_same_connector_at_once_train_it_once(world, tmp_path):
    """Two notebooks of a grid aligning the same connector side by side: the second waits for the first's
    result and reads it (a per-alignment lock) instead of training it again."""
    import threading

    from qformer_peft.pretrain.alignment import align_connector

    bundles = [tiny(spec=ConnectorSpec("pool", 4)) for _ in range(2)]
    results: list = [None, None]

    def align(i):
        results[i] = align_connector(bundles[i], world, steps=3, seed=0, cache_dir=tmp_path / "aligned",
                                     label="pool4")

    threads = [threading.Thread(target=align, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["curve"] == results[1]["curve"]

"""The training loop: optimizer groups, schedules, what each setup trains, best-epoch restore, early
stopping, and AdaLoRA's budget."""
import copy
import itertools
import math

import pytest
import torch
from PIL import Image, ImageDraw

from qformer_peft import features, peft_setup
from qformer_peft.evaluate import Example
from qformer_peft.features import FeatureCache, ImageEncoder
from qformer_peft.models.build import build_model, default_tokenizers
from qformer_peft.models.inputs import forward, make_batch, unwrap
from qformer_peft.train import (adalora_ranks, adamw, fit, make_schedule, optimizer_update, param_groups,
                                seed_everything, steps_per_epoch, trainable_state)

WORDS = "<Image> Question: what color is it ? Options: ( a ) b red blue . Short answer:".split()
SETUPS = [("baseline", None, None, None), ("qf-fft+llm-lora", None, "all", 2), ("qf-lora", "all", None, 2),
          ("qf-lora+llm-lora", "all", "all", 2)]


def _bundle(llm="t5"):
    qtok, ltok = default_tokenizers(WORDS)
    return build_model("tiny", llm, qformer_tokenizer=qtok, llm_tokenizer=ltok, seed=1)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    out = []
    for i in range(6):
        color = ["red", "blue"][i % 2]
        img = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(img).rectangle([4 + i, 4, 24, 24 + i % 3], fill=color)
        img.save(folder / f"{i}.png")
        cands = ("(a) red", "(b) blue")
        out.append(Example(id=str(i), image=str(folder / f"{i}.png"), candidates=cands, answer=i % 2,
                           target=cands[i % 2], prompt="<Image> Question: what color is it ? Options: (a) red "
                           "(b) blue. Short answer:"))
    features.clear_memory()
    return out


def _batch(bundle, examples):
    pixels = bundle.image_processor([Image.open(e.image).convert("RGB") for e in examples])
    return make_batch(bundle, pixels, [e.prompt for e in examples], [e.target for e in examples])


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.05)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3)] and decay["weight_decay"] == 0.05
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(4,), (4,), (4,)] and no_decay["weight_decay"] == 0
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 0.05)


def test_adamw_is_fused_on_cpu_and_updates_as_the_reference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    fused = adamw(param_groups(model, 0.05), 1e-2)
    reference = torch.optim.AdamW(param_groups(twin, 0.05), lr=1e-2, betas=(0.9, 0.999), foreach=False)
    assert fused.defaults["fused"] and fused.param_groups[0]["weight_decay"] == 0.05
    x = torch.randn(32, 8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(5):
        for m, opt in ((model, fused), (twin, reference)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert (p - before[name]).abs().max() > 1e-3, name  # it trained
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # a device the fused kernel has no version for: the for-loop implementation
    meta = torch.nn.Parameter(torch.zeros(2, 2, device="meta"))
    assert not adamw([{"params": [meta], "weight_decay": 0.0}], 1e-3).defaults["fused"]


def test_schedules():
    def lrs(schedule, steps, **kw):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, per_step = make_schedule(opt, schedule, **kw)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out, per_step

    linear, per_step = lrs("linear", 4, max_epochs=4, steps_per_epoch=10, warmup_steps=0)
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25]) and not per_step  # per epoch, no warm-up, to 0
    cosine, per_step = lrs("cosine", 10, max_epochs=2, steps_per_epoch=5, warmup_steps=2)
    assert per_step and cosine[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert cosine[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert steps_per_epoch(33, 4, 2) == 5  # 9 micro-batches, the last group of one still steps



class _Allocator:
    """Stands in for AdaLoRA's tuner: records the step and the gradients update_and_allocate sees."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def update_and_allocate(self, step):
        self.seen.append((step, [None if p.grad is None else p.grad.clone() for p in self.model.parameters()]))


@pytest.mark.parametrize("scaled", [False, True])
def test_one_update_steps_then_lets_adalora_read_the_gradients_then_zeroes_them_then_advances_the_schedule(scaled):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    true = torch.autograd.grad(model(x).pow(2).sum(), list(model.parameters()))
    optimizer = adamw(param_groups(model, 0.0), 0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    scaler = torch.amp.GradScaler("cpu") if scaled else None  # the fp16 path (the scale is a power of 2: exact)
    tuner, before = _Allocator(model), [p.detach().clone() for p in model.parameters()]
    loss = model(x).pow(2).sum()
    (scaler.scale(loss) if scaled else loss).backward()
    optimizer_update(optimizer, scheduler, scaler=scaler, tuner=tuner, step=5)
    ((step, grads),) = tuner.seen
    assert step == 5 and all(torch.equal(g, t) for g, t in zip(grads, true))  # true (unscaled) gradients
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))  # the step happened first
    assert all(p.grad is None for p in model.parameters())
    assert scheduler.last_epoch == 1 and optimizer.param_groups[0]["lr"] == pytest.approx(0.05)

    # an fp16 overflow skips the step and hands AdaLoRA zeros for the inf/nan gradients
    if scaled:
        params = list(model.parameters())
        after_first = [p.detach().clone() for p in params]
        scaler.scale(model(x).pow(2).sum()).backward()
        params[0].grad[0, 0] = math.inf
        params[1].grad[0] = math.nan
        scale = scaler.get_scale()
        optimizer_update(optimizer, scaler=scaler, tuner=tuner, step=6)
        assert scaler.get_scale() < scale and all(torch.equal(p, a) for p, a in zip(params, after_first))
        step, grads = tuner.seen[-1]
        assert step == 6 and all(bool(torch.isfinite(g).all()) for g in grads) and grads[0][0, 0] == 0


@pytest.mark.parametrize("setup, qf, llm_targets, rank", SETUPS)
def test_each_setup_updates_exactly_its_trainable_parameters(setup, qf, llm_targets, rank, examples):
    bundle = _bundle()
    seed_everything(0)
    model = peft_setup.apply_peft(bundle.model, setup, qf_sublayers=qf, llm_targets=llm_targets, rank=rank)
    counts = peft_setup.trainable_parameters(model)
    batch = _batch(bundle, examples[:4])
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-2)
    model.train()
    for _ in range(2):  # LoRA's B starts at 0, so A gets a gradient only from the second step on
        opt.zero_grad()
        forward(model, batch).loss.backward()
        opt.step()
    named = dict(unwrap(model).named_parameters())
    with_grad = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in named.items() if p.requires_grad}
    # Only the query outputs reach the LLM, so the text-token FFN of the LAST Q-Former layer (and its
    # LoRA) never gets a gradient: trainable by the ledger, unreachable by the loss.
    last = unwrap(model).config.qformer_config.num_hidden_layers - 1
    dead = {n for n in trainable if n.startswith((f"qformer.encoder.layer.{last}.intermediate.",
                                                  f"qformer.encoder.layer.{last}.output."))}
    assert dead  # every setup here trains that FFN (fully, or with LoRA on the 'all' sublayers)
    assert with_grad == trainable - dead
    assert sum(named[n].numel() for n in with_grad | dead) == sum(counts.values())
    assert counts["other"] == 0 and not any(n.startswith("vision_model.encoder") for n in with_grad)


def _fit(model, bundle, examples, scores, **kw):
    """fit() with a scripted validation metric per epoch; returns (result, weights after each epoch)."""
    script = iter(scores)
    snapshots = []
    cache = FeatureCache(bundle.model, bundle.image_processor)
    result = fit(model, bundle, examples, validate=lambda: ({"accuracy": next(script)}, []), primary="accuracy",
                 images=ImageEncoder(bundle.model, bundle.image_processor, cache=cache), lr=5e-3, batch_size=2,
                 on_epoch_end=lambda st: snapshots.append(st["weights"]), **kw)
    return result, snapshots


def test_best_epoch_is_restored_unmerged_and_patience_stops(examples):
    bundle = _bundle()
    seed_everything(0)
    model = peft_setup.apply_peft(bundle.model, "qf-lora", qf_sublayers="all", rank=2)
    result, snaps = _fit(model, bundle, examples, [50, 80, 60, 70, 75], max_epochs=5, patience=10)
    assert result.best_epoch == 2 and not result.stopped_early and len(result.history) == 5
    final = trainable_state(model)
    assert final.keys() == snaps[1].keys()
    assert all(torch.equal(final[k], snaps[1][k]) for k in final)
    assert not all(torch.equal(snaps[1][k], snaps[4][k]) for k in final)  # training did move on after it
    assert [h["lr"] for h in result.history] == pytest.approx([5e-3 * (1 - e / 5) for e in range(5)])
    from peft.tuners.lora import LoraLayer
    assert not any(m.merged for m in unwrap(model).modules() if isinstance(m, LoraLayer))

    bundle = _bundle()
    model = peft_setup.apply_peft(bundle.model, "qf-lora", qf_sublayers="all", rank=2)
    result, snaps = _fit(model, bundle, examples, [50, 40, 50, 60], max_epochs=4, patience=2)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_adalora_budget_penalty_and_final_ranks(examples):
    bundle = _bundle()
    seed_everything(0)
    per_epoch, epochs = steps_per_epoch(len(examples), 2, 1), 3
    schedule = {"init_r": 6, "target_r": 2, "total_step": per_epoch * epochs, "tinit": per_epoch, "tfinal": 2,
                "deltaT": 2}  # epoch 1 is the warm-up at full rank
    model = peft_setup.apply_peft(bundle.model, "qf-lora", qf_sublayers="all", adalora=schedule)
    n_modules = len(peft_setup.lora_module_names(model))

    # the orthogonality penalty is in the training loss (it is lost through PeftModel.forward)
    batch = _batch(bundle, examples[:2])
    plain = model(**batch).loss
    penalised = forward(model, batch).loss
    assert float((penalised - plain).detach()) > 0.01

    result, _ = _fit(model, bundle, examples, itertools.count(), max_epochs=epochs, patience=5)
    first, last = (r for r in (result.ranks[:n_modules], result.ranks[-n_modules:]))
    assert {r["rank"] for r in first} == {6} and {r["phase"] for r in last} == {"final"}
    assert sum(r["rank"] for r in last) == 2 * n_modules  # target_r is peft's AVERAGE final rank
    assert len({r["rank"] for r in last}) > 1  # the budget was reallocated, not cut evenly
    assert {r["sublayer"] for r in last} == {"self_attn", "cross_attn", "ffn"}
    assert {r["branch"] for r in last if r["sublayer"] == "ffn"} == {"text", "query"}
    assert {r["layer"] for r in last if r["sublayer"] == "cross_attn"} == {0}  # every 2nd layer, 0-based
    assert adalora_ranks(peft_setup.apply_peft(_bundle().model, "qf-lora", qf_sublayers="all", rank=2),
                         step=0, epoch=0, phase="epoch") == []


@pytest.mark.parametrize("llm", ["t5", "llama"])
def test_fused_lora_trains_as_peft_does_and_keeps_the_cache_exact(llm, examples):
    """fit()'s LoRA path (lora_fused.fuse_lora: one autograd node a module) against peft's own forward, same seed:
    the losses of 4 training steps agree to 1e-5 (relative), the gradients at the same weights to float
    rounding; with the fused path the cached-feature loss still equals the pixel path's bit for bit."""
    from qformer_peft.lora_fused import fuse_lora
    from qformer_peft.train import backward_step

    runs = []
    for fused in (True, False):
        bundle = _bundle(llm)
        seed_everything(0)
        model = peft_setup.apply_peft(bundle.model, "qf-lora+llm-lora", qf_sublayers="all", llm_targets="all", rank=2)
        assert fuse_lora(model, fused) == len(peft_setup.lora_module_names(model)) > 0
        model.train()
        opt = adamw(param_groups(model, 0.05), 5e-2)  # a large rate: LoRA's B moves off 0 at once
        images = ImageEncoder(bundle.model, bundle.image_processor,
                              cache=FeatureCache(bundle.model, bundle.image_processor))
        losses = []
        for step in range(4):
            losses.append(backward_step(model, bundle, examples[step % 3 * 2:step % 3 * 2 + 2], images=images))
            opt.step()
            opt.zero_grad(set_to_none=True)
        runs.append((bundle, model, images, losses))
    (bundle, model, images, fused_losses), (*_, peft_losses) = runs
    assert fused_losses == pytest.approx(peft_losses, rel=1e-5)
    assert len(set(fused_losses)) == 4  # training moved the loss: the comparison has teeth

    twin = copy.deepcopy(model)  # the same weights, on peft's path
    assert fuse_lora(twin, False) > 0
    grads = []
    for m in (model, twin):
        backward_step(m, bundle, examples[:4], images=images)
        grads.append({k: p.grad for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in k for k in grads[0])
    for k, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][k], rtol=1e-4, atol=1e-5 * float(grads[1][k].abs().max()))

    model.eval()
    batch = _batch(bundle, examples[:4])
    with torch.no_grad():
        plain = model(**batch).loss
        cached = forward(model, {k: v for k, v in batch.items() if k != "pixel_values"},
                         image_embeds=images([e.image for e in examples[:4]])).loss
    assert torch.equal(plain, cached)


def test_fused_lora_leaves_autocast_and_adalora_to_peft(examples):
    from qformer_peft.lora_fused import fuse_lora

    bundle = _bundle()
    seed_everything(0)
    adalora = peft_setup.apply_peft(bundle.model, "qf-lora", qf_sublayers="all",
                                    adalora={"init_r": 4, "target_r": 2, "total_step": 10, "tinit": 1, "tfinal": 2,
                                             "deltaT": 1})
    assert fuse_lora(adalora) == 0  # AdaLoRA's SVD layers are not plain LoRA Linears
    bundle = _bundle()
    seed_everything(0)
    model = peft_setup.apply_peft(bundle.model, "qf-lora", qf_sublayers="all", rank=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a non-zero adapter, so the LoRA branch counts
    batch = _batch(bundle, examples[:2])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(**batch).loss
        assert fuse_lora(model) > 0
        assert torch.equal(model(**batch).loss, reference)  # under autocast the fused path steps aside

"""The frozen-feature cache: keyed by what determines a feature, exact, persistent; augmentation bypasses it."""
import random

import pytest
import torch
from PIL import Image, ImageDraw

from qformer_peft import features
from qformer_peft.features import (FeatureCache, ImageEncoder, encoder_identity, image_digest,
                                   preprocess_identity, random_resized_crop_flip)
from qformer_peft.models.build import ImageProcessor, build_model
from qformer_peft.models.inputs import encode_images, forward, make_batch


@pytest.fixture(scope="module")
def bundle():
    return build_model("tiny", "t5", seed=0)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, color in enumerate(["red", "blue", "red", "green"]):  # 0 and 2 are the same picture
        img = Image.new("RGB", (40, 36), "white")
        ImageDraw.Draw(img).ellipse([5, 5, 30, 30], fill=color)
        paths.append(str(tmp_path / f"img{i}.png"))
        img.save(paths[-1])
    features.clear_memory()
    yield paths
    features.clear_memory()


def test_keys_follow_content_preprocessing_and_encoder(bundle, images):
    assert image_digest(images[0]) == image_digest(images[2]) != image_digest(images[1])
    assert preprocess_identity(ImageProcessor.for_size(32)) != preprocess_identity(ImageProcessor.for_size(64))
    before = encoder_identity(bundle.model)
    layernorm = bundle.model.vision_model.post_layernorm.weight
    with torch.no_grad():
        layernorm.add_(1.0)  # trainable, after the cached output: must not change the key
        assert encoder_identity(bundle.model) == before
        layernorm.sub_(1.0)
        bundle.model.vision_model.encoder.layers[0].mlp.fc1.bias[0] += 1.0
        assert encoder_identity(bundle.model) != before
        bundle.model.vision_model.encoder.layers[0].mlp.fc1.bias[0] -= 1.0
    assert encoder_identity(bundle.model) == before


def test_cache_is_exact_persistent_and_computes_each_image_once(bundle, images, tmp_path):
    direct = encode_images(bundle.model, bundle.image_processor([Image.open(p).convert("RGB") for p in images]))
    cache = FeatureCache(bundle.model, bundle.image_processor, tmp_path / "cache")
    cache.precompute(images)
    assert cache.stats["computed"] == 3  # the repeated picture is encoded once
    assert torch.equal(cache(images), direct)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1

    features.clear_memory()  # a new process: everything comes from disk
    again = FeatureCache(bundle.model, bundle.image_processor, tmp_path / "cache")
    assert torch.equal(again(images[::-1]), direct.flip(0))
    assert again.stats["computed"] == 0 and again.stats["disk"] == 3


def test_large_precomputes_are_written_in_bounded_shards(bundle, images, tmp_path, monkeypatch):
    monkeypatch.setattr(FeatureCache, "SHARD_BYTES", 1)  # every batch of one image overflows a shard
    cache = FeatureCache(bundle.model, bundle.image_processor, tmp_path, batch_size=1)
    cache.precompute(images)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3 and not list(tmp_path.rglob("*.tmp"))
    features.clear_memory()
    again = FeatureCache(bundle.model, bundle.image_processor, tmp_path)
    assert torch.equal(again(images), cache(images)) and again.stats["disk"] == 3


def test_loss_is_identical_with_and_without_the_cache(bundle, images):
    batch = make_batch(bundle, bundle.image_processor([Image.open(p).convert("RGB") for p in images]),
                       ["<Image> a short image description:"] * 4, ["red", "blue", "red", "green"])
    cache = FeatureCache(bundle.model, bundle.image_processor)
    plain = bundle.model(**batch)
    cached = forward(bundle.model, {k: v for k, v in batch.items() if k != "pixel_values"}, image_embeds=cache(images))
    assert torch.equal(plain.loss, cached.loss)
    assert torch.equal(plain.logits, cached.logits)


def test_augmentation_crops_half_to_all_and_flips_deterministically(images):
    img = Image.open(images[0]).convert("RGB")
    a = [random_resized_crop_flip(img, random.Random(7)) for _ in range(2)]
    assert a[0].tobytes() == a[1].tobytes()  # same rng seed, same crop
    rng = random.Random(0)
    crops = [random_resized_crop_flip(img, rng) for _ in range(200)]
    fractions = [c.size[0] * c.size[1] / (40 * 36) for c in crops]
    assert min(fractions) > 0.45 and max(fractions) <= 1.0  # scale (0.5, 1), up to rounding
    assert len({c.size for c in crops}) > 20


def test_augmentation_refuses_the_cache(bundle):
    cache = FeatureCache(bundle.model, bundle.image_processor)
    with pytest.raises(ValueError, match="cannot use the feature cache"):
        ImageEncoder(bundle.model, bundle.image_processor, cache=cache, augment=True)

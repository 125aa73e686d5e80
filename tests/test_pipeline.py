"""The tf.data pipeline from the cache (paper section 3.1: batches, /255)."""
from __future__ import annotations

import numpy as np
import pytest

from ecgpaper.config import CLASS_CODES
from ecgpaper.data.audit import run_audit
from ecgpaper.data.discovery import discover
from ecgpaper.data.inventory import build_inventory
from ecgpaper.data.preprocess import PreprocessSettings, build_cache
from ecgpaper.data.splits import make_manifest
from ecgpaper.errors import UserError
from ecgpaper.model.pipeline import make_dataset, subset_arrays


@pytest.fixture
def cache_and_manifest(real_like_tree):
    inv = build_inventory(discover(real_like_tree), workers=2, progress=False)
    cache = build_cache(inv, real_like_tree, "arch", PreprocessSettings(32), workers=2, progress=False)
    return cache, make_manifest(run_audit(inv).files, "paper", seed=0)


def _epoch(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_subset_batches_are_scaled_and_one_hot(cache_and_manifest):
    cache, man = cache_and_manifest
    images, labels, rows = subset_arrays(cache, man, "test")
    assert len(images) == len(rows) == (man["subset"] == "test").sum()
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert [CLASS_CODES[i] for i in labels] == list(rows["label"])
    x, y = _epoch(make_dataset(images, labels, batch_size=8, shuffle=False))
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x, images / 255.0, atol=1e-6)  # order kept without shuffle
    np.testing.assert_array_equal(y.argmax(1), labels)
    assert y.shape == (len(labels), 4)


def test_shuffle_is_seeded(cache_and_manifest):
    cache, man = cache_and_manifest
    images, labels, _ = subset_arrays(cache, man, "train")
    a = _epoch(make_dataset(images, labels, batch_size=16, shuffle=True, seed=1))[1].argmax(1)
    b = _epoch(make_dataset(images, labels, batch_size=16, shuffle=True, seed=1))[1].argmax(1)
    c = _epoch(make_dataset(images, labels, batch_size=16, shuffle=True, seed=2))[1].argmax(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and sorted(a) == sorted(c)


def test_model_preprocess_input_option(cache_and_manifest):
    cache, man = cache_and_manifest
    images, labels, _ = subset_arrays(cache, man, "val")
    x, _ = _epoch(make_dataset(images, labels, batch_size=8, shuffle=False,
                               scaling="preprocess_input", model_name="VGG16"))
    # VGG16's "caffe" mode: BGR, ImageNet mean subtracted, 0-255 range
    expect = images[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(x, expect, atol=1e-3)
    with pytest.raises(UserError):
        make_dataset(images, labels, batch_size=8, shuffle=False, scaling="preprocess_input", model_name="AlexNet")


def test_limit_per_class_for_small_profiles(cache_and_manifest):
    cache, man = cache_and_manifest
    images, labels, rows = subset_arrays(cache, man, "train", limit_per_class=2)
    assert len(images) == 8 and rows["label"].value_counts().eq(2).all()

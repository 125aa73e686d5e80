"""The paper profile's own path (issue 19): each finding has a test that failed
before its fix (finding 1's overfit check, notebook 02's assert, runs in the
paper-mini notebook run, tests/test_paper_mini.py). Tiny sizes; the full measurement is benchmarks/bench_paper_recipe.py
(docs/training_recipe.md, "The paper recipe")."""
from __future__ import annotations

import json
from dataclasses import replace

import keras
import numpy as np
import pytest

from ecgpaper.data.prepare import prepare_data
from ecgpaper.model.backbones import batchnorm_layers
from ecgpaper.runs import experiments
from ecgpaper.runs.experiments import experiment_configs, load_run_data, scaled_configs
from ecgpaper.runs.runconfig import deviations
from ecgpaper.runs.store import runs_dir
from ecgpaper.runs.training import (
    build_run_model,
    float32_copy,
    precise_batchnorm,
    start_session,
    steady_epoch_seconds,
    train_run,
)

QUIET = dict(log=lambda *_: None)
SPEC = [dict(model="ResNet50", batch_size=16, learning_rate=1e-4, epochs=20)]


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """The smoke twin's paper split at 32 px (every backbone's smallest input)."""
    from conftest import point_paths

    mp = pytest.MonkeyPatch()
    point_paths(mp, tmp_path_factory.mktemp("paper-recipe"))
    try:
        prepared = prepare_data(profile="smoke", image_size=32, progress=False, **QUIET)
        yield prepared, load_run_data(prepared, "paper")
    finally:
        mp.undo()


@pytest.fixture
def float32_after():
    yield
    keras.config.set_dtype_policy("float32")


def _paper_config(dataset, model="ResNet50", **overrides):
    spec = [dict(model=model, batch_size=16, learning_rate=1e-4, epochs=20)]
    [config] = scaled_configs(spec, profile="paper", dataset=dataset, weights="none", **QUIET)
    return replace(config, image_size=32, **overrides)


def test_the_paper_recipe_is_the_papers_head_with_batchnorm_and_precise_statistics():
    [config] = scaled_configs(SPEC, profile="paper", dataset="d", weights="none", **QUIET)
    assert (config.recipe, config.head, config.bn_stats, config.scaling) == ("paper", "batchnorm", "precise", "rescale")
    said = " ".join(deviations(config))
    assert "batch normalization may be incorporated" in said and "PreciseBN" in said


def test_stale_batchnorm_statistics_are_replaced_before_anything_is_scored(smoke_data):
    """Finding 1: ResNet50's BatchNorm held statistics of other inputs (ImageNet's of
    caffe-scaled pixels; here: garbage), so inference mode answered every image alike."""
    _, data = smoke_data
    config = _paper_config("d")
    start_session(config)
    model = build_run_model(config, "all")
    layers = batchnorm_layers(model, trainable_only=True)
    assert len(layers) > 50 and model.get_layer("head_bn") in layers
    for layer in layers:  # statistics made for inputs ~100x larger, as ImageNet's under /255
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 100.0, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1e4, "float32"))
    x = data.train[0][:32].astype("float32") / 255.0
    stale = np.asarray(model(x, training=False))
    assert np.ptp(stale, axis=0).max() < 1e-3  # every image gets the same answer
    assert precise_batchnorm(model, config, data.train[0]) == len(layers)
    fresh = np.asarray(model(x, training=False))
    assert np.ptp(fresh, axis=0).max() > 1e-2 and len(set(fresh.argmax(axis=1))) > 1
    # every layer now holds statistics of its real inputs (the head's: the pooled features')
    assert all(float(np.max(layer.moving_variance)) < 1e4 for layer in layers)


def test_mixed_precision_is_on_when_reported_and_the_export_is_float32(smoke_data, float32_after):
    """Finding 3: clear_session() after set_global_policy() silently undid mixed precision."""
    prepared, data = smoke_data
    config = _paper_config(prepared.dataset, model="VGG16", mixed_precision=True, epochs=1)
    start_session(config)
    model = build_run_model(config, "all")
    assert model.get_layer("head_dense").compute_dtype == "float16"
    copy = float32_copy(model, config)
    assert copy.get_layer("head_dense").compute_dtype == "float32"
    for a, b in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    keras.config.set_dtype_policy("float32")
    run = train_run(config, data, verbose=0, **QUIET)
    metrics = json.loads((runs_dir(config.workspace) / run.run_id / "metrics.json").read_text())
    assert metrics["compute_dtype"] == "float16"
    assert keras.config.dtype_policy().name == "mixed_float16"  # what the run trained under
    keras.config.set_dtype_policy("float32")
    saved = keras.saving.load_model(runs_dir(config.workspace) / run.run_id / "model.keras", compile=False)
    assert saved.get_layer("head_dense").compute_dtype == "float32"  # CPU serving


def test_each_run_counts_its_own_gpu_peak(monkeypatch, float32_after):
    """Finding 7: TensorFlow's peak is the process's unless reset at the run's start."""
    import tensorflow as tf

    config = _paper_config("d", model="VGG16")  # before the fake GPU: float32, no XLA
    resets = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "reset_memory_stats", resets.append)
    start_session(config)
    assert resets == ["GPU:0"]
    assert keras.config.dtype_policy().name == "float32"


def test_epoch_times_leave_out_the_first_epochs_graph_building():
    """Finding 7: Fig. 6/7's mean carried epoch 1's tracing and XLA compiles."""
    assert steady_epoch_seconds([95.0, 61.0, 63.0]) == 62.0
    assert steady_epoch_seconds([70.0]) == 70.0


def test_the_input_ablation_reuses_the_vgg16_baseline_run():
    """Finding 7: the ablation retrained the VGG16 baseline under a new run id."""
    from ecgpaper.studies.input_ablation import ablation_configs

    for profile in ("paper", "smoke"):
        baseline = {c.model: c for c in experiment_configs("baseline", profile=profile, dataset="d",
                                                           weights="none", **QUIET)}
        ablation = ablation_configs(profile, "d", weights="none", **QUIET)
        same_as_baseline = [c for c in ablation if c.model == "VGG16" and c.scaling == baseline["VGG16"].scaling]
        assert len(same_as_baseline) == 1
        assert same_as_baseline[0].run_id("m") == baseline["VGG16"].run_id("m"), profile


def test_resolving_weights_once_per_process_keeps_run_ids_stable(monkeypatch):
    monkeypatch.setattr(experiments, "_RESOLVED", {})
    monkeypatch.setattr(experiments, "ensure_imagenet", lambda *a, **k: True)
    a = scaled_configs(SPEC, profile="paper", dataset="d", **QUIET)[0]
    b = scaled_configs(SPEC, profile="paper", dataset="d", **QUIET)[0]
    assert a.weights == "imagenet" and a.run_id("m") == b.run_id("m")


def test_paper_vgg16_has_batchnorm_after_every_convolution_and_starts_as_the_pretrained_network():
    """docs/training_recipe.md: whole-network Adam at 1e-3 collapsed VGG16 (no BatchNorm of its
    own); the paper recipe adds BatchNorm between each convolution and its ReLU (3.2), set to
    the identity on the training images, so training starts from the pretrained function."""
    from ecgpaper.model.backbones import build_model, conv_batchnorm_as_identity, conv_batchnorm_layers
    from ecgpaper.model.gradcam import _last_conv_layer_name, gradcam_model

    [vgg] = scaled_configs([dict(SPEC[0], model="VGG16")], profile="paper", dataset="d", weights="none", **QUIET)
    [resnet] = scaled_configs(SPEC, profile="paper", dataset="d", weights="none", **QUIET)
    assert vgg.conv_batchnorm and not resnet.conv_batchnorm  # ResNet50 has its own BatchNorm
    assert "additional training stability" in " ".join(deviations(vgg))

    keras.utils.set_random_seed(0)
    plain = build_model("VGG16", image_size=32, weights="none")
    model = build_run_model(replace(vgg, image_size=32), "all")
    assert len(conv_batchnorm_layers(model)) == 13  # VGG16's 13 convolutions
    for layer in plain.layers:  # the same pretrained weights (here: one random draw) in both
        if layer.weights and not layer.name.startswith(("head_", "predictions")):
            model.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (24, 32, 32, 3)).astype("float32")
    assert conv_batchnorm_as_identity(model, x, batch_size=8) == 13
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        want = np.asarray(keras.Model(plain.input, plain.get_layer(name).output)(x, training=False))
        got = np.asarray(keras.Model(model.input, model.get_layer(name + "_relu").output)(x, training=False))
        # float32: the identity BatchNorm's multiply-add and oneDNN's summation order move a value
        # by some ulps of the layer's largest one (a 3.5e-9 difference at a 2.3e-3 maximum, i.e.
        # 1.5e-6 of it, on this project's AVX-512 machine of 2026-12-07): 1e-5 of the maximum
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * np.abs(want).max())
    pooled = keras.Model(model.input, model.get_layer("block5_pool").output)
    np.testing.assert_allclose(np.asarray(pooled(x, training=True)), np.asarray(pooled(x, training=False)),
                               rtol=1e-2, atol=1e-4 * float(np.abs(np.asarray(pooled(x))).max()))
    # Grad-CAM reads the last block's activation, not the linear convolution before its BatchNorm
    assert _last_conv_layer_name(model) == "block5_conv3_relu"
    assert _last_conv_layer_name(plain) == "block5_conv3"
    heat_input = gradcam_model(model).outputs[0]
    assert float(np.asarray(keras.Model(model.input, heat_input)(x)).min()) >= 0  # after the ReLU
    with pytest.raises(Exception, match="VGG16"):
        build_model("ResNet50", image_size=32, weights="none", conv_batchnorm=True)

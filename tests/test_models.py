"""Model builders (ecgpaper.model.backbones): head, Grad-CAM reachability, trainability,
offline ImageNet handling and weights given by path. Tiny 32 px models."""
from __future__ import annotations

import re
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from ecgpaper.errors import UserError
from ecgpaper.model.backbones import LAST_CONV_LAYER, MODEL_NAMES, build_model, weights_status
from ecgpaper.model.imagenet import _BACKBONES

SIZE = 32  # the smallest input every backbone accepts


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache, as on a machine that never downloaded anything."""
    home = tmp_path / "keras-home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def write_notop_file(base: keras.Model, path: Path) -> None:
    """A backbone's weights in the legacy .h5 layout of Keras's notop files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)


def same_weights(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def backbone_weights(model: keras.Model) -> list:
    return [w for layer in model.layers if not layer.name.startswith(("head_", "predictions"))
            for w in layer.get_weights()]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_head_output_and_grad_cam_layer(name):
    model = build_model(name, image_size=SIZE, weights="none")
    assert model.name == f"{name.lower()}_ecg"
    assert [layer.name for layer in model.layers[-4:]] == \
        ["head_pool", "head_dense", "head_dropout", "predictions"]
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype("float32")
    proba = model.predict(x, verbose=0)
    assert proba.shape == (2, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # Grad-CAM: the last conv block's output is reachable from the model's input
    last = model.get_layer(LAST_CONV_LAYER[name])
    grad_model = keras.Model(model.inputs, [last.output, model.output])
    features, out = grad_model([x])
    assert len(features.shape) == 4 and out.shape == (2, 4)
    # ... and it is the last convolution: no Conv2D comes after it
    after = model.layers[model.layers.index(last) + 1:]
    assert not any(isinstance(layer, keras.layers.Conv2D) for layer in after)


def test_parameter_counts_and_trainable_parts():
    vgg = build_model("VGG16", image_size=SIZE, weights="none", dense_units=256)
    head = 512 * 256 + 256 + 256 * 4 + 4
    assert vgg.count_params() == 14_714_688 + head  # VGG16 notop: 14,714,688
    assert len(vgg.trainable_weights) == 26 + 4  # 13 conv layers + 2 dense layers

    frozen = build_model("ResNet50", image_size=SIZE, weights="none", train_base=False)
    assert frozen.count_params() == 23_587_712 + 2048 * 256 + 256 + 256 * 4 + 4
    base_layers = [layer for layer in frozen.layers if not layer.name.startswith(("head_", "predictions"))]
    assert sum(len(layer.trainable_weights) for layer in base_layers) == 0
    assert [w.path for w in frozen.trainable_weights] == [
        "head_dense/kernel", "head_dense/bias", "predictions/kernel", "predictions/bias"]


def test_batchnorm_frozen_only_when_fine_tuning_pretrained_weights(tmp_path):
    scratch = build_model("ResNet50", image_size=SIZE, weights="none")
    bn = [layer for layer in scratch.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(layer.trainable for layer in bn)
    path = tmp_path / "resnet.weights.h5"
    scratch.save_weights(path)
    tuned = build_model("ResNet50", image_size=SIZE, weights=path)
    for layer in tuned.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            assert layer.trainable


def test_fine_tuning_keeps_pretrained_batchnorm_statistics(tmp_path):
    path = tmp_path / "mobilenet.weights.h5"
    build_model("MobileNetV2", image_size=SIZE, weights="none").save_weights(path)
    model = build_model("MobileNetV2", image_size=SIZE, weights=path)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    bn, conv = model.get_layer("Conv_1_bn"), model.get_layer("Conv_1")
    before_bn, before_conv = bn.get_weights(), conv.get_weights()
    rng = np.random.default_rng(0)
    x = rng.random((8, SIZE, SIZE, 3)).astype("float32")
    y = np.eye(4)[rng.integers(0, 4, 8)]
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert same_weights(bn.get_weights(), before_bn)  # gamma, beta, moving mean/variance
    assert not same_weights(conv.get_weights(), before_conv)  # the backbone is fine-tuned


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("VGG16", image_size=SIZE, weights="none")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("head_dense").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="VGG16"):
        build_model("AlexNet", weights="none")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_imagenet_offline_fails_fast_with_the_file_to_place(name, keras_home):
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        build_model(name, image_size=SIZE, weights="imagenet")
    assert time.perf_counter() - start < 5
    status = weights_status(name, image_size=SIZE)
    message = str(err.value)
    assert status["file_name"] in message
    assert str(keras_home / "models" / status["file_name"]) in message
    assert status["url"] in message and "--weights none" in message
    assert not status["present"] and not status["usable"]


def test_weights_table_matches_keras_sources():
    src = Path(keras.__file__).parent / "src" / "applications"
    files = {"VGG16": "vgg16.py", "ResNet50": "resnet.py", "MobileNetV2": "mobilenet_v2.py",
             "EfficientNetB0": "efficientnet.py"}
    for name, file in files.items():
        text = (src / file).read_text()
        spec = _BACKBONES[name]
        if spec.md5:
            assert f'"{spec.md5}"' in text, name
        assert spec.url_folder in text.replace('"\n    "', "").replace('"\n        "', ""), name
    assert weights_status("MobileNetV2", image_size=128)["file_name"] == \
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5"
    assert weights_status("MobileNetV2", image_size=SIZE)["file_name"].endswith("_1.0_224_no_top.h5")
    assert weights_status("EfficientNetB0")["file_name"] == "efficientnetb0_notop.h5"
    assert re.fullmatch(r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5",
                        weights_status("ResNet50")["file_name"])


def test_placed_file_with_wrong_md5_is_reported_and_kept(keras_home, tmp_path):
    """Keras treats a cached file whose md5 differs as a broken download: it
    deletes it and tries the network. The builder must refuse before that."""
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    cached = keras_home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_notop_file(base, cached)
    status = weights_status("VGG16")
    assert status["present"] and status["path"] == str(cached)
    assert status["md5_ok"] is False and status["usable"] is False
    with pytest.raises(UserError, match="md5"):
        build_model("VGG16", image_size=SIZE, weights="imagenet")
    assert cached.exists()
    # the same file given by path loads into the backbone
    model = build_model("VGG16", image_size=SIZE, weights=cached)
    assert same_weights(backbone_weights(model), base.get_weights())


def test_cached_imagenet_file_is_loaded_by_keras_without_network(keras_home, monkeypatch):
    """MobileNetV2's file has no md5 in Keras, so a stand-in exercises the real
    weights="imagenet" path: Keras finds the file in its cache and loads it."""
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    status = weights_status("MobileNetV2", image_size=SIZE)
    write_notop_file(base, Path(status["path"]))
    assert weights_status("MobileNetV2", image_size=SIZE)["usable"]
    with pytest.raises(UserError, match="KERAS_HOME changed after Keras was imported"):
        build_model("MobileNetV2", image_size=SIZE, weights="imagenet")
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(keras_home))
    with pytest.warns(UserWarning, match="224"):  # Keras: 32 px loads the 224 px file
        model = build_model("MobileNetV2", image_size=SIZE, weights="imagenet")
    assert same_weights(backbone_weights(model), base.get_weights())


def test_weights_by_path_round_trip(tmp_path):
    first = build_model("VGG16", image_size=SIZE, weights="none")
    path = tmp_path / "vgg.weights.h5"
    first.save_weights(path)
    second = build_model("VGG16", image_size=SIZE, weights=str(path))
    assert same_weights(second.get_weights(), first.get_weights())


def test_weights_by_path_with_another_head_loads_the_backbone_only(tmp_path):
    three_classes = build_model("VGG16", image_size=SIZE, weights="none", num_classes=3)
    path = tmp_path / "vgg3.weights.h5"
    three_classes.save_weights(path)
    four = build_model("VGG16", image_size=SIZE, weights=path)
    assert same_weights(backbone_weights(four), backbone_weights(three_classes))
    assert not np.array_equal(four.get_layer("head_dense").get_weights()[0],
                              three_classes.get_layer("head_dense").get_weights()[0])


def test_bad_weight_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_model("VGG16", image_size=SIZE, weights=tmp_path / "missing.weights.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an HDF5 file")
    with pytest.raises(UserError, match="cannot load"):
        build_model("VGG16", image_size=SIZE, weights=junk)
    resnet = tmp_path / "resnet.weights.h5"
    build_model("ResNet50", image_size=SIZE, weights="none").save_weights(resnet)
    with pytest.raises(UserError, match="cannot load"):
        build_model("VGG16", image_size=SIZE, weights=resnet)
    with pytest.raises(UserError, match="weights='imagenet'"):
        build_model("EfficientNetB0", image_size=SIZE, weights=tmp_path / "efficientnetb0_notop.h5")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_finetune_top_trains_only_the_top_block_and_the_head(name):
    """The transfer recipe's fine-tune phase (docs/training_recipe.md): layers from
    TOP_BLOCK_START on train, everything below is frozen, BatchNorm stays frozen."""
    from ecgpaper.model.backbones import TOP_BLOCK_START, backbone_layers

    model = build_model(name, image_size=SIZE, weights="none", head="standardized",
                        finetune="top", bn_mode="frozen")
    layers = backbone_layers(model)
    names = [layer.name for layer in layers]
    start = names.index(TOP_BLOCK_START[name])
    assert 0 < start < len(layers)
    assert not any(layer.trainable for layer in layers[:start] if layer.weights)
    assert any(layer.trainable for layer in layers[start:] if layer.weights)
    assert not any(layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))
    assert model.get_layer("head_norm") is not None and model.get_layer("head_dense").trainable


def test_batchnorm_calibration_gives_a_frozen_random_backbone_usable_features():
    """Random MobileNetV2 in inference mode (BatchNorm mean 0, variance 1) shrinks
    every image to ~1e-12; after calibrate_batchnorm its pooled features differ
    between images, and no trainable weight changed."""
    from ecgpaper.model.backbones import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    model = build_model("MobileNetV2", image_size=SIZE, weights="none", finetune="none", bn_mode="frozen")
    pooled = keras.Model(model.input, model.get_layer("head_pool").output)
    x = np.random.default_rng(0).random((16, SIZE, SIZE, 3)).astype("float32")
    before = np.asarray(pooled(x, training=False))
    conv = [w.copy() for w in model.get_layer("Conv1").get_weights()]
    assert calibrate_batchnorm(model, x) == 52
    after = np.asarray(pooled(x, training=False))
    assert before.std(axis=0).max() < 1e-6 < after.std(axis=0).mean()
    assert same_weights(model.get_layer("Conv1").get_weights(), conv)
    assert not any(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_batchnorm_calibration_in_chunks_gives_the_whole_sets_mean():
    """calibrate_batchnorm passes CALIBRATION_BATCH images at a time (one pass over
    all 212 quick training images held 11 GB): the first BatchNorm layer's mean is
    the whole set's, its variance the mean of the chunks' (PreciseBN)."""
    from ecgpaper.model.backbones import calibrate_batchnorm

    x = np.random.default_rng(0).random((48, SIZE, SIZE, 3)).astype("float32")
    stats = {}
    for batch in (48, 16):
        keras.utils.set_random_seed(0)
        model = build_model("ResNet50", image_size=SIZE, weights="none", finetune="none", bn_mode="frozen")
        calibrate_batchnorm(model, x, batch_size=batch)
        layer = model.get_layer("conv1_bn")
        stats[batch] = (np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
        assert layer.momentum == 0.99 and not layer.trainable  # restored
    conv1 = keras.Model(model.input, model.get_layer("conv1_conv").output)
    chunks = [np.asarray(conv1(x[i:i + 16])) for i in range(0, 48, 16)]
    assert np.allclose(stats[16][0], np.concatenate(chunks).mean(axis=(0, 1, 2)), atol=1e-4)
    assert np.allclose(stats[16][0], stats[48][0], atol=1e-4)
    assert np.allclose(stats[16][1], np.mean([c.var(axis=(0, 1, 2)) for c in chunks], axis=0), rtol=1e-3, atol=1e-5)


def _variable_ids(model) -> set[int]:
    return {id(v) for v in [*model.variables, *model.optimizer.variables,
                            *(w for m in model.metrics for w in m.variables)]}


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_compile_for_fit_leaves_fit_no_variable_to_create(policy):
    """A tf.function whose first trace creates variables is traced twice: with plain
    ``compile`` the optimizer's slots appear inside fit's trace (ResNet50's first epoch:
    84.6 s instead of 47.3 s on 2 cores); after ``compile_for_fit`` fit creates none."""
    from ecgpaper.model.backbones import compile_for_fit

    x = np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(8) % 4, 4)

    def tiny():
        inputs = keras.Input((8, 8, 3))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
        return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", dtype="float32")(h))

    keras.mixed_precision.set_global_policy(policy)
    try:
        plain = tiny()
        plain.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
        before = _variable_ids(plain)
        plain.fit(x, y, batch_size=4, epochs=1, verbose=0)
        assert _variable_ids(plain) - before, "Keras now builds before tracing: compile_for_fit is moot"

        model = tiny()
        compile_for_fit(model, keras.optimizers.Adam(1e-3))
        before = _variable_ids(model)
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        assert _variable_ids(model) == before
        assert set(history.history) == {"loss", "accuracy"} and np.isfinite(history.history["loss"]).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")

"""Grad-CAM (ecgpaper.model.gradcam, the interpretability the paper's section
5.2 found missing): shapes and range, the backbones built by build_model,
and a model whose decision depends on a known image region gets its heat there."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from ecgpaper.errors import UserError
from ecgpaper.model.backbones import LAST_CONV_LAYER, build_model
from ecgpaper.model.gradcam import gradcam, gradcam_model, heat_fraction_in_box, overlay

SIZE = 32
SQUARE = 8


@pytest.mark.parametrize("name, cells", [("VGG16", 4), ("ResNet50", 2)])
def test_backbones_from_build_model(name, cells):
    """The default layer is the backbone's last conv block; no 'Graph disconnected'."""
    model = build_model(name, image_size=64, weights="none")
    grad_model = gradcam_model(model)
    assert grad_model.outputs[0].shape == model.get_layer(LAST_CONV_LAYER[name]).output.shape
    x = np.random.default_rng(0).random((3, 64, 64, 3)).astype("float32")
    proba, heat = gradcam(grad_model, x)
    assert proba.shape == (3, 4) and heat.shape == (3, cells, cells)
    np.testing.assert_allclose(proba, model(x, training=False).numpy(), rtol=1e-4, atol=1e-6)
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    for h in heat:  # each map is scaled by its own peak (or holds no heat at all)
        assert h.max() == pytest.approx(1.0, abs=1e-5) or h.max() == 0.0
    _, heat_for_class_2 = gradcam(grad_model, x, class_index=2)
    assert heat_for_class_2.shape == heat.shape


def test_a_nested_backbone_is_refused_with_the_fix():
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    nested = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base,
                               keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    with pytest.raises(UserError, match="functional API"):
        gradcam_model(nested)
    with pytest.raises(UserError, match="no layer 'nope'"):
        gradcam_model(build_model("VGG16", image_size=SIZE, weights="none"), "nope")


def _coloured_squares(rng: np.random.Generator, n: int):
    """Grey noise with one square at a random place; its colour is the class
    (0: red, 1: blue), so the evidence lies where the square is, nowhere else."""
    x = rng.uniform(0.3, 0.6, (n, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 2, n)
    corners = rng.integers(0, SIZE - SQUARE + 1, (n, 2))
    for img, label, (top, left) in zip(x, y, corners):
        img[top:top + SQUARE, left:left + SQUARE] = (1.0, 0.1, 0.1) if label == 0 else (0.1, 0.1, 1.0)
    return x, y, corners


@pytest.fixture(scope="module")
def square_model():
    """A tiny CNN trained for a few dozen steps on :func:`_coloured_squares`."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model(inputs, outputs, name="squares")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(1)
    x, y, _ = _coloured_squares(rng, 640)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)  # 40 steps
    x_test, y_test, corners = _coloured_squares(rng, 64)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.95, f"the tiny model did not learn the task (accuracy {accuracy:.2f})"
    return model, x_test, corners


def test_heat_lies_on_the_region_that_decides_the_class(square_model):
    model, x, corners = square_model
    grad_model = gradcam_model(model)  # no backbone name: the last 4-D layer
    assert grad_model.outputs[0].shape[1:3] == (16, 16)
    _, heat = gradcam(grad_model, x)
    inside, area, peaks_inside = [], [], 0
    for h, (top, left) in zip(heat, corners):
        margin = 2  # one feature-map cell around the square (2 pixels a cell)
        box = (max(0, left - margin) / SIZE, max(0, top - margin) / SIZE,
               min(SIZE, left + SQUARE + margin) / SIZE, min(SIZE, top + SQUARE + margin) / SIZE)
        inside.append(heat_fraction_in_box(h, box))
        area.append((box[2] - box[0]) * (box[3] - box[1]))
        row, col = np.unravel_index(np.argmax(h), h.shape)
        cells = h.shape[0]
        peaks_inside += (box[1] * cells <= row + 0.5 <= box[3] * cells
                         and box[0] * cells <= col + 0.5 <= box[2] * cells)
    # The hottest cell is on the square (every image, for 5 of 5 seeds tried), and
    # the square's neighbourhood, about 14 % of the image, holds far more than
    # its share of the heat (median 1.8x to 7x its area over those seeds).
    assert peaks_inside >= 0.9 * len(x)
    assert np.mean(area) < 0.15
    assert np.median(inside) > 1.5 * np.mean(area)


def test_heat_fraction_in_box_is_exact_for_coarse_maps():
    heat = np.array([[1.0, 0.0], [0.0, 3.0]])
    assert heat_fraction_in_box(heat, (0, 0, 1, 1)) == pytest.approx(1.0)
    assert heat_fraction_in_box(heat, (0, 0, 0.5, 0.5)) == pytest.approx(0.25)
    assert heat_fraction_in_box(heat, (0.5, 0.5, 1, 1)) == pytest.approx(0.75)
    # a box covering half of the bottom-right cell gets half of its mass
    assert heat_fraction_in_box(heat, (0.75, 0.5, 1, 1)) == pytest.approx(0.375)
    # the header band of a page: top 18 % (docs/design_notes.md, page geometry)
    assert heat_fraction_in_box(heat, (0, 0, 1, 0.18)) == pytest.approx(0.25 * 0.36)
    assert np.isnan(heat_fraction_in_box(np.zeros((7, 7)), (0, 0, 1, 1)))


def test_overlay_is_the_image_size_and_colours_the_hot_region():
    image = np.full((40, 60, 3), 255, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = overlay(image, heat, alpha=0.5)
    assert isinstance(out, Image.Image) and out.size == (60, 40) and out.mode == "RGB"
    pixels = np.asarray(out).astype(int)
    hot, cold = pixels[2, 2], pixels[-2, -2]
    assert hot[0] > hot[2]  # the jet map's hot end is red
    assert cold[2] > cold[0]  # its cold end is blue
    assert np.array_equal(np.asarray(overlay(image, heat, alpha=0.0)), image)


def test_gradcam_differentiates_the_class_score_before_softmax():
    """A confident prediction (probability 1.0 in float32) still gets a heat map: the
    softmax probability's gradient vanishes there, the logit's does not."""
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, name="last_conv")
    h = keras.layers.GlobalAveragePooling2D()(conv(inputs))
    dense = keras.layers.Dense(2, activation="softmax", use_bias=False)
    model = keras.Model(inputs, dense(h))
    conv.set_weights([np.array([1.0, 0.0], "float32").reshape(1, 1, 1, 2)])
    dense.set_weights([np.array([[40.0, -40.0], [0.0, 0.0]], "float32")])
    x = np.zeros((1, 8, 8, 1), "float32")
    x[0, 2, 5] = 64.0  # one bright pixel: mean 1.0 -> logits (40, -40)
    grad_model = gradcam_model(model)
    features, logits, proba = (np.asarray(t) for t in grad_model(x))
    assert np.allclose(logits, [[40.0, -40.0]]) and proba[0, 0] == 1.0  # saturated in float32
    p, heat = gradcam(grad_model, x)
    assert np.allclose(p, proba)
    # d logit_0 / d feature channel 0 = 40 / 64 per cell: the map is the bright pixel, peak 1
    assert heat[0, 2, 5] == pytest.approx(1.0) and heat[0].sum() == pytest.approx(1.0)

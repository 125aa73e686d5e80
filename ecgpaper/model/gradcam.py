"""Grad-CAM heat maps: which part of the ECG page drove the decision.

The paper's section 5.2 names the missing interpretability as a limitation;
Grad-CAM (Selvaraju et al., 2017) answers it for any model built by
:func:`ecgpaper.model.backbones.build_model`: the gradient of the class score with
respect to the last convolutional block's output, averaged over space, weighs
that block's feature maps; their ReLU'd sum is the heat map. The class score
is the logit, BEFORE the softmax, as in the paper: the gradient of a softmax
probability vanishes as the probability nears 1, so the maps of confident
predictions would saturate to nothing.

Both the probabilities and the heat map come out of ONE forward pass under a
``GradientTape``: the backward pass runs from the class score down to the
last convolutional block only (through the small head), so an explained
prediction costs about one forward pass, which is what lets the web service
(section 3.4) return a heat map with every answer.
"""
from __future__ import annotations

import keras
import numpy as np
from PIL import Image

from ecgpaper.errors import UserError
from ecgpaper.model.backbones import CONV_RELU_SUFFIX, LAST_CONV_LAYER


def _last_conv_layer_name(model: keras.Model) -> str:
    """The backbone's ``LAST_CONV_LAYER`` if the model has one, else the last
    layer with a 4-D (batch, height, width, channels) output."""
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise UserError(
            f"model {model.name!r} holds the sub-model(s) {nested} as single layers, which hides "
            "their convolutional layers from Grad-CAM ('Graph disconnected'). Build the head with "
            "the functional API on the backbone's own input and output, as "
            "ecgpaper.model.backbones.build_model does.")
    names = {layer.name for layer in model.layers}
    # with conv_batchnorm (backbones.insert_conv_batchnorm) the block's activation is its own layer
    names_after_activation = {n for n in names if n + CONV_RELU_SUFFIX not in names}
    for backbone, layer_name in LAST_CONV_LAYER.items():
        if model.name == f"{backbone.lower()}_ecg" and layer_name in names:
            return layer_name if layer_name in names_after_activation else layer_name + CONV_RELU_SUFFIX
    for layer_name in LAST_CONV_LAYER.values():
        if layer_name in names:
            return layer_name if layer_name in names_after_activation else layer_name + CONV_RELU_SUFFIX
    for layer in reversed(model.layers):
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4:
            return layer.name
    raise UserError(f"model {model.name!r} has no layer with a 4-D (image-like) output for Grad-CAM")


def _class_scores(model: keras.Model):
    """The model's pre-softmax class scores as a symbolic tensor: the final
    Dense layer's affine part (a linear copy of it, same weights) when it ends
    in a softmax, the input of a final softmax Activation, else the output."""
    last = model.layers[-1]
    softmax = getattr(keras.activations, "softmax")
    if isinstance(last, keras.layers.Dense) and last.activation is softmax:
        linear = keras.layers.Dense(last.units, activation=None, use_bias=last.use_bias, dtype="float32",
                                    name=f"{last.name}_logits")
        logits = linear(last.input)
        linear.set_weights(last.get_weights())
        return logits
    if isinstance(last, keras.layers.Activation) and last.activation is softmax:
        return last.input
    return model.output


def gradcam_model(model: keras.Model, layer_name: str | None = None) -> keras.Model:
    """A model with outputs ``[conv output, class scores before softmax,
    probabilities]`` for :func:`gradcam`.

    ``layer_name`` defaults to the backbone's last convolutional block
    (``backbones.LAST_CONV_LAYER``), else the model's last 4-D output layer.
    """
    name = layer_name or _last_conv_layer_name(model)
    try:
        layer = model.get_layer(name)
    except ValueError:
        raise UserError(f"model {model.name!r} has no layer {name!r} at its top level; "
                        "give the name of one of its convolutional layers") from None
    return keras.Model(model.inputs, [layer.output, _class_scores(model), model.output],
                       name=f"{model.name}_gradcam")


def gradcam_tensors(grad_model: keras.Model, x, class_index=None):
    """TensorFlow core of :func:`gradcam` (usable inside a ``tf.function``).

    Returns ``(probabilities (n, classes), heat maps (n, h, w))``, each heat
    map scaled to [0, 1] by its own maximum (all zeros when nothing in the
    feature maps argues for the class).
    """
    import tensorflow as tf

    with tf.GradientTape() as tape:
        features, logits, probabilities = grad_model(x, training=False)
        if class_index is None:
            target = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        else:
            target = tf.broadcast_to(tf.cast(class_index, tf.int32), tf.shape(probabilities)[:1])
        score = tf.gather(tf.cast(logits, tf.float32), target, batch_dims=1)  # pre-softmax
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", features, weights))
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    heatmaps = tf.math.divide_no_nan(cam, peak)
    return probabilities, heatmaps


def gradcam(grad_model: keras.Model, x_batch: np.ndarray, class_index: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(n, classes)`` and Grad-CAM heat maps ``(n, h, w)`` in [0, 1].

    ``x_batch`` is the float32 model input (already scaled as in training);
    ``class_index`` None explains each image's predicted class.
    """
    import tensorflow as tf

    probabilities, heatmaps = gradcam_tensors(
        grad_model, tf.convert_to_tensor(x_batch, tf.float32), class_index)
    return probabilities.numpy(), heatmaps.numpy()


def overlay(image_uint8_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45,
            colormap: str = "jet") -> Image.Image:
    """The heat map, resized to the image and coloured, blended over it."""
    import matplotlib

    image = np.asarray(image_uint8_rgb, dtype=np.uint8)
    height, width = image.shape[:2]
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    heat = np.clip(np.asarray(heat.resize((width, height), Image.Resampling.BILINEAR)), 0.0, 1.0)
    colours = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * image[..., :3].astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


def heat_fraction_in_box(heatmap: np.ndarray, box_fractions) -> float:
    """Fraction of the heat map's mass inside ``box_fractions`` = (left, top,
    right, bottom) as fractions of width and height.

    Each heat-map cell counts with the part of its area inside the box, so the
    answer is exact for coarse maps (7 x 7 for VGG16 at 224 px). NaN when the
    map holds no heat at all. Used to ask whether a model looks at the header
    band (patient id, sex) instead of the traces (docs/design_notes.md, page geometry).
    """
    heat = np.asarray(heatmap, dtype=np.float64)
    total = heat.sum()
    if total <= 0:
        return float("nan")
    left, top, right, bottom = box_fractions

    def overlap(n: int, lo: float, hi: float) -> np.ndarray:
        edges = np.linspace(0.0, 1.0, n + 1)
        return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None) * n

    weights = np.outer(overlap(heat.shape[0], top, bottom), overlap(heat.shape[1], left, right))
    return float((heat * weights).sum() / total)

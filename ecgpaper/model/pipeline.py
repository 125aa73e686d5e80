"""``tf.data`` input pipeline from the uint8 cache (paper section 3.1).

A manifest subset (train / val / test) becomes batches of ``(images, one-hot
labels)``: seeded shuffle, batch, pixel scaling, prefetch. Scaling is the
paper's ``/255`` by default (section 3.1.1), or the backbone's own
``keras.applications.<model>.preprocess_input`` ("caffe"/"torch"/"tf" modes)
as an option whose effect the package can measure.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ecgpaper.config import CLASS_CODES
from ecgpaper.data.preprocess import ImageCache
from ecgpaper.errors import UserError

SCALINGS = ("rescale", "preprocess_input")

#: keras.applications module per backbone, for ``scaling="preprocess_input"``
_PREPROCESS_MODULES = {
    "VGG16": "vgg16", "ResNet50": "resnet50", "MobileNetV2": "mobilenet_v2",
    "EfficientNetB0": "efficientnet",
}


def labels_to_indices(labels) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(CLASS_CODES)}
    try:
        return np.array([lookup[lab] for lab in labels], dtype=np.int32)
    except KeyError as exc:
        raise UserError(f"unknown class label {exc.args[0]!r}; expected {CLASS_CODES}") from None


def scaling_fn(scaling: str = "rescale", model_name: str | None = None):
    """uint8 image batch -> float32 model input, as a TensorFlow function.

    EfficientNetB0 is the exception: Keras builds its own Rescaling and
    Normalization layers into the model, so it always gets raw 0-255 pixels.
    """
    import tensorflow as tf

    if model_name == "EfficientNetB0" and scaling in SCALINGS:
        return lambda x: tf.cast(x, tf.float32)
    if scaling == "rescale":
        return lambda x: tf.cast(x, tf.float32) / 255.0
    if scaling == "preprocess_input":
        import importlib

        if model_name not in _PREPROCESS_MODULES:
            raise UserError(f"preprocess_input needs a known model, one of {list(_PREPROCESS_MODULES)}")
        mod = importlib.import_module(f"keras.applications.{_PREPROCESS_MODULES[model_name]}")
        return lambda x: mod.preprocess_input(tf.cast(x, tf.float32))
    raise UserError(f"scaling must be one of {SCALINGS}, not {scaling!r}")


def subset_arrays(cache: ImageCache, manifest: pd.DataFrame, subset: str,
                  limit_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """uint8 images and integer labels of one subset (in manifest order).

    ``limit_per_class`` keeps the first N files of each class (smoke profile).
    """
    rows = manifest[manifest["subset"] == subset]
    if limit_per_class:
        rows = rows.groupby("label", sort=False, group_keys=False).head(limit_per_class)
    if rows.empty:
        raise UserError(f"subset {subset!r} of the manifest is empty")
    images = np.asarray(cache.images()[cache.rows_for(rows["path"])])
    return images, labels_to_indices(rows["label"]), rows.reset_index(drop=True)


def make_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 shuffle: bool, seed: int = 0, scaling: str = "rescale",
                 model_name: str | None = None, num_classes: int = len(CLASS_CODES)):
    """``tf.data.Dataset`` of ``(float32 images, one-hot labels)`` batches."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    scale = scaling_fn(scaling, model_name)
    ds = ds.batch(batch_size).map(
        lambda x, y: (scale(x), tf.one_hot(y, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def feature_dataset(features: np.ndarray, onehot: np.ndarray, *, batch_size: int,
                    seed: int | None = None, repeat: bool = False):
    """``tf.data.Dataset`` of ``(features, one-hot)`` batches for a head trained on
    cached features (the transfer recipe's head phase): reshuffled every pass when
    ``seed`` is given, repeated without end when ``repeat`` (fit it with
    ``steps_per_epoch``): Keras then keeps one iterator for the whole fit, where
    NumPy arrays make it build a shuffled pipeline every epoch, which costs a small
    head more than its steps (measured: 300 steps of a 1024-256-4 head in 16 s from
    arrays, 7 s from this, 2-core CPU)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((features, onehot))
    if seed is not None:
        ds = ds.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    return (ds.repeat() if repeat else ds.cache()).prefetch(tf.data.AUTOTUNE)


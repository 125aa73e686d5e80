"""The classifiers: an ImageNet backbone with a new 4-class head (paper
sections 3.2 and 3.5), one builder for every backbone, in the style of the
keras.io transfer-learning guide.

The head is built with the functional API on the backbone's own input and
output, so every backbone layer (``LAST_CONV_LAYER`` for Grad-CAM included) is
reachable from ``model.input``; a backbone nested in ``Sequential`` or called as
one layer would hide them ("Graph disconnected").

ImageNet weights never trigger a download: the builder looks for the file in
Keras's cache first and, when it is missing, raises ``UserError`` saying which
file to put where (``weights_status`` reports the same facts).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras

from .errors import UserError
from .paths import file_digest

MODEL_NAMES: tuple[str, ...] = ("VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0")

#: Last convolutional block's output (after its activation) per backbone, the
#: layer Grad-CAM reads; names checked on Keras 3.15 by tests/test_models.py.
LAST_CONV_LAYER: dict[str, str] = {
    "VGG16": "block5_conv3",
    "ResNet50": "conv5_block3_out",
    "MobileNetV2": "out_relu",
    "EfficientNetB0": "top_activation",
}

#: Sizes for which Keras publishes MobileNetV2 ImageNet files; any other size
#: loads the 224 file (Keras's own rule, keras/src/applications/mobilenet_v2.py).
_MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class _Backbone:
    """Where Keras gets a backbone's ImageNet "notop" file (copied from
    keras/src/applications/*.py: file name, URL folder, the md5 Keras checks)."""

    file_name: str  # "{rows}" is filled in for MobileNetV2
    url_folder: str
    md5: str | None  # None: Keras checks no hash for this file


_BACKBONES: dict[str, _Backbone] = {
    "VGG16": _Backbone(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/",
        "6d6bbae143d832006294945121d1f1fc"),
    "ResNet50": _Backbone(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
        "4d473c1dd8becc155b73f8504c6f6626"),
    "MobileNetV2": _Backbone(
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
        None),
    "EfficientNetB0": _Backbone(
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/",
        "50bc09e76180e00e4465e1a485ddc09d"),
}


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def _keras_models_dir(keras_home: str) -> Path:
    """The folder ``keras.utils.get_file(..., cache_subdir="models")`` uses for
    ``keras_home``: Keras falls back to /tmp/.keras when the folder is missing or
    read-only."""
    base = os.path.expanduser(keras_home)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def _keras_home_from_env() -> str:
    """Keras's home as Keras derives it: ``$KERAS_HOME``, else ``~/.keras``
    (``/tmp/.keras`` when the home folder is read-only); read now, not at import."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def weights_status(name: str, *, image_size: int = 224) -> dict:
    """Where Keras looks for ``name``'s ImageNet notop file and whether it is usable.

    Keys: ``model``, ``file_name``, ``folder``, ``path``, ``url``, ``present``,
    ``md5_expected`` (None where Keras checks none), ``md5_ok`` (None when absent
    or unchecked) and ``usable`` (present and not failing the md5 check: what
    ``build_model(weights="imagenet")`` needs). ``image_size`` matters only for
    MobileNetV2, whose file depends on it.
    """
    _check_name(name)
    spec = _BACKBONES[name]
    rows = image_size if image_size in _MOBILENET_V2_SIZES else 224
    file_name = spec.file_name.format(rows=rows)
    folder = _keras_models_dir(_keras_home_from_env())
    path = folder / file_name
    present = path.is_file()
    md5_ok = (file_digest(path, "md5") == spec.md5) if present and spec.md5 else None
    return {
        "model": name, "file_name": file_name, "folder": str(folder), "path": str(path),
        "url": spec.url_folder + file_name, "present": present,
        "md5_expected": spec.md5, "md5_ok": md5_ok, "usable": present and md5_ok is not False,
    }


def _require_imagenet_file(name: str, image_size: int) -> None:
    """Fail fast, with what to do, unless Keras will find the ImageNet file in
    its cache and accept it (then it loads it without touching the network)."""
    st = weights_status(name, image_size=image_size)
    alternatives = ("or build without them: weights='none' (--weights none), or give a "
                    "weights file: weights=PATH (--weights PATH)")
    if not st["present"]:
        raise UserError(
            f"ImageNet weights for {name} are not in Keras's cache and cannot be downloaded "
            f"offline. Download {st['url']} and place it as {st['path']} (folder {st['folder']}; "
            f"set KERAS_HOME to use another folder), {alternatives}.")
    if not st["usable"]:
        # Keras would treat the file as a failed download: delete it and try the network.
        raise UserError(
            f"{st['path']} is not the file Keras expects for {name} (md5 differs from "
            f"{st['md5_expected']}): it is damaged or another file, and Keras would delete it "
            f"and try to download. Replace it with {st['url']}, {alternatives}.")
    from keras.src.backend.config import keras_home  # what Keras read at import

    if _keras_models_dir(keras_home()) != Path(st["folder"]):
        raise UserError(
            f"KERAS_HOME changed after Keras was imported: the file is in {st['folder']} but "
            f"Keras looks in {_keras_models_dir(keras_home())}. Set KERAS_HOME before starting "
            f"Python (or the notebook kernel), or pass weights={st['path']!r}.")


def _load_weights_file(model: keras.Model, base: keras.Model, head: list, path: Path) -> None:
    """Load ``path`` into the whole model, else into the backbone only.

    First as weights of a model built by ``build_model`` with the same settings
    (``model.save_weights`` -> ``.weights.h5``); if that fails (another head, or
    a backbone-only file such as a Keras-applications notop ``.h5``), into the
    backbone by topology, and the head keeps its fresh initialisation.
    """
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; give an existing .weights.h5 "
                        "or .h5 file, or weights='imagenet' / 'none'")
    fresh_head = [layer.get_weights() for layer in head]
    try:
        model.load_weights(path)
        return
    except (ValueError, OSError, KeyError) as err:
        whole_model_error = err
    for layer, values in zip(head, fresh_head):  # undo any partial load into the head
        layer.set_weights(values)
    try:
        base.load_weights(path)
    except (ValueError, OSError, KeyError) as err:
        raise UserError(
            f"cannot load {path} into {model.name}: it fits neither the whole model "
            f"({str(whole_model_error).splitlines()[0]}) nor its {base.name} backbone "
            f"({str(err).splitlines()[0]}). Give a file saved from the same model "
            "(same image size, classes, head), a Keras-applications notop file for this "
            "backbone, or weights='none'") from err


def build_model(name: str, *, image_size: int = 224, num_classes: int = 4,
                weights: str | os.PathLike | None = "imagenet", dropout: float = 0.5,
                dense_units: int = 256, train_base: bool = True) -> keras.Model:
    """A ``keras.applications`` backbone with a new classification head (paper 3.2, 3.5).

    Model: ``<Backbone>(include_top=False, input_shape=(image_size, image_size, 3))``
    -> GlobalAveragePooling2D ("head_pool") -> Dense(dense_units, relu)
    ("head_dense") -> Dropout(dropout) ("head_dropout") -> Dense(num_classes,
    softmax, float32 so mixed precision stays stable) ("predictions"). Named
    ``<name lower>_ecg``. Pixel scaling stays in the input pipeline, except that
    EfficientNetB0 carries its own Rescaling(1/255) and Normalization layers and so
    expects 0-255 pixels.

    weights: ``"imagenet"`` (the paper) from Keras's cache only, see
    ``weights_status``; ``"none"`` or None: random initialisation; a path: a
    ``.weights.h5`` from ``save_weights`` of a model built here with the same
    settings, or a backbone-only file (Keras-applications notop ``.h5``) loaded
    into the backbone. EfficientNetB0 is built exactly as Keras builds it for the
    given ``weights``, and Keras adds one ImageNet-specific Rescaling layer only for
    ``"imagenet"``: use that (file in the cache) to start EfficientNetB0 from
    ImageNet.

    train_base: True fine-tunes the whole network (the paper, section 3.5); False
    freezes the backbone and trains the head only. When fine-tuning from
    pretrained weights, the backbone's BatchNormalization layers are frozen, so
    they run in inference mode with their learnt statistics (keras.io
    transfer-learning guide: small batches would otherwise overwrite them). The
    guide does it with ``base(x, training=False)``, which would hide the
    backbone's layers from Grad-CAM; a frozen Keras 3 BatchNormalization layer
    behaves the same. From random initialisation they train normally.
    """
    _check_name(name)
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        source = None
    elif isinstance(weights, str) and weights.lower() == "imagenet":
        _require_imagenet_file(name, image_size)
        source = "imagenet"
    else:
        source = Path(weights).expanduser()
        legacy_h5 = source.suffix in (".h5", ".hdf5") and not source.name.endswith(".weights.h5")
        if name == "EfficientNetB0" and legacy_h5:
            raise UserError(
                f"EfficientNetB0 cannot start from a legacy .h5 file such as Keras's ImageNet "
                f"file: Keras adds its ImageNet input scaling only for weights='imagenet'. "
                f"Place {source.name} as {weights_status(name)['path']} and use "
                "weights='imagenet' (--weights imagenet), or give a .weights.h5 file")

    base = getattr(keras.applications, name)(
        include_top=False, weights="imagenet" if source == "imagenet" else None,
        input_shape=(image_size, image_size, 3))
    head = [
        keras.layers.GlobalAveragePooling2D(name="head_pool"),
        keras.layers.Dense(dense_units, activation="relu", name="head_dense"),
        keras.layers.Dropout(dropout, name="head_dropout"),
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions"),
    ]
    x = base.output
    for layer in head:
        x = layer(x)
    model = keras.Model(base.input, x, name=f"{name.lower()}_ecg")

    if isinstance(source, Path):
        _load_weights_file(model, base, head, source)
    if not train_base:
        base.trainable = False
    elif source is not None:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return model

"""The classifiers: an ImageNet backbone with a new 4-class head (paper
sections 3.2 and 3.5), one builder for every backbone, in the style of the
keras.io transfer-learning guide.

The head is built with the functional API on the backbone's own input and
output, so every backbone layer (``LAST_CONV_LAYER`` for Grad-CAM included) is
reachable from ``model.input``; a backbone nested in ``Sequential`` or called as
one layer would hide them ("Graph disconnected").

ImageNet weights never trigger a download here: the builder looks for the file
in Keras's cache first and, when it is missing, raises ``UserError`` saying which
file to put where (``weights_status`` reports the same facts). Fetching them
lives in ``ecgpaper.model.imagenet``, the offline VGG16 stand-in in
``ecgpaper.model.standin`` (``python -m ecgpaper download --weights``).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import keras

from ecgpaper.config import HEADS
from ecgpaper.errors import UserError
from ecgpaper.model.imagenet import _require_imagenet_file, keras_loads_verified_file, weights_status
from ecgpaper.model.standin import STANDINS, load_standin
from ecgpaper.model.weightspec import parse_weights

MODEL_NAMES: tuple[str, ...] = ("VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0")

#: Last convolutional block's output (after its activation) per backbone, the
#: layer Grad-CAM reads; names checked on Keras 3.15 by tests/test_models.py.
LAST_CONV_LAYER: dict[str, str] = {
    "VGG16": "block5_conv3",
    "ResNet50": "conv5_block3_out",
    "MobileNetV2": "out_relu",
    "EfficientNetB0": "top_activation",
}

#: First layer of each backbone's top block: what the transfer recipe fine-tunes
#: (``finetune="top"``); names checked on Keras 3.15 by tests/test_models.py.
TOP_BLOCK_START: dict[str, str] = {
    "VGG16": "block5_conv1",
    "ResNet50": "conv5_block1_1_conv",
    "MobileNetV2": "block_16_expand",
    "EfficientNetB0": "block7a_expand_conv",
}
#: Values of ``finetune``: the whole backbone (paper 3.5), its top block, or none.
FINETUNE_MODES = ("all", "top", "none")
#: Values of ``bn_mode`` for the backbone's BatchNormalization layers when it trains.
BN_MODES = ("frozen", "trainable")

HEAD_POOL = "head_pool"
#: multiscale head: the pooled input of the top block, and both pools side by side
HEAD_POOL_MID = "head_pool_mid"
HEAD_FEATURES = "head_features"
HEAD_NORM = "head_norm"
#: batchnorm head: BatchNormalization of the pooled features (config.HEADS)
HEAD_BN = "head_bn"
#: the head's layers, by name (everything else of a model built here is backbone)
HEAD_LAYERS = (HEAD_POOL, HEAD_POOL_MID, HEAD_FEATURES, HEAD_NORM, HEAD_BN, "head_dense", "head_dropout",
               "predictions")


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


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


def is_pretrained(weights) -> bool:
    """True for weights that carry learnt features (ImageNet, a stand-in, a file)."""
    return parse_weights(weights).pretrained


def _weights_source(name: str, weights, image_size: int) -> tuple[str | Path | None, str | None]:
    """``build_model``'s ``weights`` (``weightspec.parse_weights``) as (what Keras or
    ``_load_weights_file`` loads: ``"imagenet"``, a path or None; the stand-in key or
    None), checked first."""
    spec = parse_weights(weights)
    if spec.kind == "auto":
        raise UserError("weights='auto' is resolved by the run engine (runs.experiments.resolve_weights); "
                        "build_model takes 'imagenet', 'none', a stand-in or a path")
    if spec.kind == "none":
        return None, None
    if spec.kind == "imagenet":
        _require_imagenet_file(name, image_size)
        return "imagenet", None
    if spec.kind == "standin":
        if STANDINS[weights].model != name:
            raise UserError(f"the stand-in {weights!r} holds {STANDINS[weights].model} weights, "
                            f"not {name}; use weights='none' or 'imagenet' for {name}")
        return None, weights
    source = spec.path
    legacy_h5 = source.suffix in (".h5", ".hdf5") and not source.name.endswith(".weights.h5")
    if name == "EfficientNetB0" and legacy_h5:
        raise UserError(
            f"EfficientNetB0 cannot start from a legacy .h5 file such as Keras's ImageNet "
            f"file: Keras adds its ImageNet input scaling only for weights='imagenet'. "
            f"Place {source.name} as {weights_status(name)['path']} and use "
            "weights='imagenet' (--weights imagenet), or give a .weights.h5 file")
    return source, None


def _add_head(base, name: str, model_input, backbone_output, *, head: str, dense_units: int,
              dropout: float, num_classes: int) -> tuple[keras.Model, list]:
    """The classification head on ``backbone_output`` (``build_model``'s docstring):
    the whole model and the head's layers after the pooling."""
    x = keras.layers.GlobalAveragePooling2D(name=HEAD_POOL)(backbone_output)
    if head == "multiscale":
        mid = keras.layers.GlobalAveragePooling2D(name=HEAD_POOL_MID)(top_block_input(base, name))
        x = keras.layers.Concatenate(name=HEAD_FEATURES)([mid, x])
    layers = ([keras.layers.Normalization(name=HEAD_NORM)] if head in ("standardized", "multiscale")
              else [keras.layers.BatchNormalization(name=HEAD_BN)] if head == "batchnorm" else [])
    layers += [
        keras.layers.Dense(dense_units, activation="relu", name="head_dense"),
        keras.layers.Dropout(dropout, name="head_dropout"),
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions"),
    ]
    for layer in layers:
        x = layer(x)
    model = keras.Model(model_input, x, name=f"{name.lower()}_ecg")
    if head in ("standardized", "multiscale"):  # identity until adapted (mean 0, variance 1)
        width = int(model.get_layer(head_features_layer(model)).output.shape[-1])
        model.get_layer(HEAD_NORM).adapt(keras.ops.zeros((2, width)) +
                                         keras.ops.convert_to_tensor([[-1.0], [1.0]]))
    return model, layers


def build_model(name: str, *, image_size: int = 224, num_classes: int = 4,
                weights: str | os.PathLike | None = "imagenet", dropout: float = 0.5,
                dense_units: int = 256, head: str = "paper", finetune: str = "all",
                bn_mode: str | None = None, train_base: bool | None = None,
                conv_batchnorm: bool = False) -> keras.Model:
    """A ``keras.applications`` backbone with a new classification head (paper 3.2, 3.5).

    Model: ``<Backbone>(include_top=False, input_shape=(image_size, image_size, 3))``
    -> GlobalAveragePooling2D ("head_pool") [-> Normalization ("head_norm"), head
    "standardized"; or BatchNormalization ("head_bn"), head "batchnorm"] -> Dense(dense_units, relu) ("head_dense") -> Dropout(dropout)
    ("head_dropout") -> Dense(num_classes, softmax, float32 so mixed precision stays
    stable) ("predictions"). Named ``<name lower>_ecg``. Head "multiscale" pools the
    top block's input too ("head_pool_mid", see :func:`top_block_input`) and
    concatenates both pools ("head_features") before the Normalization. Pixel scaling stays in the
    input pipeline, except that EfficientNetB0 carries its own Rescaling(1/255) and
    Normalization layers and so expects 0-255 pixels. The "standardized" head's
    Normalization starts as the identity; ``training.train_run`` fits it to the
    training images' features (``adapt``), and it is saved with the model.

    weights: ``"imagenet"`` (the paper) from Keras's cache only, see
    ``weights_status`` (``imagenet.fetch_imagenet`` downloads them); a stand-in key
    of ``standin.STANDINS`` (e.g. ``"hed-bsds500"`` for VGG16, labelled as what it
    is, not ImageNet); ``"none"`` or None: random initialisation; a path: a
    ``.weights.h5`` from ``save_weights`` of a model built here with the same
    settings, or a backbone-only file (Keras-applications notop ``.h5``) loaded
    into the backbone. EfficientNetB0 is built exactly as Keras builds it for the
    given ``weights``, and Keras adds one ImageNet-specific Rescaling layer only for
    ``"imagenet"``: use that (file in the cache) to start EfficientNetB0 from
    ImageNet.

    finetune: which backbone layers train: ``"all"`` (the paper, section 3.5),
    ``"top"`` (from ``TOP_BLOCK_START`` on; the transfer recipe) or ``"none"`` (a
    frozen backbone). ``train_base=False`` is the old spelling of ``"none"``.

    bn_mode: the backbone's BatchNormalization layers, where they would train:
    ``"frozen"`` runs them in inference mode with their stored statistics (keras.io
    transfer-learning guide: small batches would otherwise overwrite them; the guide
    uses ``base(x, training=False)``, which would hide the backbone's layers from
    Grad-CAM, and a frozen Keras 3 BatchNormalization layer behaves the same);
    ``"trainable"`` lets them train. Default: frozen for pretrained weights,
    trainable for random ones.

    conv_batchnorm: VGG16 only: a BatchNormalization layer between every
    convolution and its ReLU (:func:`insert_conv_batchnorm`; paper 3.2 "batch
    normalization may be incorporated if faster convergence or additional training
    stability is needed"), the paper recipe's VGG16 (docs/training_recipe.md).
    """
    _check_name(name)

    if head not in HEADS:
        raise UserError(f"head must be one of {HEADS}, not {head!r}")
    if train_base is False:
        finetune = "none"
    if finetune not in FINETUNE_MODES:
        raise UserError(f"finetune must be one of {FINETUNE_MODES}, not {finetune!r}")
    bn_mode = bn_mode or ("frozen" if is_pretrained(weights) else "trainable")
    if bn_mode not in BN_MODES:
        raise UserError(f"bn_mode must be one of {BN_MODES}, not {bn_mode!r}")
    source, standin = _weights_source(name, weights, image_size)
    with keras_loads_verified_file(name, image_size=image_size) if source == "imagenet" else nullcontext():
        base = getattr(keras.applications, name)(
            include_top=False, weights="imagenet" if source == "imagenet" else None,
            input_shape=(image_size, image_size, 3))
    if standin:
        load_standin(base, standin)
    model_input, backbone_output = base.input, base.output
    if conv_batchnorm:
        if name != "VGG16":
            raise UserError(f"conv_batchnorm adds BatchNormalization to VGG16, which has none; "
                            f"{name} has its own")
        if isinstance(source, Path) and not source.name.endswith(".weights.h5"):
            raise UserError("conv_batchnorm starts from ImageNet, a stand-in or a .weights.h5 file "
                            f"saved from a model with conv_batchnorm, not from {source.name}")
        model_input, backbone_output = insert_conv_batchnorm(base)
        base = keras.Model(model_input, backbone_output, name=base.name)
    model, layers = _add_head(base, name, model_input, backbone_output, head=head, dense_units=dense_units,
                              dropout=dropout, num_classes=num_classes)
    if isinstance(source, Path):
        _load_weights_file(model, base, layers, source)
    set_trainable_backbone(model, name, finetune, bn_mode)
    return model


#: suffixes of the layers :func:`insert_conv_batchnorm` adds after a convolution
CONV_BN_SUFFIX, CONV_RELU_SUFFIX = "_bn", "_relu"


def insert_conv_batchnorm(base: keras.Model):
    """A copy of VGG16's graph (its weights copied from ``base``: ImageNet, a
    stand-in) with a BatchNormalization layer between every convolution and its
    ReLU: ``<conv>`` (now linear), ``<conv>_bn``, ``<conv>_relu``; returns the output
    tensor on a new input. Layer names stay, ``TOP_BLOCK_START`` included; the
    ReLU of ``LAST_CONV_LAYER`` is what Grad-CAM reads (``gradcam``). Until
    :func:`conv_batchnorm_as_identity` sets them from the training images the
    new layers are not the identity.

    Why: with whole-network Adam at the grid's highest rate (1e-3) every VGG16
    weight moves by about the rate per step, the ReLUs die and the network
    answers every image alike (docs/training_recipe.md); normalised
    pre-activations keep the units alive. Hand-written: keras.applications has
    no VGG16 with BatchNorm."""
    inputs = keras.Input(shape=base.input.shape[1:], name=base.layers[0].name)
    x = inputs
    for layer in base.layers[1:]:
        config = layer.get_config()
        is_conv = isinstance(layer, keras.layers.Conv2D) and config.get("activation") == "relu"
        if is_conv:
            config["activation"] = "linear"
        clone = layer.__class__.from_config(config)
        x = clone(x)
        if layer.weights:
            clone.set_weights(layer.get_weights())
        if is_conv:
            x = keras.layers.BatchNormalization(name=layer.name + CONV_BN_SUFFIX)(x)
            x = keras.layers.ReLU(name=layer.name + CONV_RELU_SUFFIX)(x)
    return inputs, x


def conv_batchnorm_layers(model: keras.Model) -> list:
    """The BatchNormalization layers :func:`insert_conv_batchnorm` added."""
    names = {layer.name for layer in model.layers}
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            and layer.name.endswith(CONV_BN_SUFFIX) and layer.name[:-len(CONV_BN_SUFFIX)] in names]


def conv_batchnorm_as_identity(model: keras.Model, images, *, batch_size: int | None = None) -> int:
    """Make every ``<conv>_bn`` layer pass the pretrained network's activations
    through unchanged: moving mean and variance, offset and scale set to the mean
    and spread of its convolution's output over ``images`` (float model inputs),
    so the network starts as the pretrained one (in inference mode exactly; in
    training mode up to batch-to-batch spread) and BatchNorm then keeps the
    pre-activations in range. One inference pass with every such layer first set
    to the exact identity (mean 0, variance 1 - epsilon, scale 1, offset 0), so
    each convolution sees the pretrained network's input. Returns the layers set."""
    import numpy as np

    bn = conv_batchnorm_layers(model)
    if not bn:
        return 0
    batch_size = batch_size or CALIBRATION_BATCH
    for layer in bn:
        width = layer.gamma.shape[0]
        layer.moving_mean.assign(np.zeros(width, "float32"))
        layer.moving_variance.assign(np.full(width, 1 - layer.epsilon, "float32"))
        layer.gamma.assign(np.ones(width, "float32"))
        layer.beta.assign(np.zeros(width, "float32"))
    probe = keras.Model(model.input, [layer.input for layer in bn])
    images = np.asarray(images)
    sums = [np.zeros(layer.gamma.shape[0]) for layer in bn]
    squares = [np.zeros(layer.gamma.shape[0]) for layer in bn]
    count = 0
    for start in range(0, len(images), batch_size):
        outs = probe(images[start:start + batch_size], training=False)
        for i, out in enumerate(outs):
            a = np.asarray(out, dtype="float64").reshape(-1, sums[i].shape[0])
            sums[i] += a.sum(axis=0)
            squares[i] += (a ** 2).sum(axis=0)
        count += len(images[start:start + batch_size])
    for layer, total, sq, out in zip(bn, sums, squares, probe.outputs):
        positions = count * int(np.prod(out.shape[1:-1]))
        mean = total / positions
        var = np.maximum(sq / positions - mean ** 2, 0.0)
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(var.astype("float32"))
        layer.gamma.assign(np.sqrt(var + layer.epsilon).astype("float32"))
        layer.beta.assign(mean.astype("float32"))
    return len(bn)


#: the head's Normalization: no feature's variance below this share of the mean
#: variance, so a channel (nearly) dead on the training images cannot blow up
#: on a validation or test image (seen: validation loss 306 on the grouped split)
NORM_VARIANCE_FLOOR = 0.01


def fit_head_normalization(model: keras.Model, features) -> None:
    """Fit the standardized head's Normalization to the training images' pooled
    features (paper 3.2: "batch normalization may be incorporated"), with each
    variance floored at ``NORM_VARIANCE_FLOOR`` x their mean. Keras's ``adapt``
    has no floor, hence the two lines after it."""
    import numpy as np

    norm = model.get_layer(HEAD_NORM)
    norm.adapt(features)
    variance = np.asarray(norm.adapt_variance)  # the saved weight; ``variance`` derives from it
    norm.adapt_variance.assign(np.maximum(variance, NORM_VARIANCE_FLOOR * variance.mean()))
    norm.finalize_state()


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers of a model built by :func:`build_model` (all but the head's)."""
    return [layer for layer in model.layers if layer.name not in HEAD_LAYERS]


def top_block_input(model: keras.Model, name: str):
    """The tensor the backbone's top block (``TOP_BLOCK_START``) reads: VGG16's
    block4_pool, ResNet50's conv4_block6_out, ... The transfer recipe caches it (the
    frozen layers below never change) and the multiscale head pools it."""
    return model.get_layer(TOP_BLOCK_START[name]).input


def head_features_layer(model: keras.Model) -> str:
    """Name of the layer whose output the head's trainable part reads: the pooled
    backbone output, or both pools side by side (head "multiscale")."""
    names = {layer.name for layer in model.layers}
    return HEAD_FEATURES if HEAD_FEATURES in names else HEAD_POOL


def set_trainable_backbone(model: keras.Model, name: str, finetune: str, bn_mode: str) -> None:
    """Make the backbone's layers trainable as ``finetune`` / ``bn_mode`` say (see
    :func:`build_model`); the head always trains, except a fitted Normalization."""
    layers = backbone_layers(model)
    start = {"all": 0, "none": len(layers)}.get(finetune)
    if start is None:
        names = [layer.name for layer in layers]
        start = names.index(TOP_BLOCK_START[name])
    for i, layer in enumerate(layers):
        trainable = i >= start
        if isinstance(layer, keras.layers.BatchNormalization) and bn_mode == "frozen":
            trainable = False
        layer.trainable = trainable


def compile_for_fit(model: keras.Model, optimizer, **compile_args) -> None:
    """``model.compile`` with the categorical cross-entropy and accuracy of every
    fit (paper 3.3), and the optimizer's and metrics' variables created at once.

    Keras's TensorFlow trainer, without a distribution strategy, creates them inside
    ``fit``'s first trace, and TensorFlow traces a function whose first trace created
    variables a second time (``polymorphic_function.Function._call``): twice the graph
    building of every run's first epoch. Measured on 2 CPU cores (fit of 2 epochs of
    4 steps, 32 px): ResNet50 84.6 s -> 47.3 s; VGG16 (32 variables) unchanged. Call
    it inside the distribution strategy's scope, where the variables must live."""
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"], **compile_args)
    model.optimizer.build(model.trainable_variables)
    # the compiled metrics resolve and build from the shapes of targets and predictions
    targets = keras.ops.one_hot(keras.ops.zeros((1,), dtype="int32"), model.output_shape[-1])
    model.compute_metrics(None, targets, targets)
    model.reset_metrics()


def batchnorm_layers(model: keras.Model, *, trainable_only: bool = False) -> list:
    """The model's BatchNormalization layers (backbone and head), or only those
    whose statistics train (``trainable``: ``bn_mode="trainable"`` and the
    batchnorm head)."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            and (layer.trainable or not trainable_only)]


#: images per forward pass of :func:`calibrate_batchnorm`: one pass over 212 images at
#: 128 px in training mode held ResNet50's every activation at once (11.1 GB resident,
#: measured on 2 CPU cores); 32 at a time: 2.4 GB, and 224 px on a GPU stays within a T4
CALIBRATION_BATCH = 32


def calibrate_batchnorm(model: keras.Model, images, *, batch_size: int = CALIBRATION_BATCH,
                        layers=None) -> int:
    """Set the moving statistics of BatchNormalization layers to those of ``images``
    (float model inputs); returns how many layers were set. ``layers``: which
    (default: every BatchNorm layer of the backbone).

    For a randomly initialised backbone: its BatchNorm layers start with mean
    0 and variance 1, which in inference mode normalise nothing, and through the
    50-odd layers of MobileNetV2 the signal then shrinks to ~1e-12, below float32
    resolution, so a frozen random backbone gives the head no information (the
    overfit-one-batch check caught it). For layers that train (the paper recipe):
    their moving averages (momentum 0.99) lag the weights by ~100 steps, and
    ImageNet statistics do not fit /255 input at all, so a model scored in
    inference mode would answer every image alike; recomputing them from the
    training images before each scoring is "PreciseBN" (Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm"). Forward passes in training mode over
    ``batch_size`` images at a time give each layer the statistics of its real
    inputs, averaged over the passes as PreciseBN does (momentum (k-1)/k at pass
    k: a running mean); no weight is changed. Hand-written: Keras has no
    BatchNorm recalibration utility.
    """
    import numpy as np

    if layers is None:
        layers = [layer for layer in backbone_layers(model)
                  if isinstance(layer, keras.layers.BatchNormalization)]
    bn = list(layers)
    if not bn:
        return 0
    saved = [(layer, layer.trainable, layer.momentum) for layer in bn]
    others = [(layer, layer.trainable) for layer in batchnorm_layers(model) if layer not in bn]
    for layer in bn:
        layer.trainable = True
    for layer, _ in others:  # a frozen BatchNorm layer keeps its statistics (and runs in inference mode)
        layer.trainable = False
    images = np.asarray(images)
    chunks = np.array_split(np.arange(len(images)), max(1, -(-len(images) // batch_size)))
    try:
        for k, rows in enumerate(chunks, 1):
            for layer in bn:  # pass k weighs 1/k: the mean of the passes' statistics
                layer.momentum = (k - 1) / k
            model(images[rows], training=True)
    finally:
        for layer, trainable, momentum in saved:
            layer.trainable, layer.momentum = trainable, momentum
        for layer, trainable in others:
            layer.trainable = trainable
    return len(bn)

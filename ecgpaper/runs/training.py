"""Train and evaluate one run (paper sections 3.1, 3.4, 3.5, 4).

A run is a :class:`~ecgpaper.runs.runconfig.RunConfig` (model, weights, batch size, learning rate,
epochs, early stopping, seed, image size, protocol, crop, dataset, profile...)
with a stable id derived from the config and the split manifest. It writes its
own folder ``results/<dataset>/<profile>/runs/<id>/`` (config.json,
history.csv with per-epoch wall time, metrics.json, confusion.csv,
predictions.csv, environment.json, model.keras: the best validation epoch's
weights, without optimizer state) and only then appends one
record to the registry ``runs.jsonl``. The folder is built under a temporary
name and renamed when complete, and a registry line is written in one
``O_APPEND`` write and fsynced: a crash never leaves half a record, and the
next call redoes the run.

Plain Keras ``fit`` with callbacks, as in the keras.io vision examples.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time

import numpy as np
import pandas as pd

from ecgpaper import __version__, paths
from ecgpaper.config import CLASS_CODES, HEADS, RECIPES
from ecgpaper.errors import UserError
from ecgpaper.metrics import (
    calibration_report,
    collapse_check,
    evaluate_predictions,
    per_class_report,
    prediction_spread,
)
from ecgpaper.model.pipeline import feature_dataset, make_dataset, scaling_fn
from ecgpaper.progress import training_progress
from ecgpaper.runs.runconfig import PRECISE_BN_IMAGES, RunConfig, RunData, paper_steps, run_provenance
from ecgpaper.runs.store import MODEL_FILE, Run, predictions_table, start_run, write_run

# --------------------------------------------------------------------------
# environment (paper section 3.5, Fig. 5)
# --------------------------------------------------------------------------

def environment_info() -> dict:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    info = {
        "python": platform.python_version(), "platform": platform.platform(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "ecgpaper": __version__,
        "cpu_count": os.cpu_count(), "devices": [d.name for d in tf.config.list_physical_devices()],
        "gpus": [],
    }
    for i, gpu in enumerate(gpus):
        details = tf.config.experimental.get_device_details(gpu)
        info["gpus"].append({"name": details.get("device_name", gpu.name),
                             "compute_capability": details.get("compute_capability")})
    build = tf.sysconfig.get_build_info()
    info["cuda"] = build.get("cuda_version")
    info["cudnn"] = build.get("cudnn_version")
    return info


def gpu_peak_memory_mb() -> float | None:
    """Peak GPU memory (MB) since :func:`reset_gpu_peak_memory` (the run's start), or None."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    try:
        return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    except (ValueError, RuntimeError):
        return None


def reset_gpu_peak_memory() -> None:
    """Start counting the GPU's peak memory afresh: TensorFlow's ``peak`` is the
    process's since start-up unless reset, so a second run in a process would
    report the first run's peak (paper 3.5: GPU memory in use)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.reset_memory_stats("GPU:0")
        except (ValueError, RuntimeError):
            pass


def start_session(config: "RunConfig") -> None:
    """A fresh Keras state for one run: seeds, then ``clear_session``, *then* the dtype
    policy. ``clear_session`` resets Keras's global state, the dtype policy
    included (keras/src/backend/common/global_state.py), so a policy set before it
    is silently lost: mixed precision would be reported on and be off."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    if config.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    reset_gpu_peak_memory()


def float32_copy(model, config: "RunConfig"):
    """The same weights in a float32 model (what is saved and served: CPUs have no
    fast float16); ``model`` itself when it already computes in float32."""
    import keras

    if model.get_layer("head_dense").dtype_policy.name == "float32":
        return keras.Model(model.input, model.output, name=model.name)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build_run_model(config, "none")
    finally:
        keras.config.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


# --------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------

def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Adds ``epoch_seconds`` to each epoch's logs (before CSVLogger writes them)."""

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = time.perf_counter() - self._t0

    return EpochTimer()


def steady_epoch_seconds(epoch_seconds) -> float:
    """Mean wall time of an epoch once the graphs are built: the epochs after the
    first (which traces them, and under XLA compiles one per batch shape); the
    only epoch when there is one (paper 3.5, Fig. 6 and 7: 60-80 s per epoch)."""
    seconds = [float(v) for v in epoch_seconds]
    return float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))




def precise_batchnorm(model, config: RunConfig, images: np.ndarray) -> int:
    """With ``bn_stats="precise"``: set the statistics of the model's BatchNorm
    layers that train to those of (up to ``PRECISE_BN_IMAGES``) training images
    (``backbones.calibrate_batchnorm``), so inference mode scores the weights as
    they are (paper 3.1: validation picks the checkpoint). Returns the layers set."""
    from ecgpaper.model.backbones import batchnorm_layers, calibrate_batchnorm

    if config.bn_stats != "precise":
        return 0
    layers = batchnorm_layers(model, trainable_only=True)
    return calibrate_batchnorm(model, statistics_sample(config, images), layers=layers)


def statistics_sample(config: RunConfig, images: np.ndarray) -> np.ndarray:
    """Up to ``PRECISE_BN_IMAGES`` training images, evenly spaced, as model inputs."""
    sample = images[np.linspace(0, len(images) - 1, min(len(images), PRECISE_BN_IMAGES)).astype(int)]
    return scaling_fn(config.scaling, config.model)(sample).numpy()


def _precise_bn_callback(model, config: RunConfig, images: np.ndarray):
    """Recompute the training BatchNorm statistics before every validation pass (PreciseBN)."""
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            precise_batchnorm(model, config, images)

    return PreciseBatchNorm()


def _optimizer(config: RunConfig):
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=0.9)
    raise UserError(f"optimizer must be 'adam' or 'sgd', not {config.optimizer!r}")


def _score(logs) -> tuple[float, float]:
    """A validation epoch's rank key: higher accuracy first, then lower loss."""
    return float(logs["val_accuracy"]), -float(logs["val_loss"])


def _best_checkpoint(keep, best: tuple[float, float] | None = None, weights: list | None = None,
                     patience: int | None = None):
    """Keep (in memory) ``keep``'s weights of the epoch with the best validation
    accuracy, ties broken by validation loss (paper 3.1: "a final model checkpoint,
    representing the highest validation performance"); stop after ``patience``
    epochs without a better one. ``best``/``weights``: the best so far from an
    earlier phase. After ``fit``, the callback's ``kept`` are the best epoch's weights.

    Hand-written because Keras's ModelCheckpoint and EarlyStopping monitor one
    quantity: by accuracy alone, ties (46 validation images) keep the first epoch;
    by loss alone, a collapsed model predicting 1/4 everywhere (loss 1.386) beats
    an accurate but overconfident one. In memory, not a file: writing the model
    at every better epoch cost more than the head phase's steps.
    """
    import keras

    class BestCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.kept, self.wait = best, weights, 0

        def on_epoch_end(self, epoch, logs=None):
            score = _score(logs)
            if self.best is None or score > self.best:
                self.best, self.wait = score, 0
                self.kept = keep.get_weights()
            else:
                self.wait += 1
                if patience is not None and self.wait >= patience:
                    self.model.stop_training = True

    return BestCheckpoint()


def _best_row(hist: pd.DataFrame) -> int:
    """Index of the history row the best checkpoint holds (see :func:`_best_checkpoint`);
    the first of equal rows, as the callback keeps the first."""
    return max(range(len(hist)), key=lambda i: _score(hist.iloc[i]))




def _frozen_fingerprint(model, config: RunConfig) -> str:
    """A cheap digest of the frozen layers' first and last weights (below the top
    block): cached activations are reused only by an identical frozen part (same
    weights source, same random initialisation, same BatchNorm statistics)."""
    from ecgpaper.model.backbones import TOP_BLOCK_START, backbone_layers

    layers = backbone_layers(model)
    names = [layer.name for layer in layers]
    frozen = [layer for layer in layers[:names.index(TOP_BLOCK_START[config.model])] if layer.weights]
    h = hashlib.sha256()
    for layer in (frozen[0], frozen[-1]):
        for w in layer.get_weights():
            h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def top_block_split(model, config: RunConfig):
    """``(below, above)``: the model cut at the input of the backbone's top block
    (``backbones.top_block_input``), two models sharing ``model``'s layers. ``below``
    is what the transfer recipe keeps frozen; ``above`` (top block and head) is what
    it trains, on ``below``'s cached outputs."""
    import keras

    from ecgpaper.model.backbones import top_block_input

    cut = top_block_input(model, config.model)
    return keras.Model(model.input, cut), keras.Model(cut, model.output)


#: frozen-part activations of the last few (backbone, images) pairs, in memory:
#: the grid's six VGG16 runs in one notebook share one forward pass
_ACTIVATIONS: dict[str, list[np.ndarray]] = {}
_ACTIVATIONS_KEPT = 2


def frozen_activations(model, config: RunConfig, arrays: list[np.ndarray], *, batch_size: int = 32,
                       log=print) -> list[np.ndarray]:
    """For each uint8 image array, the frozen part's output (the top block's input),
    computed in inference mode once per backbone and images.

    With the backbone frozen below its top block and no augmentation, these never
    change during a run, so the transfer recipe computes them once and trains the
    top block and head on them: the same updates as on the images (keras.io
    transfer-learning guide, "feature extraction"), a tenth of the compute on a
    CPU. Hand-written memo: Keras has no activation cache.
    """
    h = hashlib.sha256(json.dumps([config.model, config.scaling, config.image_size,
                                   _frozen_fingerprint(model, config)]).encode())
    for a in arrays:
        h.update(hashlib.sha1(np.ascontiguousarray(a).tobytes()).digest())
    key = h.hexdigest()
    if key in _ACTIVATIONS:
        return _ACTIVATIONS[key]
    # on disk too: with one run per process (runs.engine) the grid's runs share it there
    stored = paths.CACHE / "activations" / key[:32]
    if (stored / "done").exists():
        out = [np.load(stored / f"{i}.npy") for i in range(len(arrays))]
        log(f"  frozen layers' outputs for {sum(len(a) for a in arrays)} images read from {stored}")
        _remember_activations(key, out)
        return out
    below, _ = top_block_split(model, config)
    scale = scaling_fn(config.scaling, config.model)
    t0 = time.perf_counter()
    out = []
    for a in arrays:
        parts = [np.asarray(below(scale(a[i:i + batch_size]), training=False))
                 for i in range(0, len(a), batch_size)]
        out.append(np.concatenate(parts).astype(np.float32))
    log(f"  frozen layers' outputs for {sum(len(a) for a in arrays)} images in "
        f"{time.perf_counter() - t0:.1f} s (computed once, reused by every phase)")
    _remember_activations(key, out)
    tmp = stored.with_name(f".{stored.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(out):
        np.save(tmp / f"{i}.npy", a)
    (tmp / "done").touch()
    try:
        os.replace(tmp, stored)
    except OSError:  # another process stored the same outputs first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _remember_activations(key: str, out: list[np.ndarray]) -> None:
    while len(_ACTIVATIONS) >= _ACTIVATIONS_KEPT:
        _ACTIVATIONS.pop(next(iter(_ACTIVATIONS)))
    _ACTIVATIONS[key] = out


def backbone_features(model, config: RunConfig, arrays: list[np.ndarray], *, log=print) -> list[np.ndarray]:
    """Pooled features of the frozen backbone (inference mode) for each uint8 array:
    what the head reads (``backbones.head_features_layer``). The transfer recipe's
    head phase trains on these instead of the images, so its hundreds of steps
    take seconds on a CPU."""
    import keras

    from ecgpaper.model.backbones import head_features_layer, top_block_input

    cut = top_block_input(model, config.model)
    pooled = keras.Model(cut, model.get_layer(head_features_layer(model)).output)
    return [np.concatenate([np.asarray(pooled(a[i:i + 64], training=False), dtype=np.float32)
                            for i in range(0, len(a), 64)])
            for a in frozen_activations(model, config, arrays, log=log)]


def build_run_model(config: RunConfig, finetune: str):
    """``backbones.build_model`` with a run's settings; ``finetune`` says which backbone
    layers train (the config's, or "none" for a frozen phase)."""
    from ecgpaper.model.backbones import build_model

    return build_model(config.model, image_size=config.image_size, num_classes=len(CLASS_CODES),
                       weights=config.weights, dropout=config.dropout, head=config.head,
                       finetune=finetune, bn_mode=config.bn_mode or None,
                       conv_batchnorm=config.conv_batchnorm)


def prepare_frozen_backbone(model, config: RunConfig, images: np.ndarray, *, log=print) -> None:
    """A random backbone run frozen (BatchNorm in inference mode) gets BatchNorm
    statistics from the training images first (``backbones.calibrate_batchnorm``);
    pretrained ones keep theirs."""
    from ecgpaper.model.backbones import calibrate_batchnorm, is_pretrained

    if config.bn_stats != "train_images" or is_pretrained(config.weights):
        return
    n = calibrate_batchnorm(model, scaling_fn(config.scaling, config.model)(images).numpy())
    if n:
        log(f"  {n} BatchNorm layers of the random {config.model} set to the training images' statistics")


def head_model(model):
    """The head of a model built by ``backbones.build_model`` as a model of its own on
    pooled features, sharing the layers (and so the weights) with ``model``."""
    import keras

    from ecgpaper.model.backbones import head_features_layer

    names = [layer.name for layer in model.layers]
    features = head_features_layer(model)
    start = names.index(features) + 1
    inp = keras.Input(model.get_layer(features).output.shape[1:], name="pooled_features")
    x = inp
    for layer in model.layers[start:]:
        x = layer(x)
    return keras.Model(inp, x, name=f"{model.name}_head")


def _history_frame(history, phase: str, steps_per_epoch: int) -> pd.DataFrame:
    h = pd.DataFrame(history.history)
    h.insert(0, "phase", phase)
    h.insert(0, "epoch", np.arange(1, len(h) + 1))
    h["steps"] = steps_per_epoch
    return h


def _fit_head_phase(model, config: RunConfig, features, y_tr, y_va, *, log):
    """Transfer recipe, phase 1: the head alone on the cached features, Adam at
    ``head_learning_rate`` for ``head_steps`` steps; the weights of the best
    validation epoch are kept (keras.io transfer-learning guide). Returns the
    history and the best checkpoint (its score and the whole model's weights)."""
    import keras

    from ecgpaper.model.backbones import compile_for_fit

    f_tr, f_va = features[0], features[1]
    hm = head_model(model)
    steps_per_epoch = math.ceil(len(f_tr) / config.batch_size)
    # one compiled call per epoch: a small head's steps are cheaper than Keras's per-step overhead
    compile_for_fit(hm, keras.optimizers.Adam(config.head_learning_rate), steps_per_execution=steps_per_epoch)
    epochs = max(1, math.ceil(config.head_steps / steps_per_epoch))
    n_classes = len(CLASS_CODES)
    best = _best_checkpoint(hm)
    train = feature_dataset(f_tr, keras.utils.to_categorical(y_tr, n_classes), batch_size=config.batch_size,
                            seed=config.seed, repeat=True)  # an epoch: one reshuffled pass
    val = feature_dataset(f_va, keras.utils.to_categorical(y_va, n_classes), batch_size=config.batch_size)
    history = hm.fit(train, steps_per_epoch=steps_per_epoch, epochs=epochs, validation_data=val,
                     callbacks=[_epoch_timer(), best], verbose=0)
    hm.set_weights(best.kept)  # the head's best epoch, in the layers it shares with ``model``
    frame = _history_frame(history, "head", steps_per_epoch)
    row = _best_row(frame)
    log(f"  head phase: {epochs * steps_per_epoch} steps on cached features at lr "
        f"{config.head_learning_rate:g}; best validation epoch {row + 1}: validation accuracy "
        f"{frame['val_accuracy'][row]:.3f}, loss {frame['val_loss'][row]:.3f}")
    return frame, (best.best, model.get_weights())


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): with one run per process
    (runs.engine), the run's own (paper 3.5: the resources a run needs)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # macOS: bytes, Linux: KB


def _start_and_fit_head(model, config: RunConfig, train, val, *, log) -> tuple[list, tuple | None, list | None]:
    """Before the fine-tuning phase: VGG16's added BatchNorm layers as the identity,
    PreciseBN statistics, the head's feature normalization, and the transfer
    recipe's head phase on cached features. Returns the history frames so far and
    the best checkpoint's score and weights (None before any phase)."""
    from ecgpaper.model.backbones import fit_head_normalization

    (x_tr, y_tr), (x_va, y_va) = train, val
    if config.conv_batchnorm:
        from ecgpaper.model.backbones import conv_batchnorm_as_identity

        n = conv_batchnorm_as_identity(model, statistics_sample(config, x_tr))
        log(f"  {n} BatchNorm layers after VGG16's convolutions start as the identity on the training images")
    if (n := precise_batchnorm(model, config, x_tr)):
        log(f"  {n} BatchNorm layers that train start from the training images' statistics (PreciseBN)")
    frames, best_so_far, best_weights = [], None, None
    if config.head in ("standardized", "multiscale") or config.recipe == "transfer":
        prepare_frozen_backbone(model, config, x_tr, log=log)
        features = backbone_features(model, config, [x_tr, x_va], log=log)
        if config.head in ("standardized", "multiscale"):
            fit_head_normalization(model, features[0])
        if config.recipe == "transfer":
            frame, (best_so_far, best_weights) = _fit_head_phase(model, config, features, y_tr, y_va, log=log)
            frames.append(frame)  # the head phase's best: the first checkpoint candidate
    return frames, best_so_far, best_weights


def _fit_finetune(model, config: RunConfig, strategy, finetune: str, frames: list, best_so_far,
                  *, x_tr, x_va, onehot: dict, train_ds, val_ds, verbose: int, log):
    """The fine-tuning phase (the paper's one phase, 3.3; the transfer recipe's
    second): the whole network on images, or the top block on the frozen layers'
    cached outputs (the same updates: nothing below trains, nothing is augmented).
    Appends its history to ``frames``; returns the model that trained, the cached
    activations (None: images) and the best checkpoint's weights so far."""
    from ecgpaper.model.backbones import compile_for_fit

    best_score, best_weights = best_so_far
    phase = "finetune" if config.recipe == "transfer" else "paper"
    acts = None
    if config.recipe == "transfer" and finetune == "top":
        acts = frozen_activations(model, config, [x_tr, x_va], log=log)
        _, trained = top_block_split(model, config)
        fit_data = {"x": acts[0], "y": onehot["tr"], "batch_size": config.batch_size,
                    "validation_data": (acts[1], onehot["va"]), "shuffle": True}
    else:
        trained = model
        fit_data = {"x": train_ds, "validation_data": val_ds, "shuffle": False}  # tf.data shuffles
    if finetune != "none" and config.epochs > 0:
        with strategy.scope():
            compile_for_fit(trained, _optimizer(config), jit_compile=config.xla)
        # with early stopping (3.1; the transfer recipe), stop after ``patience``
        # epochs that do not beat the best so far, the head phase's included
        best = _best_checkpoint(model, best_score, best_weights,
                                config.patience if config.early_stopping else None)
        steps_per_epoch = math.ceil(len(x_tr) / config.batch_size)
        progress, fit_verbose = training_progress(  # compact bar / one line per epoch (progress.py)
            verbose, epochs=config.epochs, steps_per_epoch=steps_per_epoch, label=f"{config.model} {phase}")
        precise = [_precise_bn_callback(model, config, x_tr)] if config.bn_stats == "precise" else []
        history = trained.fit(epochs=config.epochs, callbacks=[_epoch_timer(), *precise, best] + progress,
                              verbose=fit_verbose, **fit_data)
        frames.append(_history_frame(history, phase, steps_per_epoch))
        best_weights = best.kept
    return trained, acts, best_weights


def _restore_selected(model, hist: pd.DataFrame, best_weights) -> dict:
    """Load the checkpoint with the best validation accuracy, ties by loss (3.1, 5.1),
    into ``model``; return which it is."""
    best_row = _best_row(hist)
    if best_weights is not None:
        model.set_weights(best_weights)  # with the statistics PreciseBN gave them at that validation
    return {"phase": str(hist["phase"][best_row]), "epoch": int(hist["epoch"][best_row]),
            "val_accuracy": float(hist["val_accuracy"][best_row]),
            "val_loss": float(hist["val_loss"][best_row])}


def _score_checkpoint(config: RunConfig, model, trained, acts, onehot: dict, train, val_ds, test_ds) -> dict:
    """The selected checkpoint's train and validation loss and accuracy (inference
    mode; on the cached activations ``acts`` when the top block trained on them),
    its validation probabilities, and the test set's from pixels, as in serving."""
    if not trained.compiled:  # compiled for fit already: compiling again would retrace evaluate
        trained.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    if acts is not None:
        train_loss, train_accuracy = trained.evaluate(acts[0], onehot["tr"], batch_size=64, verbose=0)
        val_loss, val_accuracy = trained.evaluate(acts[1], onehot["va"], batch_size=64, verbose=0)
        val_proba = trained.predict(acts[1], batch_size=64, verbose=0)
    else:
        ev = {"batch_size": 64, "scaling": config.scaling, "model_name": config.model}
        train_loss, train_accuracy = model.evaluate(make_dataset(*train, shuffle=False, **ev), verbose=0)
        val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
        val_proba = model.predict(val_ds, verbose=0)
    t1 = time.perf_counter()
    proba = model.predict(test_ds, verbose=0)
    return {"train_loss": train_loss, "train_accuracy": train_accuracy, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "val_proba": val_proba, "proba": proba,
            "predict_seconds": time.perf_counter() - t1}


def _training_record(config: RunConfig, hist: pd.DataFrame, selected: dict, *, cached: bool,
                     train_seconds: float, n_train: int) -> dict:
    """How a run trained, for its metrics.json: epochs and optimizer steps per phase
    (beside the paper's, 3.3), the checkpoint evaluated (3.1, 5.1), wall times and
    training throughput (3.5)."""
    fit_rows = hist[hist["phase"] != "head"]
    epoch_seconds = [float(v) for v in fit_rows.get("epoch_seconds", [])]
    steps = {p: int((hist["phase"] == p).mul(hist["steps"]).sum()) for p in hist["phase"].unique()}
    steady = steady_epoch_seconds(epoch_seconds) if epoch_seconds else None
    return {
        "epochs_run": len(fit_rows),
        "head_epochs_run": int((hist["phase"] == "head").sum()),
        "optimizer_steps": {**steps, "total": int(sum(steps.values()))},
        "paper_steps": paper_steps(config.batch_size, config.paper_epochs) if config.paper_epochs else None,
        "selected_checkpoint": selected,
        # the fine-tuning epochs' inputs: epoch times are not image throughput when cached
        "finetune_inputs": "cached outputs of the frozen layers" if cached else "images",
        "evaluated_weights": (f"best validation accuracy (ties: loss): {selected['phase']} phase, epoch "
                              f"{selected['epoch']} (paper 3.1, 5.1: the checkpoint with the best "
                              "validation performance)"),
        "train_seconds": round(train_seconds, 2),
        # steady state: epoch 1 also traces the graphs (and, under XLA, compiles one per
        # batch shape, the partial last batches included), which is not the cost of an epoch
        "epoch_seconds_mean": round(steady, 3) if epoch_seconds else None,
        "first_epoch_seconds": round(epoch_seconds[0], 3) if epoch_seconds else None,
        "train_images_per_second": round(n_train / max(steady, 1e-9), 2) if epoch_seconds else None,
    }


def train_run(config: RunConfig, data: RunData, *, verbose: int = 2, log=print,
              executor: dict | None = None) -> Run:
    """Train with the config's recipe, evaluate the best-validation checkpoint on the
    test subset, write the run folder and registry record (paper 3.1, 3.5, 4).
    ``executor``: what trained it (runs.engine: kind, host, pid, GPU, Ray node),
    recorded with the run; None: this process, inline."""
    import keras
    import tensorflow as tf

    if config.recipe not in RECIPES:
        raise UserError(f"recipe must be one of {RECIPES}, not {config.recipe!r}")
    if config.head not in HEADS:
        raise UserError(f"head must be one of {HEADS}, not {config.head!r}")
    if config.label_control not in ("none", "shuffled"):
        raise UserError(f"label_control must be 'none' or 'shuffled', not {config.label_control!r}")
    run_id = config.run_id(data.manifest_sha)
    work = start_run(config.workspace, run_id)

    start_session(config)

    (x_tr, y_tr, _), (x_va, y_va, _), (x_te, y_te, test_rows) = data.train, data.val, data.test
    if config.label_control == "shuffled":
        # the sanity control: same images, labels permuted; test must stay at chance
        y_tr = np.random.default_rng(10_000 + config.seed).permutation(y_tr)
    ds = dict(batch_size=config.batch_size, scaling=config.scaling, model_name=config.model)
    train_ds = make_dataset(x_tr, y_tr, shuffle=True, seed=config.seed, **ds)
    val_ds = make_dataset(x_va, y_va, shuffle=False, **ds)
    test_ds = make_dataset(x_te, y_te, shuffle=False, **ds)

    gpus = tf.config.list_physical_devices("GPU")
    # several GPUs: data-parallel replicas (section 3.5 ran on one T4; this only adds speed)
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    finetune = "none" if not config.train_base else config.finetune
    with strategy.scope():
        model = build_run_model(config, finetune)
    log(f"[{run_id}] {config.model} ({config.recipe} recipe, weights {config.weights}, scaling "
        f"{config.scaling}) batch {config.batch_size} lr {config.learning_rate:g} on {len(x_tr)} "
        f"train / {len(x_va)} val images{', SHUFFLED LABELS' if config.label_control == 'shuffled' else ''}")
    t0 = time.perf_counter()
    frames, best_so_far, best_weights = _start_and_fit_head(model, config, (x_tr, y_tr), (x_va, y_va), log=log)

    onehot = {k: keras.utils.to_categorical(v, len(CLASS_CODES)) for k, v in (("tr", y_tr), ("va", y_va))}
    trained, acts, best_weights = _fit_finetune(
        model, config, strategy, finetune, frames, (best_so_far, best_weights), x_tr=x_tr, x_va=x_va,
        onehot=onehot, train_ds=train_ds, val_ds=val_ds, verbose=verbose, log=log)
    cached = acts is not None
    train_seconds = time.perf_counter() - t0
    hist = pd.concat(frames, ignore_index=True)

    # evaluate the checkpoint with the best validation accuracy, then loss (paper 3.1 and 5.1)
    selected = _restore_selected(model, hist, best_weights)
    scores = _score_checkpoint(config, model, trained, acts, onehot,
                               (x_tr, y_tr), val_ds, test_ds)
    train_loss, train_accuracy, val_loss, val_accuracy = (scores[k] for k in (
        "train_loss", "train_accuracy", "val_loss", "val_accuracy"))
    val_proba, proba, predict_seconds = scores["val_proba"], scores["proba"], scores["predict_seconds"]
    # one interval per number: copies of one ECG resampled together, with the bootstrap
    # REPORT.md's tables use (metrics.BOOTSTRAP_SEED), so they print the same interval
    groups = test_rows["group"].astype(str).to_numpy() if "group" in test_rows else None
    metrics = evaluate_predictions(y_te, proba, groups=groups)
    # what a clinician asks next (issue 21, item 4): per-class sensitivity, specificity and
    # AUROC with the same group bootstrap, and a temperature fitted on the validation
    # predictions of the selected checkpoint, the test set's calibration before and after it
    # (the export serves it: runs.export, serve.inference)
    metrics["clinical"] = per_class_report(y_te, proba, groups=groups)
    metrics["calibration"] = calibration_report(y_va, val_proba, y_te, proba)
    # a run whose predictions are constant or uniform, or that never fitted its
    # training set, is flagged: no verdict in REPORT.md, never exported (metrics.collapse_check)
    metrics["collapse"] = collapse_check(
        float(train_accuracy), y_tr,
        {"val": prediction_spread(val_proba, y_va), "test": prediction_spread(proba, y_te)})
    if metrics["collapse"]["collapsed"]:
        log(f"  WARNING: run {run_id} COLLAPSED: {'; '.join(metrics['collapse']['reasons'])}")
    metrics.update({
        "run_id": run_id,
        "train_accuracy": float(train_accuracy), "train_loss": float(train_loss),
        "val_accuracy": float(val_accuracy), "val_loss": float(val_loss),
        **_training_record(config, hist, selected, cached=cached, train_seconds=train_seconds,
                           n_train=len(x_tr)),
        "test_images_per_second": round(len(x_te) / max(predict_seconds, 1e-9), 2),
        "n_train": len(x_tr), "n_val": len(x_va), "n_test": len(x_te),
        "gpu_peak_memory_mb": gpu_peak_memory_mb(),
        # one run per process: the run's own peak; inline: the process's so far
        "peak_rss_mb": peak_rss_mb(),
        # measured on the trained model, not copied from the config (paper 3.5)
        "compute_dtype": model.get_layer("head_dense").compute_dtype,
    })
    # an uncompiled float32 model of the same weights: the file holds no optimizer state
    # (3x smaller for Adam), loads in safe mode and serves on a CPU
    float32_copy(model, config).save(work / MODEL_FILE)
    metrics["executor"] = executor = executor or {"kind": "inline", "host": platform.node(), "pid": os.getpid()}
    record = write_run(
        config.workspace, run_id, work, config=config.to_dict(), provenance=run_provenance(config, data),
        metrics=metrics, history=hist, predictions=predictions_table(test_rows["path"], y_te, proba),
        confusion=pd.DataFrame(metrics["confusion"], index=list(CLASS_CODES), columns=list(CLASS_CODES)),
        environment={**environment_info(), "determinism": {
            "seeded": ["python", "numpy", "tensorflow"], "op_determinism": config.deterministic_ops,
            "note": "GPU kernels are nondeterministic unless op_determinism is on"}},
        manifest_sha256=data.manifest_sha, executor=executor)
    log(f"[{run_id}] train accuracy {train_accuracy:.3f}, test accuracy {metrics['accuracy']:.3f}, "
        f"macro F1 {metrics['f1']:.3f} ({selected['phase']} epoch {selected['epoch']}, "
        f"{metrics['optimizer_steps']['total']} steps, {train_seconds:.0f} s)")
    return Run.from_record(config.workspace, record)


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))

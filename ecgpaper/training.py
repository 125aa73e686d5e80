"""Train and evaluate one run (paper sections 3.1, 3.4, 3.5, 4).

A run is a :class:`RunConfig` (model, weights, batch size, learning rate,
epochs, early stopping, seed, image size, protocol, crop, dataset, profile...)
with a stable id derived from the config and the split manifest. It writes its
own folder ``results/<dataset>/<profile>/runs/<id>/`` (config.json,
history.csv with per-epoch wall time, metrics.json, confusion.csv,
predictions.csv, environment.json, model.keras without optimizer state,
best.weights.h5 of the best validation epoch) and only then appends one
record to the registry ``runs.jsonl``. The folder is built under a temporary
name and renamed when complete, and a registry line is written in one
``O_APPEND`` write and fsynced: a crash never leaves half a record, and the
next call redoes the run.

Plain Keras ``fit`` with callbacks, as in the keras.io vision examples.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__, paths
from .config import CLASS_CODES, EARLY_STOPPING_PATIENCE
from .errors import UserError

REGISTRY_NAME = "runs.jsonl"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; its hash (plus the manifest's) is the run id."""
    model: str = "VGG16"
    weights: str = "imagenet"  # "imagenet" | "none" | path to a weights file
    batch_size: int = 16
    learning_rate: float = 1e-4
    epochs: int = 20
    early_stopping: bool = False  # section 4: the grid ran a fixed 20 epochs
    patience: int = EARLY_STOPPING_PATIENCE
    optimizer: str = "adam"  # "adam" (paper) | "sgd" (momentum 0.9)
    seed: int = 0
    image_size: int = 224
    fit: str = "resize"
    crop: bool = False
    scaling: str = "rescale"  # paper: /255; or "preprocess_input"
    protocol: str = "paper"
    split_seed: int = 0
    dataset: str = "synthetic-quick"
    profile: str = "quick"
    train_base: bool = True
    dropout: float = 0.5
    limit_train_per_class: int | None = None  # smoke profile: fewer images
    mixed_precision: bool = False
    xla: bool = False
    deterministic_ops: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def run_id(self, manifest_sha: str) -> str:
        blob = json.dumps({"config": self.to_dict(), "manifest": manifest_sha}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return (f"{self.model.lower()}-b{self.batch_size}-lr{self.learning_rate:.0e}"
                f"-e{self.epochs}-s{self.seed}-{digest}")


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------

def registry_path(dataset: str, profile: str) -> Path:
    return paths.profile_results(dataset, profile) / REGISTRY_NAME


def read_registry(dataset: str, profile: str) -> list[dict]:
    """All complete records (a torn last line from a crash is ignored)."""
    p = registry_path(dataset, profile)
    if not p.exists():
        return []
    records = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_record(dataset: str, profile: str, record: dict) -> None:
    """Append one JSON line atomically (single O_APPEND write, then fsync)."""
    p = registry_path(dataset, profile)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # a torn line left by a crash would glue onto ours: start on a fresh line
        if os.fstat(fd).st_size and not p.read_bytes().endswith(b"\n"):
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def finished_run_ids(dataset: str, profile: str) -> set[str]:
    runs = paths.profile_results(dataset, profile) / "runs"
    return {r["run_id"] for r in read_registry(dataset, profile)
            if (runs / r["run_id"] / "metrics.json").exists()}


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
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    try:
        return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    except (ValueError, RuntimeError):
        return None


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


def _optimizer(config: RunConfig):
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=0.9)
    raise UserError(f"optimizer must be 'adam' or 'sgd', not {config.optimizer!r}")


@dataclass
class RunData:
    """The three subsets of a manifest as uint8 arrays (see pipeline.subset_arrays)."""
    train: tuple
    val: tuple
    test: tuple
    manifest_sha: str
    extra: dict = field(default_factory=dict)


def train_run(config: RunConfig, data: RunData, *, verbose: int = 2, log=print) -> dict:
    """Train, evaluate on the test subset, write the run folder and registry record."""
    import keras
    import tensorflow as tf

    from .evaluation import evaluate_predictions, predictions_table
    from .models import build_model
    from .pipeline import make_dataset

    run_id = config.run_id(data.manifest_sha)
    base = paths.profile_results(config.dataset, config.profile) / "runs"
    final_dir = base / run_id
    work = base / f".{run_id}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    keras.backend.clear_session()

    (x_tr, y_tr, _), (x_va, y_va, _), (x_te, y_te, test_rows) = data.train, data.val, data.test
    ds = dict(batch_size=config.batch_size, scaling=config.scaling, model_name=config.model)
    train_ds = make_dataset(x_tr, y_tr, shuffle=True, seed=config.seed, **ds)
    val_ds = make_dataset(x_va, y_va, shuffle=False, **ds)
    test_ds = make_dataset(x_te, y_te, shuffle=False, **ds)

    gpus = tf.config.list_physical_devices("GPU")
    # several GPUs: data-parallel replicas (section 3.5 ran on one T4; this only adds speed)
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(config.model, image_size=config.image_size, num_classes=len(CLASS_CODES),
                            weights=config.weights, dropout=config.dropout, train_base=config.train_base)
        model.compile(optimizer=_optimizer(config), loss="categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=config.xla)
    callbacks = [
        _epoch_timer(),
        keras.callbacks.CSVLogger(str(work / "history.csv")),
        # best epoch's weights only: optimizer state would triple the file (section 3.1)
        keras.callbacks.ModelCheckpoint(str(work / "best.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True),
    ]
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                       restore_best_weights=True))
    log(f"[{run_id}] {config.model} batch {config.batch_size} lr {config.learning_rate:g} "
        f"{config.epochs} epochs on {len(x_tr)} train / {len(x_va)} val images")
    t0 = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                        callbacks=callbacks, verbose=verbose, shuffle=False)  # tf.data shuffles
    train_seconds = time.perf_counter() - t0

    val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
    t0 = time.perf_counter()
    proba = model.predict(test_ds, verbose=0)
    predict_seconds = time.perf_counter() - t0
    metrics = evaluate_predictions(y_te, proba, seed=config.seed)
    epoch_seconds = [float(s) for s in history.history.get("epoch_seconds", [])]
    metrics.update({
        "run_id": run_id,
        "val_accuracy": float(val_accuracy), "val_loss": float(val_loss),
        "epochs_run": len(history.history["loss"]),
        "evaluated_weights": "best (early stopping restored them)" if config.early_stopping
        else "last epoch (fixed epochs, paper section 4)",
        "train_seconds": round(train_seconds, 2),
        "epoch_seconds_mean": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else None,
        "train_images_per_second": round(len(x_tr) * len(epoch_seconds) / max(sum(epoch_seconds), 1e-9), 2),
        "test_images_per_second": round(len(x_te) / max(predict_seconds, 1e-9), 2),
        "n_train": int(len(x_tr)), "n_val": int(len(x_va)), "n_test": int(len(x_te)),
        "gpu_peak_memory_mb": gpu_peak_memory_mb(),
    })
    # an uncompiled wrapper of the same layers: the file holds no optimizer state
    # (3x smaller for Adam) and loads in safe mode for evaluation and serving
    keras.Model(model.input, model.output, name=model.name).save(work / "model.keras")
    predictions_table(test_rows["path"], y_te, proba).to_csv(work / "predictions.csv", index=False)
    pd.DataFrame(metrics["confusion"], index=list(CLASS_CODES), columns=list(CLASS_CODES)) \
        .to_csv(work / "confusion.csv", index_label="true\\pred")
    determinism = {"seeded": ["python", "numpy", "tensorflow"],
                   "op_determinism": config.deterministic_ops,
                   "note": "GPU kernels are nondeterministic unless op_determinism is on"}
    (work / "config.json").write_text(json.dumps(
        {**config.to_dict(), "run_id": run_id, "manifest_sha256": data.manifest_sha, **data.extra},
        indent=2, sort_keys=True))
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (work / "environment.json").write_text(json.dumps(
        {**environment_info(), "determinism": determinism}, indent=2, sort_keys=True))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(work, final_dir)
    record = {"run_id": run_id, "config": config.to_dict(), "manifest_sha256": data.manifest_sha,
              "metrics": {k: metrics[k] for k in ("accuracy", "precision", "recall", "f1", "ci95",
                                                  "epochs_run", "train_seconds", "epoch_seconds_mean")},
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    append_record(config.dataset, config.profile, record)
    log(f"[{run_id}] test accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['f1']:.3f} "
        f"({train_seconds:.0f} s)")
    return record


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))

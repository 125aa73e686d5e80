"""Sanity checks that guard every training recipe (docs/training_recipe.md).

A result at chance is a bug until shown otherwise. Two checks say whether a
recipe can learn at all and whether what it learns comes from the labels:

- :func:`overfit_one_batch`: the recipe, on one fixed small batch (8 images per
  class), must reach ~100 % training accuracy within a bounded number of steps.
  A model that cannot memorise 32 images has a bug in its labels, inputs, head or
  optimiser, whatever its test accuracy says.
- :func:`shuffled_label_control`: the same run with the training labels permuted
  must stay at chance on the test set; above chance means the labels leak in some
  other way (file order, a label baked into the images' pixels, a bug in the split).

Both go through the same builder, pipeline and head phase as real runs
(``training.train_run``), so they test the code the paper's experiments use.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ecgpaper.config import CLASS_CODES
from ecgpaper.model.pipeline import scaling_fn
from ecgpaper.runs.experiments import run_configs
from ecgpaper.runs.runconfig import RunConfig, RunData
from ecgpaper.runs.store import load_run
from ecgpaper.runs.training import (
    backbone_features,
    build_run_model,
    head_model,
    precise_batchnorm,
    prepare_frozen_backbone,
    start_session,
)

#: overfit-a-batch: images per class, the step budget and the accuracy to reach
OVERFIT_PER_CLASS = 8
OVERFIT_MAX_STEPS = 300
OVERFIT_TARGET = 0.98


def _fixed_batch(images: np.ndarray, labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` training images of each class (a fixed, balanced batch)."""
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_CODES))])
    return images[idx], labels[idx]


def overfit_one_batch(config: RunConfig, data: RunData, *, per_class: int | None = None,
                      max_steps: int = OVERFIT_MAX_STEPS, target: float = OVERFIT_TARGET) -> dict:
    """Train ``config``'s model on one fixed batch only; report the steps taken to
    reach ``target`` training accuracy (evaluated in inference mode), or the
    accuracy after ``max_steps``. The transfer recipe trains its head phase on the
    batch's cached features; the paper recipe trains the network as configured.
    ``per_class``: images per class in the batch (default: the profile's
    ``overfit_per_class``, ``OVERFIT_PER_CLASS`` for most).
    """
    import keras
    import tensorflow as tf

    from ecgpaper.config import get_profile
    from ecgpaper.model.backbones import compile_for_fit, fit_head_normalization

    if per_class is None:
        per_class = get_profile(config.profile).overfit_per_class if config.profile else OVERFIT_PER_CLASS
    x, y = _fixed_batch(data.train[0], data.train[1], per_class)
    start_session(config)
    finetune = "none" if config.recipe == "transfer" or not config.train_base else config.finetune
    model = build_run_model(config, finetune)
    onehot = keras.utils.to_categorical(y, len(CLASS_CODES))
    if config.recipe != "transfer":
        precise_batchnorm(model, config, x)
    if config.recipe == "transfer" or config.head in ("standardized", "multiscale"):
        prepare_frozen_backbone(model, config, data.train[0], log=lambda *_: None)
        features = backbone_features(model, config, [x], log=lambda *_: None)[0]
        if config.head in ("standardized", "multiscale"):
            fit_head_normalization(model, features)
    if config.recipe == "transfer":
        net, inputs, lr = head_model(model), features, config.head_learning_rate
    else:
        net, inputs, lr = model, scaling_fn(config.scaling, config.model)(x).numpy(), config.learning_rate
    compile_for_fit(net, keras.optimizers.Adam(lr))
    steps, accuracy, chunk = 0, 0.0, 10
    # the one batch, without end: each round is one fit of ``chunk`` steps on one
    # iterator (from arrays Keras would build a pipeline per one-step epoch)
    batch = tf.data.Dataset.from_tensors((inputs, onehot)).repeat()
    while steps < max_steps:
        net.fit(batch, steps_per_epoch=chunk, epochs=1, verbose=0)
        steps += chunk
        if config.recipe != "transfer":  # BatchNorm layers that train: statistics of this batch
            precise_batchnorm(model, config, x)
        # inference mode, called directly (evaluate() would retrace its function every round)
        accuracy = float(np.mean(np.argmax(np.asarray(net(inputs, training=False)), axis=1) == y))
        if accuracy >= target:
            break
    return {"model": config.model, "weights": config.weights, "recipe": config.recipe,
            "batch_images": int(len(x)), "steps": steps, "train_accuracy": accuracy,
            "max_steps": max_steps, "target": target, "passed": accuracy >= target}


def shuffled_label_control(config: RunConfig, data: RunData, *, verbose: int = 0, log=print) -> dict:
    """Run ``config`` with permuted training labels (a registered run of its own,
    ``label_control="shuffled"``); it passes when the test accuracy's 95 % CI holds
    the majority-class rate, i.e. the model is indistinguishable from chance."""
    from dataclasses import replace

    control = replace(config, label_control="shuffled")
    record = run_configs([control], data, name="shuffled-label control", verbose=verbose, log=log)[0]
    m = load_run(config.workspace, record.run_id).metrics
    chance, passed = at_chance(m["ci95"]["accuracy"], data.test[1])
    return {"model": config.model, "weights": config.weights, "run_id": record.run_id,
            "train_accuracy": m["train_accuracy"], "test_accuracy": m["accuracy"],
            "test_ci95": list(m["ci95"]["accuracy"]), "majority_rate": chance, "passed": passed}


def at_chance(ci95, y_test) -> tuple[float, bool]:
    """The shuffled-label control's criterion: the test labels' majority-class rate
    and whether the 95 % interval ``ci95`` of a run's test accuracy holds it."""
    y_test = np.asarray(y_test, int)
    chance = float(np.bincount(y_test, minlength=len(CLASS_CODES)).max() / len(y_test))
    lo, hi = ci95
    return chance, bool(lo <= chance <= hi)


def sanity_table(overfit: list[dict], control: list[dict]) -> pd.DataFrame:
    """One row per model: the overfit-a-batch check beside the shuffled-label control."""
    rows = []
    for o, c in zip(overfit, control):
        rows.append({
            "model": o["model"], "weights": o["weights"],
            "overfit: images": o["batch_images"], "overfit: steps": o["steps"],
            "overfit: train acc": round(o["train_accuracy"], 3),
            "overfit passed": o["passed"],
            "shuffled labels: train acc": round(c["train_accuracy"], 3),
            "shuffled labels: test acc": round(c["test_accuracy"], 3),
            "test 95% CI": f"{c['test_ci95'][0]:.2f}-{c['test_ci95'][1]:.2f}",
            "majority rate": round(c["majority_rate"], 3),
            "control passed": c["passed"],
        })
    return pd.DataFrame(rows)


"""Lightweight models and a soft-voting ensemble (beyond the paper, section
5.5: "future extensions": lighter architectures for deployment, ensembles).

MobileNetV2 and EfficientNetB0 are trained at the paper's baseline setting
(section 4: batch 16, lr 1e-4, 20 epochs scaled by the profile) on the same
split as the baseline VGG16 and ResNet50 runs, which are reused. For each the
table gives test accuracy (with its bootstrap interval), parameters, the size
of the deployable model file (saved without optimizer state), CPU latency per
image and training time per epoch; the ensemble row averages the class
probabilities of the best models, chosen by VALIDATION accuracy (choosing by
test accuracy would leak the test set into the choice).

Latency: batch 1, a ``tf.function``-wrapped forward on uint8 input (the
scaling included, as the web service runs it), after warm-up calls, the
median of ``n_calls``; on the CPU only (``/CPU:0``), so the number means the
same on a GPU machine.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pandas as pd

from ecgpaper.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, acc_f1, bootstrap_sets, percentile_ci
from ecgpaper.model.pipeline import labels_to_indices, scaling_fn
from ecgpaper.outputs import format_ci, interval_columns, save_figure, save_table, use_style
from ecgpaper.paths import Workspace
from ecgpaper.runs.engine import in_fresh_process
from ecgpaper.runs.experiments import experiment_configs, run_configs, scaled_configs
from ecgpaper.runs.store import Run, load_predictions, load_run, probabilities, record_experiment
from ecgpaper.studies.common import DataSource, same_test_images, test_groups

#: the paper's baseline setting (section 4) for the lighter backbones
LIGHT_SPECS = [dict(model=m, batch_size=16, learning_rate=1e-4, epochs=20)
               for m in ("MobileNetV2", "EfficientNetB0")]
ENSEMBLE_SIZE = 3


def lightweight_configs(profile: str, dataset: str, split_seed: int = 0):
    """The baseline experiment's runs (VGG16, ResNet50; reused) plus the two light ones."""
    base = experiment_configs("baseline", profile=profile, dataset=dataset, split_seed=split_seed)
    return base + scaled_configs(LIGHT_SPECS, profile=profile, dataset=dataset, split_seed=split_seed)


def run(source: DataSource, *, split_seed: int = 0, verbose: int = 0, log=print) -> list[dict]:
    """Train (or reuse) the four runs on the paper protocol; return them loaded
    (``store.load_run``) and record ``experiments/lightweight.json``."""
    data = source.run_data("paper", split_seed, False)
    configs = lightweight_configs(source.profile, source.dataset, split_seed)
    records = run_configs(configs, data, name="lightweight", verbose=verbose, log=log)
    ids = [r.run_id for r in records]
    record_experiment("lightweight", source.workspace, ids, protocol="paper",
                      split_seed=split_seed)
    return [load_run(source.workspace, i) for i in ids]


def measure_latency(model, image_size: int, *, scaling: str = "rescale", model_name: str | None = None,
                    n_calls: int = 30, warmup: int = 5) -> dict:
    """CPU latency of one image: median and 90th percentile over ``n_calls``
    of a compiled batch-1 forward (after ``warmup`` calls), in ms."""
    import tensorflow as tf

    scale = scaling_fn(scaling, model_name)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (1, image_size, image_size, 3), dtype=np.uint8))
    with tf.device("/CPU:0"):
        @tf.function
        def forward(t):
            return model(scale(t), training=False)

        for _ in range(warmup):
            forward(x).numpy()
        times = []
        for _ in range(n_calls):
            t0 = time.perf_counter()
            forward(x).numpy()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"latency_ms": float(np.median(times)), "latency_p90_ms": float(np.percentile(times, 90)),
            "latency_calls": n_calls}


def deployable_size_mb(model) -> float:
    """Size of the ``.keras`` file of the model saved without optimizer state
    (an uncompiled model): what the web service ships."""
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "model.keras")
        model.save(f)
        return os.path.getsize(f) / 2**20


def profile_runs(runs: list[Run], *, n_calls: int = 30, log=print) -> pd.DataFrame:
    """One row per run: accuracy, CI, parameters, file size, latency, epoch time. The
    models load in a fresh process (``engine.in_fresh_process``), never in the caller's."""
    table = in_fresh_process(measure_runs, runs, n_calls=n_calls)
    for row in table.itertuples():
        log(f"{row.model}: {row.params_millions:.1f} M parameters, {row.latency_ms:.1f} ms per image")
    return table


def measure_runs(runs: list[Run], *, n_calls: int = 30) -> pd.DataFrame:
    """:func:`profile_runs`'s table, measured in this process (the models load here)."""
    import keras
    import tensorflow as tf

    rows = []
    for run in runs:
        c, m = run.config, run.metrics
        with tf.device("/CPU:0"):  # weights in host memory: a CPU number even on a GPU machine
            model = keras.models.load_model(run.folder / "model.keras", compile=False, safe_mode=True)
        lat = measure_latency(model, c["image_size"], scaling=c["scaling"], model_name=c["model"],
                              n_calls=n_calls)
        rows.append({
            "model": c["model"], "members": "", "run_id": run.run_id, "epochs": c["epochs"],
            "accuracy": m["accuracy"], **interval_columns("accuracy_ci95", (m.get("ci95") or {}).get("accuracy")),
            "f1": m["f1"], "val_accuracy": m.get("val_accuracy"), "val_loss": m.get("val_loss"),
            "params_millions": model.count_params() / 1e6, "file_mb": deployable_size_mb(model),
            **lat, "epoch_seconds": m.get("epoch_seconds_mean"),
        })
        del model
        keras.backend.clear_session()
    return pd.DataFrame(rows)


def choose_members(table: pd.DataFrame, k: int = ENSEMBLE_SIZE) -> list[str]:
    """Run ids of the ``k`` best runs by validation accuracy (ties: lower
    validation loss, then fewer parameters)."""
    ranked = table.sort_values(["val_accuracy", "val_loss", "params_millions"],
                               ascending=[False, True, True], kind="stable")
    return ranked["run_id"].head(k).tolist()


def soft_vote(ws: Workspace, run_ids: list[str], groups=None, *,
              n_bootstrap: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Average the test-set class probabilities of ``run_ids`` (same test
    images) and evaluate the argmax: accuracy, macro F1, 95 % CI (bootstrap
    over duplicate groups: ``groups``, else those of the runs' test manifest)."""
    preds = [load_predictions(ws, i) for i in run_ids]
    if not same_test_images(preds):
        raise ValueError("soft voting needs runs evaluated on the same test images")
    proba = np.mean([probabilities(p) for p in preds], axis=0)
    y = labels_to_indices(preds[0]["true"])
    pred = proba.argmax(1)
    acc, f1 = acc_f1(y, pred)
    if groups is None:
        groups = test_groups(ws.dataset, load_run(ws, run_ids[0]).config, preds[0]["path"])
    boot = bootstrap_sets([(y, pred, np.asarray(groups))], n_bootstrap=n_bootstrap, seed=BOOTSTRAP_SEED)
    return {"proba": proba, "y": y, "pred": pred, "accuracy": acc, "f1": f1,
            "accuracy_ci95": percentile_ci(boot[:, 0]), "f1_ci95": percentile_ci(boot[:, 3])}


def table(runs: list[Run], ws: Workspace, *, k: int = ENSEMBLE_SIZE,
                      n_calls: int = 30, log=print) -> pd.DataFrame:
    """``table_lightweight``: the four models and the soft-voting ensemble row."""
    table = profile_runs(runs, n_calls=n_calls, log=log)
    members = choose_members(table, k)
    vote = soft_vote(ws, members)
    chosen = table.set_index("run_id").loc[members]
    ensemble = {
        "model": f"Ensemble (soft vote of {len(members)})", "members": " + ".join(chosen["model"]),
        "run_id": "", "epochs": None, "accuracy": vote["accuracy"],
        **interval_columns("accuracy_ci95", vote["accuracy_ci95"]), "f1": vote["f1"],
        "val_accuracy": None, "val_loss": None,
        "params_millions": float(chosen["params_millions"].sum()), "file_mb": float(chosen["file_mb"].sum()),
        "latency_ms": float(chosen["latency_ms"].sum()), "latency_p90_ms": float(chosen["latency_p90_ms"].sum()),
        "latency_calls": n_calls, "epoch_seconds": float(chosen["epoch_seconds"].sum()),
    }
    table = pd.concat([table, pd.DataFrame([ensemble])], ignore_index=True)
    save_table(table, "table_lightweight", ws,
               "Lightweight models (section 5.5) at the baseline setting (batch 16, lr 1e-4): test "
               "accuracy with its bootstrap 95 % CI, parameters, deployable .keras size (no optimizer "
               "state), CPU latency per image (batch 1, median of compiled calls after warm-up) and "
               "training seconds per epoch; the ensemble averages the probabilities of the best "
               "models by validation accuracy (its size, latency and epoch time: sums of its members)")
    return table


def figure(table: pd.DataFrame, ws: Workspace):
    """Fig. 17: test accuracy (95 % CI) against CPU latency, marker area ~ parameters."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    use_style()
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    colours = sns.color_palette("colorblind", len(table))
    for colour, r in zip(colours, table.to_dict("records")):
        lo, hi = r["accuracy_ci95_low"], r["accuracy_ci95_high"]
        if pd.isna(lo):
            lo = hi = r["accuracy"]
        ax.errorbar(r["latency_ms"], r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]],
                    fmt="none", ecolor=colour, capsize=3)
        ax.scatter(r["latency_ms"], r["accuracy"], s=30 + 8 * r["params_millions"], color=colour,
                   label=f"{r['model']} ({r['params_millions']:.1f} M params, {r['file_mb']:.0f} MB)",
                   marker="D" if r["members"] else "o", edgecolor="k", linewidth=0.5)
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("CPU latency per image, ms (batch 1, median; log scale)")
    ax.set_ylabel("Test accuracy (95 % CI)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title(f"Fig. 17: accuracy vs latency (marker area ~ parameters)\n{ws.label}",
                 fontsize=10)
    return save_figure(fig, "fig17_accuracy_vs_latency", ws)


def sentences(table: pd.DataFrame) -> list[str]:
    out = []
    for r in table.to_dict("records"):
        members = f" of {r['members']}" if r["members"] else ""
        out.append(f"{r['model']}{members}: accuracy {float(r['accuracy']):.3f} (95 % CI "
                   f"{format_ci((r['accuracy_ci95_low'], r['accuracy_ci95_high'])) or 'n/a'}), "
                   f"{float(r['params_millions']):.2f} M parameters, "
                   f"{float(r['file_mb']):.1f} MB, {float(r['latency_ms']):.1f} ms per image on the CPU.")
    singles = table[table["members"].astype(str) == ""]
    if len(singles) > 1:
        fastest = singles.sort_values("latency_ms").iloc[0]
        acc = singles["accuracy"].astype(float)
        best = singles.loc[acc == acc.max(), "model"].tolist()
        smallest = singles.sort_values("params_millions").iloc[0]
        out.append(f"Fastest on this CPU: {fastest['model']}; smallest: {smallest['model']}; most "
                   f"accurate: {', '.join(best)}" + (f" (tied at {acc.max():.3f})" if len(best) > 1 else "")
                   + ". Accuracy differences whose intervals overlap are not evidence of a better model.")
    return out


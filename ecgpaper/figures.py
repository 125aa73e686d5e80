"""Every figure and table of the paper, one function each, with a stable file name
(written by :mod:`ecgpaper.outputs`: PNG + PDF, CSV + Markdown, every title
naming the dataset and profile, SYNTHETIC for the twin). They only read
finished runs (:func:`ecgpaper.runs.store.experiment_runs`): re-plotting never
retrains.

| paper | function | file |
|---|---|---|
| Fig. 1 | :func:`fig01_samples` | fig01_samples |
| Fig. 5 | :func:`table_environment` | table_environment |
| Fig. 6, 7 | :func:`fig_epoch_times` | fig06_epoch_times_vgg16, fig07_epoch_times_resnet50 |
| Fig. 8, 9 | :func:`fig_confusion` | fig08_confusion_vgg16, fig09_confusion_resnet50 |
| section 4 | :func:`table_baseline` | table_baseline |
| Table 1 | :func:`table1_grid` | table1_grid |
| Fig. 10 | :func:`fig10_confusion_grid` | fig10_confusion_grid |
| Fig. 11, 12 | :func:`fig_curves` | fig11_curves_resnet50, fig12_curves_vgg16 |
| section 5.4 | :func:`table_multirun` | table_multirun |
| Fig. 13 | :func:`fig13_multirun_bars` | fig13_multirun_bars |
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from ecgpaper.config import CLASS_CODES, CLASS_NAMES, PAPER_METRICS, PAPER_RESULTS
from ecgpaper.metrics import mean_std
from ecgpaper.outputs import interval_columns, plt, save_figure, save_table, use_style  # agg backend
from ecgpaper.paths import Workspace
from ecgpaper.runs.store import Run
from ecgpaper.runs.training import steady_epoch_seconds

METRIC_LABELS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1-score"}
PAPER_FIG = {"VGG16": {"confusion": "fig08_confusion_vgg16", "curves": "fig12_curves_vgg16",
                       "epochs": "fig06_epoch_times_vgg16"},
             "ResNet50": {"confusion": "fig09_confusion_resnet50", "curves": "fig11_curves_resnet50",
                          "epochs": "fig07_epoch_times_resnet50"}}


# ------------------------------------------------------------------ Fig. 1
def fig01_samples(data_root: Path, inventory: pd.DataFrame, ws: Workspace,
                  per_class: int = 2, seed: int = 0) -> Path:
    """Fig. 1: sample pages of each class."""
    from PIL import Image

    use_style()
    ok = inventory[inventory["readable"]].drop_duplicates("sha256")
    fig, axes = plt.subplots(len(CLASS_CODES), per_class, figsize=(4.2 * per_class, 3.1 * len(CLASS_CODES)))
    axes = np.atleast_2d(axes)
    for r, code in enumerate(CLASS_CODES):
        rows = ok[ok["label"] == code].sample(frac=1, random_state=seed).head(per_class)
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(rows):
                img = Image.open(Path(data_root) / rows["path"].iloc[c])
                img.draft("RGB", (900, 640))
                ax.imshow(img.convert("RGB"))
                ax.set_title(f"{CLASS_NAMES[code]} ({code}): {Path(rows['path'].iloc[c]).name}", fontsize=9)
    fig.suptitle(f"Fig. 1: ECG images per class\n{ws.label}", fontsize=11)
    return save_figure(fig, "fig01_samples", ws)


# ------------------------------------------------------------------ confusion matrices
def plot_confusion(ax, confusion, title: str) -> None:
    """Counts and row-normalised percentages, class names on both axes."""
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    annot = np.array([[f"{int(n)}\n{p:.0%}" for n, p in zip(rc, rp)] for rc, rp in zip(cm, pct)])
    names = [f"{CLASS_NAMES[c]}\n({c})" for c in CLASS_CODES]
    sns.heatmap(pct, annot=annot, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax,
                xticklabels=names, yticklabels=names, annot_kws={"fontsize": 8}, linewidths=0.5)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)


def fig_confusion(run: Run, ws: Workspace, name: str | None = None) -> Path:
    """Fig. 8 (VGG16) / Fig. 9 (ResNet50): confusion matrix of a baseline run."""
    use_style()
    model = run.config["model"]
    m = run.metrics
    fig, ax = plt.subplots(figsize=(6, 5.2))
    plot_confusion(ax, m["confusion"],
                   f"Confusion matrix: {model}, batch {run.config['batch_size']}, "
                   f"lr {run.config['learning_rate']:g}\naccuracy {m['accuracy']:.3f} "
                   f"(95% CI {m['ci95']['accuracy'][0]:.3f}-{m['ci95']['accuracy'][1]:.3f}), "
                   f"n = {m['n_test']}\n{ws.label}")
    return save_figure(fig, name or PAPER_FIG.get(model, {}).get("confusion", f"confusion_{model.lower()}"),
                       ws)


def fig10_confusion_grid(runs: list[Run], ws: Workspace) -> Path:
    """Fig. 10: the six grid-search confusion matrices as one composite."""
    use_style()
    fig, axes = plt.subplots(2, 3, figsize=(17, 11))
    for ax, run in zip(axes.ravel(), runs):
        c, m = run.config, run.metrics
        plot_confusion(ax, m["confusion"], f"batch {c['batch_size']}, lr {c['learning_rate']:g}: "
                                           f"accuracy {m['accuracy']:.3f}")
    fig.suptitle(f"Fig. 10: VGG16 confusion matrices over the grid\n{ws.label}",
                 fontsize=13)
    fig.tight_layout()
    return save_figure(fig, "fig10_confusion_grid", ws)


# ------------------------------------------------------------------ curves, epoch times
def fig_curves(run: Run, ws: Workspace) -> Path:
    """Fig. 11 (ResNet50) / Fig. 12 (VGG16): training and validation accuracy and loss."""
    use_style()
    h = run.history
    epochs = np.arange(1, len(h) + 1)
    model = run.config["model"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    n_head = int((h["phase"] == "head").sum()) if "phase" in h else 0
    for ax, key, label in ((a1, "accuracy", "Accuracy"), (a2, "loss", "Loss")):
        ax.plot(epochs, h[key], marker="o", ms=3, label=f"training {label.lower()}")
        ax.plot(epochs, h[f"val_{key}"], marker="s", ms=3, label=f"validation {label.lower()}")
        if n_head:  # transfer recipe: head epochs on cached features, then fine-tuning
            ax.axvspan(0.5, n_head + 0.5, color="0.92", zorder=0, label="head phase (frozen backbone)")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.legend()
    a1.set_ylim(0, 1.02)
    losses = pd.concat([h["loss"], h["val_loss"]])
    if losses.min() > 0 and losses.max() / losses.min() > 100:  # a diverging epoch would flatten the rest
        a2.set_yscale("log")
    name = PAPER_FIG.get(model, {}).get("curves", f"curves_{model.lower()}")
    fig.suptitle(f"{'Fig. 11' if model == 'ResNet50' else 'Fig. 12'}: accuracy and loss curves of {model} "
                 f"(batch {run.config['batch_size']}, lr {run.config['learning_rate']:g})\n"
                 f"{ws.label}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, name, ws)


def fig_epoch_times(run: Run, ws: Workspace) -> Path:
    """Fig. 6 (VGG16) / Fig. 7 (ResNet50): wall time of each training epoch."""
    use_style()
    h = run.history
    model = run.config["model"]
    device = ", ".join(g["name"] for g in run.environment.get("gpus", [])) or \
        f"CPU, {run.environment.get('cpu_count')} cores"
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if "phase" in h:  # epoch times of the image epochs (the head phase runs on cached features)
        h = h[h["phase"] != "head"].reset_index(drop=True)
    seconds = h["epoch_seconds"].to_numpy(float)
    bars = ax.bar(np.arange(1, len(h) + 1), seconds, color=sns.color_palette()[0])
    if len(seconds) > 1:  # epoch 1 also builds the graphs (XLA: one compile per batch shape)
        bars[0].set_hatch("//")
        bars[0].set_facecolor("white")
        bars[0].set_edgecolor(sns.color_palette()[0])
        bars[0].set_label("epoch 1: includes graph tracing / XLA compilation")
    steady = steady_epoch_seconds(seconds) if len(seconds) else float("nan")
    ax.axhline(steady, color=sns.color_palette()[1], lw=1.2,
               label=f"steady state{' (epochs 2+)' if len(seconds) > 1 else ''}: {steady:.1f} s")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    lo, hi = PAPER_RESULTS["epoch_seconds_t4"]
    ax.axhspan(lo, hi, color="0.85", zorder=0, label=f"paper: {lo}-{hi} s per epoch on a Tesla T4")
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Seconds")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{'Fig. 6' if model == 'VGG16' else 'Fig. 7'}: {model} training time per epoch "
                 f"({run.metrics['n_train']} images, {device})\n{ws.label}", fontsize=10)
    return save_figure(fig, PAPER_FIG.get(model, {}).get("epochs", f"epoch_times_{model.lower()}"),
                       ws)


# ------------------------------------------------------------------ tables
def table_baseline(runs: list[Run], ws: Workspace) -> pd.DataFrame:
    """Section 4: baseline accuracy of VGG16 and ResNet50 beside the paper's."""
    rows = []
    for run in runs:
        model, m = run.config["model"], run.metrics
        paper = PAPER_RESULTS["baseline"][model]["accuracy"]
        rows.append({"model": model, "weights": run.config["weights"], "epochs": run.config["epochs"],
                     "train_accuracy": m.get("train_accuracy"), "accuracy": m["accuracy"],
                     **interval_columns("accuracy_ci95", (m.get("ci95") or {}).get("accuracy")),
                     "f1": m["f1"], "paper_accuracy": paper,
                     "difference": m["accuracy"] - paper})
    df = pd.DataFrame(rows)
    save_table(df, "table_baseline", ws,
               "Baseline (section 4): batch 16, lr 1e-4; paper: VGG16 92 %, ResNet50 81 %")
    return df


def _checkpoint(metrics: dict) -> str:
    sel = metrics.get("selected_checkpoint")
    return f"{sel['phase']} epoch {sel['epoch']}" if sel else "last epoch"


def table_steps(runs: list[Run], ws: Workspace, name: str = "table_steps") -> pd.DataFrame:
    """Optimizer steps of each run beside the paper's (3.1, 4: a profile shrinks
    compute, not optimisation), with the recipe, train and test accuracy and the
    evaluated checkpoint."""
    rows = []
    for run in runs:
        c, m = run.config, run.metrics
        steps = m.get("optimizer_steps") or {}
        rows.append({"run": run.run_id, "model": c["model"], "recipe": c.get("recipe", "paper"),
                     "batch_size": c["batch_size"], "learning_rate": c["learning_rate"],
                     "head steps": steps.get("head", 0),
                     "fine-tune steps": steps.get("finetune", steps.get("paper", 0)),
                     "total steps": steps.get("total"), "paper steps": m.get("paper_steps"),
                     "train_accuracy": m.get("train_accuracy"), "test_accuracy": m["accuracy"],
                     "checkpoint": _checkpoint(m)})
    df = pd.DataFrame(rows)
    save_table(df, name, ws,
               "Optimizer steps per run beside the paper's (ceil(2,765 / batch) x epochs), train and "
               "test accuracy, evaluated checkpoint")
    return df


def table1_grid(runs: list[Run], ws: Workspace) -> pd.DataFrame:
    """Table 1: VGG16 accuracy, recall, precision, F1 per batch size x learning rate."""
    rows = []
    for run in runs:
        c, m = run.config, run.metrics
        paper = PAPER_RESULTS["grid"][(c["batch_size"], c["learning_rate"])]
        row = {"batch_size": c["batch_size"], "learning_rate": c["learning_rate"]}
        for k in ("accuracy", "recall", "precision", "f1"):
            row[k] = m[k]
            row[f"paper_{k}"] = paper[k]
        row.update(interval_columns("accuracy_ci95", (m.get("ci95") or {}).get("accuracy")))
        row["train_accuracy"] = m.get("train_accuracy")
        row["checkpoint"] = _checkpoint(m)
        rows.append(row)
    df = pd.DataFrame(rows)
    save_table(df, "table1_grid", ws,
               "Table 1: VGG16 under different batch sizes and learning rates (ours beside the paper's)")
    return df


def table_multirun(runs: list[Run], ws: Workspace) -> pd.DataFrame:
    """Section 5.4: mean +- std over independent runs, beside the paper's."""
    stats = mean_std([r.metrics for r in runs], PAPER_METRICS)
    rows = []
    for k in PAPER_METRICS:
        mean, std = stats[k]
        pm, ps = PAPER_RESULTS["multirun"][k]
        rows.append({"metric": k, "mean": mean, "std": std, "runs": len(runs),
                     "paper_mean": pm, "paper_std": ps, "difference": mean - pm})
    df = pd.DataFrame(rows)
    save_table(df, "table_multirun", ws,
               f"Section 5.4: VGG16, batch 32, lr 1e-4, {len(runs)} independent runs, mean +- std "
               "(sample std, ddof=1)")
    return df


def fig13_multirun_bars(table: pd.DataFrame, ws: Workspace) -> Path:
    """Fig. 13: mean metrics with +-1 std error bars, ours beside the paper's."""
    use_style()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    x = np.arange(len(table))
    w = 0.38
    ax.bar(x - w / 2, table["mean"], w, yerr=table["std"].fillna(0), capsize=4, label=f"ours ({ws.dataset})")
    ax.bar(x + w / 2, table["paper_mean"], w, yerr=table["paper_std"], capsize=4, label="paper", color="0.6")
    for xi, v in zip(x - w / 2, table["mean"]):
        ax.text(xi, min(v + 0.02, 1.03), f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(x, [METRIC_LABELS[m] for m in table["metric"]])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("Score (mean +- 1 std)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    ax.set_title(f"Fig. 13: VGG16 over {int(table['runs'].iloc[0])} independent runs\n"
                 f"{ws.label}", fontsize=10)
    return save_figure(fig, "fig13_multirun_bars", ws)


def table_environment(runs: list[Run], ws: Workspace) -> pd.DataFrame:
    """In the manner of Fig. 5: where the runs ran (device, versions, memory, epoch time)."""
    rows = []
    for run in runs:
        env, m = run.environment, run.metrics
        rows.append({
            "run": run.run_id, "model": run.config["model"],
            "device": ", ".join(g["name"] for g in env.get("gpus", [])) or f"CPU ({env.get('cpu_count')} cores)",
            "tensorflow": env.get("tensorflow"), "keras": env.get("keras"), "python": env.get("python"),
            "cuda": env.get("cuda") or "", "gpu_peak_memory_mb": m.get("gpu_peak_memory_mb"),
            "epoch_seconds_mean": m.get("epoch_seconds_mean"),
            "train_images_per_second": m.get("train_images_per_second"),
        })
    df = pd.DataFrame(rows)
    save_table(df, "table_environment", ws,
               "Environment of the runs (paper section 3.5, Fig. 5: Tesla T4, CUDA 12.4, TF 2.18)")
    return df


# ------------------------------------------------------------------ Fig. 2 and 3
def table_architecture(run: Run, ws: Workspace) -> pd.DataFrame:
    """The analogue of the paper's Fig. 2 (VGG16) and Fig. 3 (ResNet50): the trained
    model of ``run``, stage by stage (``block1``..``block5`` of VGG16, ``conv1``..
    ``conv5`` of ResNet50, then the classifier head of section 3.2), with output
    shape and parameters; ``table_architecture_<model>``."""
    import keras

    model = keras.models.load_model(run.folder / "model.keras", compile=False, safe_mode=True)
    rows: list[dict] = []
    for layer in model.layers:
        stage = "input" if isinstance(layer, keras.layers.InputLayer) else layer.name.split("_")[0]
        if not rows or rows[-1]["stage"] != stage:
            rows.append({"stage": stage, "layers": 0, "first layer": layer.name, "output shape": "",
                         "parameters": 0, "trainable": 0})
        row = rows[-1]
        row["layers"] += 1
        row["output shape"] = " x ".join(str(d) for d in layer.output.shape[1:])
        row["parameters"] += int(sum(np.prod(w.shape) for w in layer.weights))
        row["trainable"] += int(sum(np.prod(w.shape) for w in layer.trainable_weights))
    table = pd.DataFrame(rows)
    name = run.config["model"]
    fig = {"VGG16": "Fig. 2", "ResNet50": "Fig. 3"}.get(name, "architecture")
    save_table(table, f"table_architecture_{name.lower()}", ws,
               f"{fig} analogue: {name} as trained ({model.count_params():,} parameters, input "
               f"{' x '.join(str(d) for d in model.input_shape[1:])}), stage by stage")
    return table

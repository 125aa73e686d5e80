"""Benchmark: does the paper recipe learn? (issue 19; paper 3.1-3.3;
docs/training_recipe.md, "The paper recipe").

    python benchmarks/bench_paper_recipe.py [--variant fixed|literal] [--lrs 1e-3 1e-4 1e-5]
                                            [--epochs 20] [--image-size 128] [--batch-size 16]
                                            [--twin-seed 0] [--protocol paper] [--diagnose]

The paper profile's own configs (``scaled_configs(profile="paper")``: recipe
"paper", /255 input, the whole network from the first step, Adam, the paper's
checkpoint rule), with the HED VGG16 weights standing in for ImageNet (no model
hub here), on the quick twin at ``--image-size`` px, one run per learning rate,
trained by ``run_configs`` like every experiment (a finished run is reused).
``--variant literal`` trains the paper's head exactly as written (GAP -> Dense
-> Dropout -> Dense, no BatchNorm statistics recomputed); ``headbn`` the
batchnorm head with PreciseBN; ``fixed`` is what the paper profile runs (that,
and BatchNorm between VGG16's convolutions and their ReLUs). ``--twin-seed`` other
than 0 draws another twin (data the recipe was not tuned on).

Per run: train accuracy (the selected checkpoint, inference mode), test accuracy,
the majority rate, the collapse detector's verdict and the epoch chosen.
Appends to ``results/benchmarks/paper_recipe.csv`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import replace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("ECGPAPER_ALLOW_CPU", "1")  # the paper profile's settings, on purpose on a CPU

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ecgpaper import paths  # noqa: E402

LITERAL = {"head": "paper", "bn_stats": "", "conv_batchnorm": False}
#: issue 19's first fix: the batchnorm head and PreciseBN, VGG16 without BatchNorm of its own
HEAD_BN_ONLY = {"conv_batchnorm": False}
VARIANTS = {"fixed": {}, "headbn": HEAD_BN_ONLY, "literal": LITERAL}


def diagnose(config, images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Step 0 of a run with ``config`` (no training): per block, the activations' scale
    and their between-image spread; the head's logits and softmax; per layer group,
    the gradient norm of one batch's loss. What made the literal recipe collapse."""
    import keras
    import tensorflow as tf

    from ecgpaper.model.pipeline import scaling_fn
    from ecgpaper.model.backbones import conv_batchnorm_as_identity
    from ecgpaper.runs.training import statistics_sample, build_run_model, precise_batchnorm, start_session

    start_session(config)
    model = build_run_model(config, "all")
    if config.conv_batchnorm:
        conv_batchnorm_as_identity(model, statistics_sample(config, images))
    precise_batchnorm(model, config, images)
    x = scaling_fn(config.scaling, config.model)(images[:32]).numpy()
    y = keras.utils.to_categorical(labels[:32], 4)
    probes = [f"block{i}_pool" for i in range(1, 6)] + ["head_pool", "head_dense"]
    sub = keras.Model(model.input, [model.get_layer(n).output for n in probes] + [model.output])
    *acts, proba = sub(x, training=False)
    logits_model = keras.Model(model.input, model.get_layer("predictions").input)
    dense = np.asarray(logits_model(x, training=False))
    w, b = model.get_layer("predictions").get_weights()
    logits = dense @ w + b
    rows = []
    for name, a in zip(probes, acts):
        a = np.asarray(a).reshape(len(x), -1)
        rows.append({"quantity": f"{name} activations", "mean_abs": float(np.abs(a).mean()),
                     "between_image_std_per_unit": float(a.std(axis=0).mean())})
    rows.append({"quantity": "logits", "mean_abs": float(np.abs(logits).mean()),
                 "between_image_std_per_unit": float(logits.std(axis=0).mean()),
                 "min": float(logits.min()), "max": float(logits.max())})
    p = np.asarray(proba)
    rows.append({"quantity": "softmax top probability", "mean_abs": float(p.max(axis=1).mean()),
                 "between_image_std_per_unit": float(p.std(axis=0).mean()),
                 "predicted_classes": int(len(set(p.argmax(axis=1))))})
    with tf.GradientTape() as tape:
        loss = keras.losses.categorical_crossentropy(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    groups: dict[str, list] = {}
    for var, g in zip(model.trainable_weights, grads):
        if g is None:
            continue
        group = var.path.split("/")[0].split("_")[0] if var.path.startswith("block") else var.path.split("/")[0]
        groups.setdefault(group, []).append(float(tf.norm(g)) ** 2)
    for group, sq in groups.items():
        rows.append({"quantity": f"gradient norm {group}", "mean_abs": float(np.sqrt(sum(sq)))})
    rows.append({"quantity": "loss at step 0", "mean_abs": float(np.mean(loss))})
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=tuple(VARIANTS), default="fixed")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--twin-seed", type=int, default=0)
    ap.add_argument("--protocol", default="paper")
    ap.add_argument("--weights", default="hed-bsds500")
    ap.add_argument("--diagnose", action="store_true",
                    help="no training: step-0 activations, logits and gradients of both variants")
    args = ap.parse_args(argv)

    from ecgpaper.data.prepare import ensure_twin, prepare_data
    from ecgpaper.metrics import majority_rate
    from ecgpaper.runs.experiments import PAPER_RECIPE_HEAD, load_run_data, run_configs, scaled_configs
    from ecgpaper.runs.store import runs_dir

    root = None
    if args.twin_seed:
        root = paths.RAW / f"synthetic-quick-seed{args.twin_seed}"
        ensure_twin("quick", root, seed=args.twin_seed)
    prepared = prepare_data(root, profile="quick", image_size=args.image_size)
    specs = [dict(model="VGG16", batch_size=args.batch_size, learning_rate=lr, epochs=args.epochs)
             for lr in args.lrs]
    overrides = VARIANTS[args.variant]
    configs = scaled_configs(specs, profile="paper", dataset=prepared.dataset, protocol=args.protocol,
                             weights=args.weights, mixed_precision=False, xla=False, **overrides)
    # the paper profile's settings at a smaller size and with the twin's epochs (only sizes shrink)
    configs = [replace(c, image_size=args.image_size, epochs=args.epochs) for c in configs]
    data = load_run_data(prepared, args.protocol)
    if args.diagnose:
        tables = []
        for variant, extra in (("literal", LITERAL), ("fixed", {})):
            config = replace(configs[0], **extra) if variant == "literal" else configs[0]
            if args.variant == "literal" and variant == "fixed":
                config = replace(config, head=PAPER_RECIPE_HEAD, bn_stats="precise")
            tables.append(diagnose(config, data.train[0], data.train[1]).assign(variant=variant))
        table = pd.concat(tables, ignore_index=True)
        out = paths.RESULTS / "benchmarks" / "paper_recipe_step0.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        print(table.to_markdown(index=False, floatfmt=".4g"))
        print(f"-> {out}")
        return table
    records = run_configs(configs, data, name=f"paper-recipe-{args.variant}", verbose=2)
    rows = []
    for config, record in zip(configs, records):
        m = json.loads((runs_dir(config.workspace) / record.run_id / "metrics.json").read_text())
        c = m["collapse"]
        rows.append({
            "variant": args.variant, "twin_seed": args.twin_seed, "protocol": args.protocol,
            "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
            "learning_rate": config.learning_rate, "weights": config.weights,
            "train_accuracy": round(m["train_accuracy"], 3), "test_accuracy": round(m["accuracy"], 3),
            "test_majority_rate": round(majority_rate(data.test[1]), 3),
            "collapsed": c["collapsed"], "reasons": "; ".join(c["reasons"]),
            "selected_epoch": m["selected_checkpoint"]["epoch"],
            "epoch_seconds": m["epoch_seconds_mean"], "run_id": record.run_id,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        })
    table = pd.DataFrame(rows)
    out = paths.RESULTS / "benchmarks" / "paper_recipe.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, mode="a", header=not out.exists(), index=False)
    print(table.drop(columns=["run_id", "machine", "reasons"]).to_markdown(index=False))
    print(f"appended to {out}")
    return table


if __name__ == "__main__":
    main()

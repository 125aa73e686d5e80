"""Benchmark: training throughput per model and image size, and the input
pipeline alone (issue 3; paper section 3.5, Fig. 6 and 7).

    python benchmarks/bench_training.py [--models VGG16 ResNet50 ...] [--sizes 64 128 224]
                                        [--batch-size 32] [--steps 3] [--mixed-precision] [--xla]
                                        [--epoch-images 2765]

For each (model, size): builds the model (random weights: the cost of a step
does not depend on them), trains ``--steps`` timed steps after one warm-up step
through the real ``tf.data`` pipeline, and reports images/s. The pipeline alone
(batches of uint8 -> float /255, prefetch) is timed over the same arrays; it
must feed at least 3x faster than the model consumes. ``--epoch-images`` also
reports the implied epoch time for a training set that size (the paper's
70 % of ~3,951 images is 2,765), to set beside the paper's 60-80 s per epoch
on a T4. Writes ``results/benchmarks/training.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ecgpaper import paths  # noqa: E402
from ecgpaper.model.pipeline import make_dataset  # noqa: E402


def pipeline_images_per_second(images, labels, batch_size: int, repeats: int = 3) -> float:
    ds = make_dataset(images, labels, batch_size=batch_size, shuffle=True, seed=0)
    for _ in ds:  # warm-up (graph tracing)
        pass
    t0 = time.perf_counter()
    for _ in range(repeats):
        for _ in ds:
            pass
    return repeats * len(images) / (time.perf_counter() - t0)


def training_images_per_second(model_name, images, labels, batch_size, steps, xla,
                               mixed_precision=False) -> tuple[float, str, float | None]:
    """(images/s, the compute dtype the model really used, peak GPU memory MB or None)."""
    import keras

    from ecgpaper.model.backbones import build_model, compile_for_fit
    from ecgpaper.runs.training import gpu_peak_memory_mb, reset_gpu_peak_memory

    # clear_session resets Keras's global state, the dtype policy included: policy after it
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    reset_gpu_peak_memory()
    model = build_model(model_name, image_size=images.shape[1], weights="none")
    compile_for_fit(model, keras.optimizers.Adam(1e-4), jit_compile=xla)
    ds = make_dataset(images, labels, batch_size=batch_size, shuffle=True, seed=0,
                      model_name=model_name).repeat()
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)  # warm-up: tracing, allocation
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    ips = steps * batch_size / (time.perf_counter() - t0)
    return ips, model.get_layer("head_dense").compute_dtype, gpu_peak_memory_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 224])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mixed-precision", action="store_true")
    ap.add_argument("--xla", action="store_true")
    ap.add_argument("--epoch-images", type=int, default=2765)
    ap.add_argument("--out", default=str(paths.BENCHMARKS / "training.json"))
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        n = args.batch_size * max(args.steps, 4)
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 4, n).astype(np.int32)
        feed = pipeline_images_per_second(images, labels, args.batch_size)
        for name in args.models:
            ips, dtype, peak = training_images_per_second(name, images, labels, args.batch_size,
                                                          args.steps, args.xla, args.mixed_precision)
            row = {"model": name, "image_size": size, "batch_size": args.batch_size,
                   "compute_dtype": dtype, "gpu_peak_memory_mb": peak,
                   "train_images_per_s": round(ips, 2), "pipeline_images_per_s": round(feed, 1),
                   "pipeline_headroom": round(feed / ips, 1),
                   "epoch_seconds_for_epoch_images": round(args.epoch_images / ips, 1)}
            rows.append(row)
            print(json.dumps(row))
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    result = {
        "benchmark": "training throughput (random data, real tf.data pipeline)",
        "device": gpus or f"CPU ({os.cpu_count()} cores)", "mixed_precision": args.mixed_precision,
        "xla": args.xla, "epoch_images": args.epoch_images, "rows": rows,
        "paper_epoch_seconds_t4": [60, 80],
        "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()

"""Training progress as a reader sees it (progress.py) and ``python -m ecgpaper clean``."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ecgpaper.errors import UserError
from ecgpaper.progress import ENV, progress_mode, training_progress


def fit_tiny_model(verbose: int, stream, epochs=3, steps=4):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(8 * steps, 3)), np.arange(8 * steps) % 2
    callbacks, fit_verbose = training_progress(verbose, epochs=epochs, steps_per_epoch=steps,
                                               label="Tiny finetune", stream=stream)
    model.fit(x, y, batch_size=8, epochs=epochs, validation_data=(x, y), callbacks=callbacks,
              verbose=fit_verbose)
    return callbacks


def test_in_a_log_training_prints_one_line_per_epoch(monkeypatch):
    monkeypatch.setenv(ENV, "lines")
    out = io.StringIO()
    fit_tiny_model(1, out)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"Tiny finetune epoch {k}/3" for k in (1, 2, 3)]
    assert all("val_accuracy" in line and "steps" in line for line in lines)
    assert "(12 steps," in lines[-1]


def test_in_a_terminal_training_shows_one_bar_over_all_steps(monkeypatch):
    monkeypatch.setenv(ENV, "bar")
    out = io.StringIO()
    started = time.monotonic()
    fit_tiny_model(1, out)
    elapsed = time.monotonic() - started
    final = out.getvalue().split("\r")[-1]
    assert "Tiny finetune" in final and "12/12" in final and "epoch 3/3" in final
    # redrawn at most once a second, once per epoch (its metrics) and at start and end,
    # not once per step: compact in a saved notebook (on a busy machine the 12 steps take
    # seconds, so the bound follows the time they took)
    assert out.getvalue().count("\r") <= int(elapsed) + 3 + 2


def test_quiet_means_no_progress(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert training_progress(0, epochs=1, steps_per_epoch=1, label="x") == ([], 0)
    assert progress_mode(io.StringIO()) == "lines"  # not a terminal, not a Jupyter kernel
    monkeypatch.setenv(ENV, "fancy")
    with pytest.raises(UserError, match="bar, lines, off"):
        progress_mode()


def ecgpaper(root, *args):
    env = {**os.environ, "ECGPAPER_ROOT": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "ecgpaper", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_clean_reports_sizes_and_deletes_only_what_it_is_asked(tmp_path):
    sizes = {"results/synthetic-quick/quick/runs/a/model.keras": 3_000_000,
             "results/synthetic-quick/smoke/runs/b/model.keras": 1_000_000,
             "data/cache/synthetic-quick/64px.npy": 500_000,
             "data/raw/synthetic-quick/ECG_DATA/x.jpg": 200_000,
             "results/synthetic-quick/quick/REPORT.md": 1000}
    for rel, n in sizes.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\0" * n)

    res = ecgpaper(tmp_path, "clean", "--dry-run", "--runs", "--cache")
    assert res.returncode == 0, res.stderr
    assert "3.0 MB  results/synthetic-quick/quick/runs" in res.stdout
    assert "1.0 MB  results/synthetic-quick/smoke/runs" in res.stdout
    assert "500.0 KB  data/cache" in res.stdout and "would free 4.5 MB in total" in res.stdout
    assert all((tmp_path / rel).exists() for rel in sizes)

    res = ecgpaper(tmp_path, "clean")  # no flag: sizes of both, nothing deleted
    assert "nothing deleted" in res.stdout and all((tmp_path / rel).exists() for rel in sizes)

    res = ecgpaper(tmp_path, "clean", "--runs", "--profile", "quick")
    assert res.returncode == 0 and "freed 3.0 MB in total" in res.stdout
    assert not (tmp_path / "results/synthetic-quick/quick/runs").exists()
    kept = [rel for rel in sizes if "quick/runs" not in rel]
    assert all((tmp_path / rel).exists() for rel in kept)

    res = ecgpaper(tmp_path, "clean", "--runs", "--cache")
    assert "freed 1.5 MB in total" in res.stdout
    assert (tmp_path / "data/raw/synthetic-quick/ECG_DATA/x.jpg").exists()
    assert (tmp_path / "results/synthetic-quick/quick/REPORT.md").exists()
    assert not (tmp_path / "data/cache").exists()

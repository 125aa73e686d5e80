"""Training progress that stays readable in a terminal, in JupyterLab and in papermill logs.

Keras's own ``verbose=1`` bar redraws every step: in a saved notebook or a log
file that is thousands of lines. Keras has no "compact" mode, and tqdm's Keras
callback (``tqdm.keras.TqdmCallback``) opens one bar per epoch, so this module
hand-writes a small callback: one tqdm bar over all the steps of a training
phase, its postfix the epoch and the last metrics. How often it redraws
depends on where it writes (``ECGPAPER_PROGRESS`` overrides):

- ``bar``: a terminal or an interactive Jupyter kernel: redraw every second;
- ``lines``: anything else (a log file, ``./run_all.sh``'s papermill kernels):
  one line per epoch (epoch, steps, elapsed time, loss, accuracy);
- ``off``: nothing.

papermill runs the kernels with ``coalesce_streams`` (runner.py), so even a
bar leaves only its last state in the executed notebook.
"""
from __future__ import annotations

import os
import sys
import time

from ecgpaper.errors import UserError

MODES = ("bar", "lines", "off")
ENV = "ECGPAPER_PROGRESS"
BAR_REFRESH_SECONDS = 1.0


def _in_jupyter_kernel() -> bool:
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_mode(stream=None) -> str:
    """``bar`` | ``lines`` | ``off``: the environment's choice, else by where we write."""
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise UserError(f"{ENV}={chosen!r}: choose one of {', '.join(MODES)}")
        return chosen
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", lambda: False)
    return "bar" if isatty() or _in_jupyter_kernel() else "lines"


def _fmt_logs(logs: dict | None) -> str:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    return ", ".join(f"{k} {logs[k]:.3f}" for k in keys if logs and k in logs)


def training_progress(verbose: int, *, epochs: int, steps_per_epoch: int, label: str,
                      stream=None):
    """Keras callbacks showing a phase's progress (paper 3.5: training runs for
    epochs of ``steps_per_epoch`` optimizer steps). ``verbose`` 0: none. Returns
    (callbacks, the ``verbose`` to give ``fit``: always 0, the callback speaks)."""
    import keras
    from tqdm import tqdm

    mode = "off" if not verbose else progress_mode(stream)
    if mode == "off":
        return [], 0
    out = stream or sys.stdout

    class TrainingProgress(keras.callbacks.Callback):
        """One bar (or one line per epoch) over ``epochs * steps_per_epoch`` steps."""

        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()
            self.bar = None
            if mode == "bar":
                self.bar = tqdm(total=epochs * steps_per_epoch, desc=label, unit="step", file=out,
                                mininterval=BAR_REFRESH_SECONDS, dynamic_ncols=True, leave=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            if self.bar is not None:
                self.bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}", refresh=False)

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            text = f"epoch {epoch + 1}/{epochs}: {_fmt_logs(logs)}"
            if self.bar is not None:
                self.bar.set_postfix_str(text)
                return
            elapsed = time.perf_counter() - self.t0
            print(f"{label} {text} ({(epoch + 1) * steps_per_epoch} steps, {elapsed:.0f} s)",
                  file=out, flush=True)

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()

    return [TrainingProgress()], 0

"""The models a live test server serves: the smoke baseline (VGG16 and ResNet50,
64 px) trained on the synthetic twin, the best run exported (about 40 s on 2 CPU
cores alone, 100 s beside the paper-mini run; under ./run_tests.sh the baseline that
notebook 02 trained under nbval, exported again), or :func:`tiny_export`'s untrained
one (seconds). Uses pytest (conftest's ``point_paths``): for the tests only."""
from __future__ import annotations

import functools
from pathlib import Path


#: the first project root :func:`train_and_export_smoke_model` trained in this session
_TRAINED: list[Path] = []


def train_and_export_smoke_model(root: Path) -> Path:
    """Generate the twin and train the smoke baseline with ``root`` as the project
    root; ``root/models`` then holds the export, ``root/data/raw`` the twin. Trained
    once per test session: a later call gets a copy of the first root (the same
    seeds would train the same runs again), so each module still has its own files.
    Where ./run_tests.sh's nbval run is there (ECGPAPER_NOTEBOOK_RUN), its notebook 02
    trained these very runs: they are exported from it instead of trained again."""
    import os
    import shutil

    import pytest

    from ecgpaper.runs.experiments import run_experiment

    from conftest import point_paths

    if _TRAINED and _TRAINED[0].is_dir():
        shutil.copytree(_TRAINED[0], root, dirs_exist_ok=True, symlinks=True)
        return root
    notebook_run = os.environ.get("ECGPAPER_NOTEBOOK_RUN")
    if not (notebook_run and _export_notebook_baseline(Path(notebook_run), root)):
        mp = pytest.MonkeyPatch()
        point_paths(mp, root)
        try:
            run_experiment("baseline", profile="smoke", verbose=0, log=lambda *_: None)
        finally:
            mp.undo()
    _TRAINED[:] = [root]
    return root


def _export_notebook_baseline(notebook_run: Path, root: Path) -> bool:
    """Export the smoke baseline that notebook 02 trained in ``notebook_run`` (the run
    ``run_experiment("baseline")`` would export: the better validation accuracy) into
    ``root/models``, the twin copied to ``root/data/raw``; False when it is not there.
    Only the baseline's runs are candidates: later notebooks add grid and lightweight
    runs to the same registry, and the tests serve a VGG16 or ResNet50 baseline."""
    import shutil

    import pytest

    from ecgpaper.errors import UserError
    from ecgpaper.paths import Workspace
    from ecgpaper.runs.export import export_best, selection_key
    from ecgpaper.runs.store import experiment_runs, read_registry

    from conftest import point_paths

    twin = notebook_run / "data" / "raw" / "synthetic-smoke"
    if not twin.is_dir():
        return False
    mp = pytest.MonkeyPatch()
    point_paths(mp, notebook_run)
    try:
        ws = Workspace("synthetic-smoke", "smoke")
        try:
            baseline = {r.run_id for r in experiment_runs("baseline", ws)}
        except UserError:  # no baseline there (a partial run): train instead
            return False
        records = [r for r in read_registry(ws) if r.run_id in baseline and r.model_file.exists()
                   and not r.collapsed]
        if len(records) != 2:
            return False
        best = max(records, key=lambda r: selection_key(r.full_metrics, r.run_id))
        export_best(ws, run_id=best.run_id, dest=root / "models", log=lambda *_: None)
    finally:
        mp.undo()
    shutil.copytree(twin, root / "data" / "raw" / "synthetic-smoke", dirs_exist_ok=True)
    return True


@functools.cache
def tiny_gate() -> dict:
    """A page gate calibrated on 16 + 8 freshly drawn twin pages (seconds)."""
    from ecgpaper.data.pagegate import twin_gate

    return twin_gate(n_train=16, n_val=8, sizes=((1106, 786), (800, 568)))


def tiny_export(dest: Path, *, output: str = "probabilities", size: int = 64) -> Path:
    """An untrained export in seconds (no training): one convolution, then
    ``output="probabilities"``: (batch, 4) softmax, as the service expects; or
    ``"spatial"``: a softmax per pixel, (batch, size, size, 4), the wrong rank."""
    import types

    import keras

    from ecgpaper.runs.export import write_export

    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    if output == "probabilities":
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Dense(4, activation="softmax", name="probabilities")(x)
    elif output == "spatial":
        out = keras.layers.Softmax(name="probabilities")(x)
    else:
        raise ValueError(f"output must be 'probabilities' or 'spatial', not {output!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    keras.Model(inp, out, name="tiny_ecg").save(dest / "source.keras")
    config = {"model": "VGG16", "image_size": size, "scaling": "rescale", "fit": "resize",
              "crop": False, "protocol": "grouped"}
    data = types.SimpleNamespace(dataset="synthetic-smoke", synthetic=True, profile="smoke")
    write_export(dest / "source.keras", config, data, run_id=f"tiny-{output}", metrics={},
                 selected_by="test", page_gate=tiny_gate(), dest=dest)
    return dest

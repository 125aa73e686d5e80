"""The model a live test server serves: the smoke baseline (VGG16 and ResNet50,
64 px) trained on the synthetic twin, the best run exported (about 40 s on 2 CPU
cores). Uses pytest (conftest's ``point_paths``): for the tests only."""
from __future__ import annotations

from pathlib import Path


def train_and_export_smoke_model(root: Path) -> Path:
    """Generate the twin and train the smoke baseline with ``root`` as the project
    root; ``root/models`` then holds the export, ``root/data/raw`` the twin."""
    import pytest

    from ecgpaper.runs.experiments import run_experiment

    from conftest import point_paths

    mp = pytest.MonkeyPatch()
    point_paths(mp, root)
    try:
        run_experiment("baseline", profile="smoke", verbose=0, log=lambda *_: None)
    finally:
        mp.undo()
    return root

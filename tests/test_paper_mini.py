"""The paper profile's path, in miniature, on every CI run (issue 19).

``paper-mini`` is the ``paper`` profile with its sizes shrunk (32 px, the tiny
twin, 2-3 epochs): recipe "paper", /255 input, ImageNet weights obtained through
the real fetch code (from a loopback mirror of Keras-shaped notop files, checked
against an md5 list), the whole network trained from the first step, the paper's
checkpoint rule, every notebook 00-06 and every study, REPORT.md. If a step of
the paper path breaks, this turns red. The weights are random (no ImageNet here),
so the runs learn little and are flagged as collapsed: that path (warning, no
verdict, no export) is part of what is checked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ecgpaper.config import PROFILES
from ecgpaper.report import paper_numbers

from conftest import point_paths
from support.imagenet_mirror import finished_run, run_paper_mini

NOTEBOOKS = ["00_download", "01_preprocess", "02_baseline", "03_grid_search", "04_multirun_stats",
             "05_report", "06_beyond_the_paper"]


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """Every notebook on the paper-mini profile: the run ./run_tests.sh made in the
    background (ECGPAPER_PAPER_MINI_RUN), else one made now in a fresh project root."""
    given = os.environ.get("ECGPAPER_PAPER_MINI_RUN")
    if given:
        return finished_run(Path(given))
    root = tmp_path_factory.mktemp("paper-mini")
    mp = pytest.MonkeyPatch()
    point_paths(mp, root / "project")
    try:
        return run_paper_mini(root, log=lambda *_: None)
    finally:
        mp.undo()


def _results(run) -> Path:
    return run["root"] / "results/synthetic-paper-mini/paper-mini"


def test_every_notebook_of_the_paper_path_runs_and_the_weights_came_through_the_fetch_code(mini_run):
    executed = _results(mini_run) / "notebooks"
    assert sorted(p.stem for p in executed.glob("*.ipynb")) == NOTEBOOKS
    log = mini_run["log"]
    for name in ("VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0"):
        assert f"downloading {name} ImageNet weights: http://127.0.0.1:" in log
    assert log.count("md5 verified") == 4
    assert len(list((mini_run["keras"] / "models").glob("*.h5"))) == 4


def test_every_run_follows_the_paper_recipe_and_says_how_it_departs(mini_run):
    runs = sorted((_results(mini_run) / "runs").iterdir())
    assert len(runs) >= 30
    # the input ablation (notebook 06) also feeds preprocess_input on purpose
    ablation = set(json.loads((_results(mini_run) / "experiments/input_ablation.json").read_text())["run_ids"])
    models = set()
    for folder in runs:
        config = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        models.add(config["model"])
        assert (config["recipe"], config["finetune"]) == ("paper", "all")
        assert config["scaling"] == "rescale" or (folder.name in ablation and config["scaling"] == "preprocess_input")
        assert (config["head"], config["bn_stats"], config["weights"]) == ("batchnorm", "precise", "imagenet")
        assert config["weights_file"]["md5_source"] == str(Path(mini_run["listing"]).resolve())
        assert any("not Keras's ImageNet file" in d for d in config["deviations"])
        assert any("PreciseBN" in d for d in config["deviations"])
        # the paper's checkpoint rule over every epoch, and the collapse detector's evidence
        assert metrics["selected_checkpoint"]["phase"] == "paper" and metrics["epochs_run"] >= 2
        collapse = metrics["collapse"]
        assert {"val", "test", "train_accuracy", "reasons", "collapsed"} <= set(collapse)
        assert 0 < collapse["test"]["top_class_share"] <= 1
        assert metrics["compute_dtype"] == "float32"  # no GPU: no mixed precision, and it says so
        # per class and calibration (issue 21, item 4), in every run
        assert set(metrics["clinical"]["per_class"]) == {"MI", "HMI", "HB", "NORM"}
        assert metrics["calibration"]["fitted_on"] == "validation" and metrics["calibration"]["temperature"] > 0
    assert models == {"VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0"}


def test_the_report_gives_collapsed_runs_no_verdict_and_the_notebooks_warn(mini_run):
    report = mini_run["report"].read_text()
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    for label in paper_numbers():
        assert label in rows
        assert "| n/a: " in rows[label] or label.startswith("3.5")
    results = _results(mini_run)
    flagged = [f.parent.name for f in (results / "runs").glob("*/metrics.json")
               if json.loads(f.read_text())["collapse"]["collapsed"]]
    if flagged:
        assert "n/a: collapsed" in report
        executed = (results / "notebooks/02_baseline.ipynb").read_text()
        baseline = json.loads((results / "experiments/baseline.json").read_text())["run_ids"]
        if set(baseline) & set(flagged):
            assert "runs COLLAPSED" in executed
    # no collapsed run is ever served
    meta = mini_run["root"] / "models" / "ecg_classifier.json"
    if meta.exists():
        assert json.loads(meta.read_text())["run_id"] not in flagged


def test_the_per_class_and_calibration_tables_and_the_reliability_figure_are_written(mini_run):
    results = _results(mini_run)
    figures = mini_run["root"] / "figures/synthetic-paper-mini/paper-mini"
    for name in ("table_per_class", "table_calibration"):
        assert "paper-mini" in (results / f"{name}.md").read_text()
        assert (results / f"{name}.csv").stat().st_size > 0
    assert (figures / "fig18_reliability.png").stat().st_size > 1000
    assert "### Per class and calibration" in mini_run["report"].read_text()


def test_the_notebook_run_took_its_time_limit_from_the_profile(mini_run):
    timings = json.loads((_results(mini_run) / "notebooks/timings.json").read_text())
    assert set(timings["seconds"]) == set(NOTEBOOKS)
    assert max(timings["seconds"].values()) < PROFILES["paper-mini"].cell_timeout_s
    assert os.environ.get("ECGPAPER_WEIGHTS_BASE_URL") is None  # the environment was restored

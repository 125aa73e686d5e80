"""Runs, the registry, resumable experiments and the export (paper sections 3.4, 4, 5.4)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from ecgpaper.config import PROFILES
from ecgpaper.errors import UserError
from ecgpaper.metrics import COLLAPSE_TRAIN_MARGIN
from ecgpaper.paths import Workspace
from ecgpaper.runs.experiments import EXPERIMENTS, experiment_configs, run_experiment
from ecgpaper.runs.export import export_best, read_export
from ecgpaper.runs.runconfig import RunConfig
from ecgpaper.runs.store import append_record, read_registry, registry_path

from conftest import point_paths

SMOKE = dict(profile="smoke", verbose=0, log=lambda *_: None)


def test_experiments_follow_the_paper_and_profiles_only_scale_them():
    grid = experiment_configs("grid", profile="smoke", dataset="d")
    assert [(c.batch_size, c.learning_rate) for c in grid] == [
        (16, 1e-3), (16, 1e-4), (16, 1e-5), (32, 1e-3), (32, 1e-4), (32, 1e-5)]
    assert {c.model for c in grid} == {"VGG16"}
    paper = experiment_configs("multirun", profile="paper", dataset="d", weights="none")
    assert [c.seed for c in paper] == [0, 1, 2, 3, 4] and {c.epochs for c in paper} == {30}
    assert {c.image_size for c in paper} == {224}
    assert {c.epochs for c in experiment_configs("baseline", profile="paper", dataset="d", weights="none")} == {20}
    assert {c.model for c in experiment_configs("curves", profile="smoke", dataset="d")} == {"VGG16", "ResNet50"}
    assert all(c.epochs >= 1 and c.image_size == PROFILES["smoke"].image_size for c in grid)
    assert set(EXPERIMENTS) == {"baseline", "grid", "curves", "multirun"}
    with pytest.raises(UserError):
        experiment_configs("nope", profile="smoke", dataset="d")


def test_run_id_depends_on_config_and_manifest():
    a = RunConfig(seed=0)
    assert a.run_id("m1") == RunConfig(seed=0).run_id("m1")
    assert a.run_id("m1") != RunConfig(seed=1).run_id("m1") != a.run_id("m2")


def test_registry_survives_a_torn_line(project_root):
    append_record(Workspace("d", "smoke"), {"run_id": "a"})
    with open(registry_path(Workspace("d", "smoke")), "a") as fh:
        fh.write('{"run_id": "half-writ')  # a crash mid-write
    append_record(Workspace("d", "smoke"), {"run_id": "b"})
    assert [r.run_id for r in read_registry(Workspace("d", "smoke"))] == ["a", "b"]


@pytest.fixture(scope="module")
def _baseline_once(tmp_path_factory):
    """One real smoke experiment (the twin, 64 px, 1 epoch) shared by the tests below."""
    root = tmp_path_factory.mktemp("baseline-project")
    mp = pytest.MonkeyPatch()
    point_paths(mp, root)
    t0 = time.perf_counter()
    records = run_experiment("baseline", **SMOKE)
    elapsed = time.perf_counter() - t0
    mp.undo()
    return root, records, elapsed


@pytest.fixture
def smoke_baseline(_baseline_once, monkeypatch):
    point_paths(monkeypatch, _baseline_once[0])
    return _baseline_once


def test_a_smoke_run_writes_every_artifact(smoke_baseline):
    root, records, _ = smoke_baseline
    assert [r.config["model"] for r in records] == ["VGG16", "ResNet50"]
    for r in records:
        run = root / "results/synthetic-smoke/smoke/runs" / r.run_id
        names = {p.name for p in run.iterdir()}
        assert {"config.json", "history.csv", "metrics.json", "confusion.csv", "predictions.csv",
                "environment.json", "model.keras"} <= names
        hist = pd.read_csv(run / "history.csv")
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"} <= set(hist.columns)
        m = json.loads((run / "metrics.json").read_text())
        pred = pd.read_csv(run / "predictions.csv")
        assert len(pred) == m["n_test"] == np.array(m["confusion"]).sum()
        assert abs(pred["correct"].mean() - m["accuracy"]) < 1e-9
        # the recorded metrics and interval are those of the recorded predictions
        from ecgpaper.config import CLASS_CODES
        from ecgpaper.metrics import evaluate_predictions

        y = pred["true"].map(CLASS_CODES.index).to_numpy()
        again = evaluate_predictions(y, pred[[f"p_{c}" for c in CLASS_CODES]].to_numpy(),
                                     seed=r.config["seed"])
        assert again["ci95"] == m["ci95"] and again["f1"] == pytest.approx(m["f1"])
        assert np.trace(np.array(m["confusion"])) == int(pred["correct"].sum())
        env = json.loads((run / "environment.json").read_text())
        assert env["tensorflow"] and env["keras"] and "determinism" in env
    assert not list((root / "results/synthetic-smoke/smoke/runs").glob(".*partial"))


def test_rerunning_skips_finished_runs(smoke_baseline):
    root, records, _ = smoke_baseline
    runs = root / "results/synthetic-smoke/smoke/runs"
    before = {r.run_id: (runs / r.run_id / "metrics.json").read_bytes() for r in records}
    messages = []
    again = run_experiment("baseline", profile="smoke", verbose=0, log=messages.append)
    assert [r.run_id for r in again] == [r.run_id for r in records]
    assert sum("already done, skipped" in m for m in messages) == 2
    assert len(read_registry(Workspace("synthetic-smoke", "smoke"))) == 2
    assert not any("] training " in m for m in messages)
    assert {i: (runs / i / "metrics.json").read_bytes() for i in before} == before  # nothing retrained


def test_export_round_trips_and_loads_in_a_fresh_process(smoke_baseline):
    root, records, _ = smoke_baseline
    meta = read_export()
    assert meta["run_id"] in {r.run_id for r in records}
    assert meta["class_codes"] == ["MI", "HMI", "HB", "NORM"]
    assert meta["input_size"] == 64 and meta["synthetic"] is True and meta["profile"] == "smoke"
    assert meta["preprocessing"] == {"scaling": "rescale", "fit": "resize", "crop": False, "version": 1}
    code = ("import json, sys, numpy as np, keras; "
            "m = keras.models.load_model(sys.argv[1]); "
            "p = m.predict(np.zeros((2, 64, 64, 3), 'float32'), verbose=0); "
            "print(json.dumps(p.shape))")
    res = subprocess.run([sys.executable, "-c", code, str(root / "models/ecg_classifier.keras")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [2, 4]
    with pytest.raises(UserError, match="no finished run"):
        export_best(Workspace("synthetic-smoke", "quick"))


def test_runs_record_per_class_and_calibration_and_the_export_serves_the_temperature(smoke_baseline, tmp_path):
    """Issue 21, item 4: metrics.json's per-class and calibration entries are those of the
    recorded predictions, the temperature comes from the validation set, the exported
    classifier's probabilities are the model's at that temperature, and the study writes
    its tables and reliability figure."""
    import shutil

    import keras

    from ecgpaper.config import CLASS_CODES
    from ecgpaper.metrics import apply_temperature, calibration_scores, per_class_report
    from ecgpaper.model.pipeline import scaling_fn
    from ecgpaper.runs.store import load_run
    from ecgpaper.serve.inference import Classifier
    from ecgpaper.studies import calibration
    from ecgpaper.studies.common import test_groups

    root, records, _ = smoke_baseline
    ws = Workspace("synthetic-smoke", "smoke")
    runs = [load_run(ws, r.run_id) for r in records]
    for run in runs:
        m = run.metrics
        pred = pd.read_csv(run.folder / "predictions.csv")
        y = pred["true"].map(CLASS_CODES.index).to_numpy()
        proba = pred[[f"p_{c}" for c in CLASS_CODES]].to_numpy()
        again = per_class_report(y, proba, groups=test_groups(ws.dataset, run.config, pred["path"]))
        assert m["clinical"] == json.loads(json.dumps(again)) and again["ci95_resamples"] == "duplicate groups"
        assert set(m["clinical"]["per_class"]) == set(CLASS_CODES)
        for code, c in m["clinical"]["per_class"].items():  # sensitivity is the recall of metrics.json
            assert c["sensitivity"] == pytest.approx(m["per_class"][code]["recall"]) or c["positives"] == 0
        cal = m["calibration"]
        assert cal["fitted_on"] == "validation" and cal["n_val"] == m["n_val"] and cal["temperature"] > 0
        assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9
        before = calibration_scores(y, proba)
        assert {k: cal["before"][k] for k in ("brier", "ece", "nll")} == pytest.approx(
            {k: before[k] for k in ("brier", "ece", "nll")})
        assert cal["after"]["nll"] == pytest.approx(
            calibration_scores(y, apply_temperature(proba, cal["temperature"]))["nll"])

    meta = read_export()
    served = next(r for r in runs if r.run_id == meta["run_id"])
    assert meta["temperature"] == served.metrics["calibration"]["temperature"]
    assert meta["metrics"]["calibration"]["temperature"] == meta["temperature"]
    # the classifier applies the export's temperature: at the run's own and at a planted T = 100
    # (the fit's upper bound: the 1-epoch smoke model answers pure noise with a float32 one-hot)
    doctored = tmp_path / "models"
    shutil.copytree(root / "models", doctored)
    (doctored / "ecg_classifier.json").write_text(json.dumps({**meta, "temperature": 100.0}))
    batch = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    model = keras.models.load_model(root / "models/ecg_classifier.keras", compile=False)
    raw = np.asarray(model(scaling_fn("rescale", meta["model"])(batch), training=False), float)
    served_clf, planted = Classifier(root / "models"), Classifier(doctored)
    assert served_clf.forward(batch) == pytest.approx(apply_temperature(raw, meta["temperature"]), abs=1e-5)
    assert planted.forward(batch) == pytest.approx(apply_temperature(raw, 100.0), abs=1e-5)
    assert np.abs(planted.forward(batch) - raw).max() > 0.1
    probabilities = planted.forward(batch, explain=True)[0]
    assert probabilities == pytest.approx(apply_temperature(raw, 100.0), abs=1e-5)
    assert (probabilities.argmax(1) == raw.argmax(1)).all()

    per_class, calib = calibration.table(runs, ws)
    png = calibration.figure(runs, ws)
    assert png == ws.figures / "fig18_reliability.png" and png.stat().st_size > 1000
    assert (ws.figures / "fig18_reliability.pdf").exists()
    for name in ("table_per_class", "table_calibration"):
        assert "synthetic-smoke" in (ws.results / f"{name}.md").read_text()
    assert len(per_class) == 4 * len(runs) and list(calib["model"]) == ["VGG16", "ResNet50"]
    text = calibration.sentences(pd.read_csv(ws.results / "table_calibration.csv", keep_default_na=False),
                                 pd.read_csv(ws.results / "table_per_class.csv", keep_default_na=False))
    t = runs[0].metrics["calibration"]["temperature"]
    assert text[0].startswith(f"VGG16 (`paper`): temperature {t:.2f} fitted on {runs[0].metrics['n_val']} ")


def test_a_killed_experiment_resumes_where_it_stopped(tmp_path):
    """Kill an experiment right after its first run is registered, then rerun it
    (the baseline's two runs: the resume logic is the same for every experiment)."""
    env = {**os.environ, "ECGPAPER_ROOT": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "ecgpaper", "run", "baseline", "--profile", "smoke", "--quiet", "--no-export"]
    registry = tmp_path / "results/synthetic-smoke/smoke/runs.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if registry.exists() and registry.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [json.loads(line)["run_id"] for line in registry.read_text().splitlines()]
    assert len(done_before) == 1
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("already done, skipped") == len(done_before)
    ids = [json.loads(line)["run_id"] for line in registry.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 2 and ids[:len(done_before)] == done_before
    runs = tmp_path / "results/synthetic-smoke/smoke/runs"
    assert not list(runs.glob(".*partial"))
    assert all((runs / i / "metrics.json").exists() for i in ids)


def test_runs_record_steps_recipe_and_the_best_validation_checkpoint(smoke_baseline):
    """Every run says how many optimizer steps it made (beside the paper's), which
    recipe and deviations it used, and evaluates its best-validation checkpoint."""
    root, records, _ = smoke_baseline
    for r in records:
        run = root / "results/synthetic-smoke/smoke/runs" / r.run_id
        m = json.loads((run / "metrics.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        hist = pd.read_csv(run / "history.csv")
        assert cfg["recipe"] == "transfer" and cfg["head"] == "multiscale"
        assert any("transfer recipe" in d for d in cfg["deviations"])
        assert any("pooled input of the backbone's top block" in d for d in cfg["deviations"])
        assert m["finetune_inputs"] == "cached outputs of the frozen layers"
        steps = m["optimizer_steps"]
        assert steps["total"] == steps["head"] + steps.get("finetune", 0) == int(hist["steps"].sum())
        assert steps["head"] >= PROFILES["smoke"].head_steps
        assert m["paper_steps"] == 3460  # baseline: ceil(2765 / 16) x 20 epochs
        # the best validation accuracy, ties broken by the lowest validation loss
        top = hist[hist["val_accuracy"] >= hist["val_accuracy"].max() - 1e-9]
        best = top["val_loss"].idxmin()
        assert m["selected_checkpoint"] == {
            "phase": hist["phase"][best], "epoch": int(hist["epoch"][best]),
            "val_accuracy": pytest.approx(float(hist["val_accuracy"][best])),
            "val_loss": pytest.approx(float(hist["val_loss"][best]))}
        # the saved model is that checkpoint: evaluated again, it gives the same validation numbers
        assert m["val_accuracy"] == pytest.approx(float(hist["val_accuracy"][best]), abs=1e-6)
        assert m["val_loss"] == pytest.approx(float(hist["val_loss"][best]), rel=1e-3, abs=1e-4)
        # the train accuracy is a share of this run's n_train training images (not a validation
        # or running number), and the very one the collapse detector judged
        n_train = m["n_train"]
        assert n_train > 0 and m["train_accuracy"] * n_train == pytest.approx(
            round(m["train_accuracy"] * n_train), abs=1e-3), (m["train_accuracy"], n_train)
        assert m["collapse"]["train_accuracy"] == m["train_accuracy"]
        fitted = m["train_accuracy"] > m["collapse"]["train_majority_rate"] + COLLAPSE_TRAIN_MARGIN
        assert fitted == (not any(r.startswith("train accuracy") for r in m["collapse"]["reasons"]))


def test_profiles_count_optimizer_steps_not_epochs():
    """The quick profile must make enough updates to fit: hundreds of head steps
    per run, where 5 epochs of 212 images at batch 32 are only 35 steps."""
    for name in ("smoke", "quick"):
        configs = experiment_configs("grid", profile=name, dataset="d", weights="none")
        assert all(c.recipe == "transfer" and c.head_steps >= 300 for c in configs)
    paper = experiment_configs("baseline", profile="paper", dataset="d", weights="none")
    assert all(c.recipe == "paper" and c.scaling == "rescale" and c.finetune == "all" for c in paper)


def _registered_run(run_id, protocol, split_seed, cv_fold="", **metrics):
    """A finished run in the registry with the given config and metrics (no training)."""

    folder = Workspace("synthetic-sel", "smoke").results / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(run_id.encode())
    config = {"model": "VGG16", "image_size": 64, "scaling": "rescale", "fit": "resize", "crop": False,
              "protocol": protocol, "split_seed": split_seed, **({"cv_fold": cv_fold} if cv_fold else {})}
    (folder / "config.json").write_text(json.dumps(config))
    full = {"precision": 0.5, "recall": 0.5, "f1": metrics.get("accuracy", 0.5), "ci95": None, "n_test": 10,
            **metrics}
    (folder / "metrics.json").write_text(json.dumps(full))
    append_record(Workspace("synthetic-sel", "smoke"), {"run_id": run_id, "config": config})


def test_export_ranks_by_validation_within_one_protocol_and_never_by_test(tmp_path, gate_without_data):
    from ecgpaper.runs.export import selection_key

    quiet = dict(log=lambda *_: None, dest=tmp_path)
    # the leaky paper split's best validation accuracy and the best test accuracy must not win
    _registered_run("paper-best-val", "paper", 0, val_accuracy=0.99, val_loss=0.01, accuracy=1.0)
    _registered_run("grouped-tie-worse-loss", "grouped", 0, val_accuracy=0.70, val_loss=0.40, accuracy=0.9)
    _registered_run("grouped-tie-better-loss", "grouped", 0, val_accuracy=0.70, val_loss=0.30, accuracy=0.1)
    _registered_run("grouped-lower-val", "grouped", 0, val_accuracy=0.60, val_loss=0.01, accuracy=0.99)
    _registered_run("grouped-other-split", "grouped", 1, val_accuracy=0.95, val_loss=0.01, accuracy=0.99)
    export_best(Workspace("synthetic-sel", "smoke"), **quiet)
    meta = read_export(tmp_path)
    assert meta["run_id"] == "grouped-tie-better-loss"
    assert meta["selected_by"] == "val_accuracy, ties by val_loss, among grouped runs of split seed 0"
    export_best(Workspace("synthetic-sel", "smoke"), split_seed=1, **quiet)
    assert read_export(tmp_path)["run_id"] == "grouped-other-split"
    # the leakage study's folds: one validation set per fold, so the first fold's runs compete
    _registered_run("grouped-fold0", "grouped", 100, cv_fold="cv2-fold0", val_accuracy=0.5, val_loss=0.5,
                    accuracy=0.5)
    _registered_run("grouped-fold1", "grouped", 100, cv_fold="cv2-fold1", val_accuracy=0.9, val_loss=0.1,
                    accuracy=0.5)
    export_best(Workspace("synthetic-sel", "smoke"), split_seed=100, **quiet)
    meta = read_export(tmp_path)
    assert meta["run_id"] == "grouped-fold0" and meta["selected_by"].endswith("split seed 100, cv2-fold0")
    export_best(Workspace("synthetic-sel", "smoke"), protocol="paper", **quiet)
    assert read_export(tmp_path)["run_id"] == "paper-best-val"
    assert selection_key({"val_accuracy": 0.7, "val_loss": 0.3}) == (0.7, -0.3)
    # a run without validation metrics is an error, not a fallback to test accuracy
    _registered_run("grouped-no-val", "grouped", 0, accuracy=1.0)
    with pytest.raises(UserError, match="grouped-no-val has no val_accuracy or val_loss"):
        export_best(Workspace("synthetic-sel", "smoke"), **quiet)
    with pytest.raises(UserError, match="no finished 'kaggle' run"):
        export_best(Workspace("synthetic-sel", "smoke"), protocol="kaggle", **quiet)

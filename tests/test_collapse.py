"""The collapse detector (issue 19, finding 4): a run whose predictions are constant
or uniform, or that never fitted its training set, is measured in metrics.json,
flagged in the notebooks, gets no verdict in REPORT.md and is never exported."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ecgpaper import outputs
from ecgpaper.errors import UserError
from ecgpaper.metrics import collapse_check, prediction_spread
from ecgpaper.paths import Workspace
from ecgpaper.runs.export import export_best, read_export
from ecgpaper.runs.store import Run, append_record
from ecgpaper.studies.verdicts import runs_differences, verdict_text

Y = np.repeat(np.arange(4), 10)  # balanced: majority rate 0.25


def _confident(pred, p=0.9):
    proba = np.full((len(pred), 4), (1 - p) / 3)
    proba[np.arange(len(pred)), pred] = p
    return proba


def test_constant_uniform_and_unfitted_runs_are_flagged_and_a_healthy_one_is_not():
    healthy = {"val": prediction_spread(_confident(Y), Y), "test": prediction_spread(_confident(Y), Y)}
    assert not collapse_check(0.97, Y, healthy)["collapsed"]

    constant = {"val": prediction_spread(_confident(np.zeros_like(Y)), Y)}
    result = collapse_check(0.97, Y, constant)
    assert result["collapsed"] and "one class takes 100%" in result["reasons"][0]
    assert result["val"]["top_class_share"] == 1.0 and result["val"]["predicted_class_entropy_bits"] == 0.0

    # the measured failure: softmax ~ 1/4 everywhere (val_loss = ln 4); argmax varies by noise
    rng = np.random.default_rng(0)
    uniform = np.full((len(Y), 4), 0.25) + rng.normal(0, 1e-3, (len(Y), 4))
    result = collapse_check(0.97, Y, {"test": prediction_spread(uniform, Y)})
    assert result["collapsed"] and "near-uniform" in result["reasons"][0]

    result = collapse_check(0.27, Y, healthy)  # train accuracy at the majority rate: never fitted
    assert result["collapsed"] and "train accuracy 0.270 at the majority rate 0.250" in result["reasons"]


def test_a_subset_whose_labels_are_mostly_one_class_may_be_answered_mostly_so():
    y = np.array([0] * 19 + [1])
    spread = prediction_spread(_confident(np.zeros_like(y)), y)
    assert not collapse_check(0.99, Y, {"test": spread})["collapsed"]


def _run(run_id, *, collapsed, protocol="grouped", val_accuracy=0.8, label_control="none"):
    ws = Workspace("synthetic-col", "smoke")
    folder = ws.results / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(run_id.encode())
    config = {"model": "VGG16", "image_size": 64, "scaling": "rescale", "fit": "resize", "crop": False,
              "protocol": protocol, "split_seed": 0, "label_control": label_control,
              "batch_size": 16, "learning_rate": 1e-4}
    metrics = {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "ci95": None, "n_test": 10,
               "val_accuracy": val_accuracy, "val_loss": 0.5,
               "collapse": {"collapsed": collapsed, "reasons": ["val: one class takes 100% of the predictions"]
                            if collapsed else []}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    append_record(ws, {"run_id": run_id, "config": config, "metrics": {"collapsed": collapsed}})
    return Run(run_id, config, metrics, folder)


def test_a_collapsed_run_is_never_exported_even_with_the_best_validation_accuracy(tmp_path, gate_without_data):
    _run("collapsed-best-val", collapsed=True, val_accuracy=0.99)
    _run("control", collapsed=False, val_accuracy=0.98, label_control="shuffled")
    _run("healthy", collapsed=False, val_accuracy=0.70)
    export_best(Workspace("synthetic-col", "smoke"), dest=tmp_path, log=lambda *_: None)
    assert read_export(tmp_path)["run_id"] == "healthy"


def test_when_every_run_collapsed_nothing_is_exported_and_the_error_says_why(tmp_path):
    _run("c1", collapsed=True)
    with pytest.raises(UserError, match="every candidate run collapsed.*c1"):
        export_best(Workspace("synthetic-col", "smoke"), dest=tmp_path, log=lambda *_: None)


def test_a_collapsed_run_gets_no_verdict_and_a_visible_warning():
    bad, good = _run("bad", collapsed=True), _run("good", collapsed=False)
    differences = runs_differences([good, bad], "synthetic-col")
    assert differences[0] == "collapsed"
    assert verdict_text({"outcome": "consistent"}, differences).startswith("n/a: collapsed")
    assert runs_differences([good], "synthetic-col")[:1] != ["collapsed"]
    warning = outputs.collapse_warning([good, bad])
    assert "WARNING: 1 of 2 runs COLLAPSED" in warning and "`bad`" in warning and "one class takes" in warning
    assert outputs.collapse_warning([good]) == ""
    # a shuffled-label control is meant to learn nothing: no alarm for it
    assert outputs.collapse_warning([_run("ctl", collapsed=True, label_control="shuffled")]) == ""

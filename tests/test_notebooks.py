"""The notebooks: committed clean, and a smoke run of all of them in order
leaves every figure, table and REPORT.md row of the paper behind.

``./run_tests.sh`` executes the notebooks once under nbval (smoke profile) with
ECGPAPER_ROOT pointing at a temporary folder and passes that folder here as
ECGPAPER_NOTEBOOK_RUN, so the notebooks run only once; run by hand without
it, this module executes them itself with papermill.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ecgpaper import catalog
from ecgpaper.paths import Workspace
from ecgpaper.report import paper_numbers

from conftest import smoke_notebook_run

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED_NOTEBOOKS = ["00_download", "01_preprocess", "02_baseline", "03_grid_search",
                      "04_multirun_stats", "05_report"]
#: what notebooks 00-05 write (ecgpaper.catalog), Fig. 4 aside: the browser test's screenshot
PAPER_NOTEBOOKS = ("01_preprocess", "02_baseline", "03_grid_search", "04_multirun_stats", "05_report")
FIGURES = [f for f in catalog.names("figure", *PAPER_NOTEBOOKS) if f != "fig04_webpage"]
TABLES = catalog.names("table", *PAPER_NOTEBOOKS)


def test_notebooks_are_committed_without_outputs_and_have_one_parameters_cell():
    found = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert found[:len(EXPECTED_NOTEBOOKS)] == EXPECTED_NOTEBOOKS
    for name in found:
        nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), name
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{name}: exactly one cell tagged 'parameters'"
        assert "ECGPAPER_PROFILE" in "".join(tagged[0]["source"])


@pytest.fixture(scope="module")
def smoke_run_root(tmp_path_factory):
    return smoke_notebook_run(tmp_path_factory)


def test_a_smoke_run_of_all_notebooks_leaves_every_figure_table_and_report_row(smoke_run_root):
    figs = smoke_run_root / "figures/synthetic-smoke/smoke"
    results = smoke_run_root / "results/synthetic-smoke/smoke"
    for name in FIGURES:
        for ext in ("png", "pdf"):
            f = figs / f"{name}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
    for name in TABLES:
        for ext in ("csv", "md"):
            f = results / f"{name}.{ext}"
            assert f.exists() and f.stat().st_size > 0, f
        assert "synthetic-smoke" in (results / f"{name}.md").read_text()
    # and nothing unregistered: every figure and table written (notebook 06's too, when the
    # run has it) is in ecgpaper.catalog
    registered = {o.name for o in catalog.OUTPUTS}
    written = {p.stem for p in figs.glob("*.png")} | {p.stem for p in results.glob("table*.csv")}
    assert written <= registered, written - registered
    report = (results / "REPORT.md").read_text()
    for label in paper_numbers():
        assert f"| {label} |" in report, label
    assert "SYNTHETIC" in report
    # how the models were trained: every deviation from the paper, steps beside the paper's
    assert "## How the models were trained" in report and "transfer recipe" in report
    assert "| baseline | VGG16 | 16 | 0.0001 |" in report and "| 3460 |" in report
    for name in FIGURES:
        assert f"{name}.png" in report
    # the numbers in REPORT.md are the runs' own, and off the paper's protocol there is no verdict
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in report.splitlines()
             if line.startswith("| ")]
    rows = {}
    for c in cells:  # the main table comes first (the Tables section repeats some labels)
        rows.setdefault(c[0], c)

    def metrics(experiment):
        ids = json.loads((results / "experiments" / f"{experiment}.json").read_text())["run_ids"]
        return [json.loads((results / "runs" / i / "metrics.json").read_text()) for i in ids]

    labels = {"VGG16": "baseline VGG16 = Table 1 batch 16 lr 0.0001", "ResNet50": "baseline ResNet50"}
    for m, model in zip(metrics("baseline"), ("VGG16", "ResNet50")):
        row = rows[labels[model]]
        assert row[1:3] == ["1", f"{m['accuracy']:.4f}"] and row[4] == {"VGG16": "0.9200", "ResNet50": "0.8100"}[model]
        assert row[5].startswith(f"{m['accuracy'] - float(row[4]):+.4f} (") and row[3].count("-") == 1
        assert row[8].startswith("perfect replication: consistent ")  # its operating characteristics
    five = metrics("multirun")
    row = rows["5.4 mean of 5 runs"]
    assert row[1] == "5" and float(row[2]) == pytest.approx(sum(m["accuracy"] for m in five) / 5, abs=5e-5)
    for label in paper_numbers():
        assert rows[label][-1].startswith("n/a: "), rows[label]
    assert "reproduced" not in report
    assert all("SYNTHETIC twin, not the Kaggle images; profile smoke, not paper" in rows[label][-1]
               for label in paper_numbers() if not label.startswith("3.5"))


NARRATED = ["02_baseline", "03_grid_search", "04_multirun_stats", "05_report", "06_beyond_the_paper"]


def test_notebooks_02_to_06_end_with_an_interpretation_computed_from_the_results():
    for name in NARRATED:
        nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
        heading, last = nb["cells"][-2], nb["cells"][-1]
        assert heading["cell_type"] == "markdown" and "".join(heading["source"]).startswith("## What"), name
        source = "".join(last["source"])
        assert last["cell_type"] == "code" and "display(Markdown(narrative." in source, name
        # section numbers (5.2) may appear, results (0.92, 81 %) may not
        assert not re.search(r"\d\.\d\d|\d ?%", source), f"{name}: the interpretation must not type numbers in"
        assert nb["metadata"]["kernelspec"]["name"] == "ecgpaper", name


def test_the_interpretations_quote_this_runs_numbers(smoke_run_root, monkeypatch):
    from ecgpaper import narrative
    from ecgpaper.runs.store import experiment_runs

    from conftest import point_paths

    point_paths(monkeypatch, smoke_run_root)
    ws = Workspace("synthetic-smoke", "smoke")
    baseline = experiment_runs("baseline", ws)
    text = narrative.baseline(baseline, ws)
    assert text.startswith("**Data: the SYNTHETIC twin**")
    for run in baseline:
        m = run.metrics
        assert f"{run.config['model']}: test accuracy {m['accuracy']:.2f} (95 % CI {m['ci95']['accuracy'][0]:.2f}" in text
    gap = baseline[0].metrics["accuracy"] - baseline[1].metrics["accuracy"]
    assert f"by {abs(gap):.2f} (paired 95 % CI" in text and "the paper reports a gap of 0.11" in text
    multirun = experiment_runs("multirun", ws)
    mean = float(np.mean([r.metrics["accuracy"] for r in multirun]))
    assert f"accuracy: ours {mean:.4f} +- " in narrative.multirun(multirun, ws)
    report = (smoke_run_root / "results/synthetic-smoke/smoke/REPORT.md").read_text()
    rows = report.split("## Every number of the paper", 1)[1].split("\n## ", 1)[0].count("\n| ") - 1
    assert f"REPORT.md sets {rows} results of the paper beside ours, one verdict each: {rows} n/a." in (
        narrative.report(ws))  # from table_paper_verdicts: as many rows as REPORT.md's table


def test_reference_run_regenerates_its_folder_from_a_run(smoke_run_root, tmp_path):
    from PIL import Image

    out = tmp_path / "reference-run"
    env = {**os.environ, "ECGPAPER_ROOT": str(smoke_run_root)}
    # the browser test's screenshot of the page (Fig. 4), as ./run_tests.sh leaves it
    shot = smoke_run_root / "results/webapp/screenshot.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1280, 900), "white").save(shot)
    try:
        res = subprocess.run([sys.executable, "-m", "ecgpaper", "reference-run", "--profile", "smoke",
                              "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    finally:
        shot.unlink()
        (smoke_run_root / "figures/synthetic-smoke/smoke/fig04_webpage.png").unlink(missing_ok=True)
    assert res.returncode == 0, res.stderr
    stamp = json.loads((out / "STAMP.json").read_text())
    assert stamp["profile"] == "smoke" and stamp["dataset"] == "synthetic-smoke" and stamp["synthetic"]
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", stamp["commit"])
    assert "CPU cores" in stamp["machine"] and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", stamp["date"])
    assert set(FIGURES) <= {Path(f).stem for f in stamp["figures"]}
    for name in stamp["figures"]:
        with Image.open(out / "figures" / name) as img:
            assert img.width <= 1400
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# Reproduction report") and "**Reference run.** Commit" in report
    assert "SYNTHETIC" in report and stamp["command"] in report
    assert "fig04_webpage.png" in stamp["figures"] and "](figures/fig04_webpage.png)" in report
    assert "Fig. 4: the web page" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {Path(link).name for link in links} == set(stamp["figures"])
    assert all((out / link).is_file() for link in links)
    # a second run replaces the folder (nothing stale survives: Fig. 4's screenshot is gone now)
    (out / "figures" / "stale.png").write_bytes(b"x")
    assert subprocess.run([sys.executable, "-m", "ecgpaper", "reference-run", "--profile", "smoke",
                           "--out", str(out)], env=env, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        f for f in stamp["figures"] if f != "fig04_webpage.png")


def test_one_number_has_one_interval_in_metrics_json_the_tables_and_report(smoke_run_root, monkeypatch):
    """A run's interval is its metrics.json's (duplicate groups resampled) wherever
    REPORT.md and its tables print it: the verdict table's single-run rows, the
    baseline sentences and the lightweight study's lines."""
    import pandas as pd

    from ecgpaper.outputs import format_ci
    from ecgpaper.runs.store import experiment_runs
    from ecgpaper.studies.significance import BASELINE_CELL, cell_label

    from conftest import point_paths

    point_paths(monkeypatch, smoke_run_root)
    ws = Workspace("synthetic-smoke", "smoke")
    baseline = {r.config["model"]: r for r in experiment_runs("baseline", ws)}
    grid = {(r.config["batch_size"], r.config["learning_rate"]): r for r in experiment_runs("grid", ws)}
    for run in [*baseline.values(), *grid.values()]:
        assert run.metrics["ci95_resamples"] == "duplicate groups", run.run_id
    stats = pd.read_csv(ws.table("table_statistics"))
    by_label = {cell_label(*cell): run for cell, run in grid.items()} | {"baseline ResNet50": baseline["ResNet50"]}
    checked = 0
    for row in stats[stats["runs"] == 1].to_dict("records"):
        label = row["number"]
        if label not in by_label:
            continue
        run = by_label[label]
        assert [row["ci95_groups_low"], row["ci95_groups_high"]] == pytest.approx(
            run.metrics["ci95"]["accuracy"], abs=1e-12), label
        for metric in ("precision", "recall", "f1"):
            if label != "baseline ResNet50":
                assert [row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]] == pytest.approx(
                    run.metrics["ci95"][metric], abs=1e-12), (label, metric)
        checked += 1
    # the baseline's VGG16 is the grid's batch 16, lr 1e-4 cell (one run id): one row
    assert baseline["VGG16"].run_id == grid[BASELINE_CELL].run_id
    assert checked == 1 + len(grid)
    report = (smoke_run_root / "results/synthetic-smoke/smoke/REPORT.md").read_text()
    labels = {"VGG16": "baseline VGG16 = Table 1 batch 16 lr 0.0001", "ResNet50": "baseline ResNet50"}
    for model, run in baseline.items():
        ci = format_ci(run.metrics["ci95"]["accuracy"])
        lines = [line for line in report.splitlines()
                 if line.startswith((f"| {labels[model]} |", f"- {model}: accuracy"))]
        assert lines, model
        for line in lines:
            assert ci in line, (model, ci, line)


def test_per_class_and_calibration_outputs_are_the_grouped_runs_own(smoke_run_root, monkeypatch):
    """Issue 21, item 4: notebook 06 writes table_per_class, table_calibration and
    fig18_reliability from the leakage study's grouped runs' metrics.json, REPORT.md
    says what they show, and the exported model carries its run's temperature."""
    import pandas as pd

    from ecgpaper.runs.store import load_run

    from conftest import point_paths

    point_paths(monkeypatch, smoke_run_root)
    ws = Workspace("synthetic-smoke", "smoke")
    for ext in ("png", "pdf"):
        assert (ws.figures / f"fig18_reliability.{ext}").stat().st_size > 1000
    per_class = pd.read_csv(ws.table("table_per_class"))
    calib = pd.read_csv(ws.table("table_calibration"))
    assert set(per_class["protocol"]) == set(calib["protocol"]) == {"grouped"}
    assert set(calib["model"]) == {"VGG16", "ResNet50"} and len(per_class) == 4 * len(calib)
    for row in calib.to_dict("records"):
        cal = load_run(ws, row["run_id"]).metrics["calibration"]
        assert row["temperature"] == pytest.approx(cal["temperature"])
        assert row["test_ece_after"] == pytest.approx(cal["after"]["ece"])
    for row in per_class.to_dict("records"):
        c = load_run(ws, row["run_id"]).metrics["clinical"]["per_class"][row["class"]]
        assert row["positive_groups"] == c["positive_groups"]
        assert [row["sensitivity_ci95_low"], row["sensitivity_ci95_high"]] == pytest.approx(c["sensitivity_ci95"])
    report = (ws.results / "REPORT.md").read_text()
    assert "### Per class and calibration" in report and "fig18_reliability.png" in report
    for row in calib.to_dict("records"):
        assert f"{row['model']} (`grouped`): temperature {row['temperature']:.2f} fitted on" in report
    meta = json.loads((smoke_run_root / "models/ecg_classifier.json").read_text())
    served = load_run(ws, meta["run_id"]).metrics
    assert meta["temperature"] == served["calibration"]["temperature"]

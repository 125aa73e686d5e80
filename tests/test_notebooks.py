"""The notebooks: committed clean, and a smoke run of all of them in order
leaves every figure, table and REPORT.md row of the paper behind.

``./run_tests.sh`` executes the notebooks once under nbval (smoke profile) with
ECGPAPER_ROOT pointing at a temporary folder and passes that folder here as
ECGPAPER_NOTEBOOK_RUN, so the notebooks run only once; run by hand without
it, this module executes them itself with papermill.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import smoke_notebook_run
from ecgpaper.report import paper_numbers

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED_NOTEBOOKS = ["00_download", "01_preprocess", "02_baseline", "03_grid_search",
                      "04_multirun_stats", "05_report"]
FIGURES = ["fig01_samples", "fig06_epoch_times_vgg16", "fig07_epoch_times_resnet50",
           "fig08_confusion_vgg16", "fig09_confusion_resnet50", "fig10_confusion_grid",
           "fig11_curves_resnet50", "fig12_curves_vgg16", "fig13_multirun_bars"]
TABLES = ["table_baseline", "table1_grid", "table_multirun", "table_environment", "table_steps"]


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
    report = (results / "REPORT.md").read_text()
    for label in paper_numbers():
        assert f"| {label} |" in report, label
    assert "SYNTHETIC" in report
    # how the models were trained: every deviation from the paper, steps beside the paper's
    assert "## How the models were trained" in report and "transfer recipe" in report
    assert "| baseline | VGG16 | 16 | 0.0001 |" in report and "| 3460 |" in report
    for name in FIGURES:
        assert f"{name}.png" in report

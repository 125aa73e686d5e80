"""Every figure and table the pipeline writes: one registry of stable names.

showyourwork's rule (every figure of a paper comes from one script with a known
output path), kept as data: each output's file name (``figures/<dataset>/<profile>/
<name>.png|.pdf`` or ``results/<dataset>/<profile>/<name>.csv|.md``), the notebook
that writes it, the section or figure of the paper it reproduces, and, for a
figure, its caption in REPORT.md. REPORT.md (``report.write_report``), the README
link check and the tests read this list; a function that saves an output uses its
name from here. A table's own caption (``outputs.save_table``) says more than its
title here, since it carries the run's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    name: str
    kind: str  # "figure" or "table"
    notebook: str  # the notebook (notebooks/<notebook>.ipynb) that writes it
    section: str  # of the paper
    caption: str


def _fig(name, notebook, section, caption) -> Output:
    return Output(name, "figure", notebook, section, caption)


def _table(name, notebook, section, caption) -> Output:
    return Output(name, "table", notebook, section, caption)


_BEYOND = "Beyond the paper, "

OUTPUTS: tuple[Output, ...] = (
    # 01_preprocess: the data (3.1) and the duplicate audit
    _fig("fig01_samples", "01_preprocess", "Fig. 1", "Fig. 1: sample ECG pages per class"),
    _fig("fig_audit_phash_distances", "01_preprocess", "3.1",
         "Duplicate audit: phash distances of distinct files and the near-duplicate threshold, largest "
         "group and groups crossing labels"),
    _table("table_audit_phash_distances", "01_preprocess", "3.1",
           "Duplicate audit: pairs of distinct files by phash distance"),
    _table("table_audit_groups", "01_preprocess", "3.1",
           "Duplicate audit: the largest group of copies and the groups crossing labels"),
    # 02_baseline: section 4, Fig. 2, 3, 8, 9
    _table("table_baseline", "02_baseline", "4", "Baseline: batch 16, lr 1e-4"),
    _table("table_steps", "02_baseline", "3.1, 4", "Optimizer steps per run beside the paper's"),
    _table("table_architecture_vgg16", "02_baseline", "Fig. 2", "VGG16 as trained, stage by stage"),
    _table("table_architecture_resnet50", "02_baseline", "Fig. 3", "ResNet50 as trained, stage by stage"),
    _fig("fig08_confusion_vgg16", "02_baseline", "Fig. 8", "Fig. 8: confusion matrix of VGG16 (baseline)"),
    _fig("fig09_confusion_resnet50", "02_baseline", "Fig. 9", "Fig. 9: confusion matrix of ResNet50 (baseline)"),
    # 03_grid_search: Table 1, Fig. 10
    _table("table1_grid", "03_grid_search", "Table 1", "Table 1: VGG16 under batch sizes and learning rates"),
    _fig("fig10_confusion_grid", "03_grid_search", "Fig. 10", "Fig. 10: confusion matrices of the VGG16 grid search"),
    # 04_multirun_stats: 3.5, 5.1, 5.4, Fig. 5-7, 11-13
    _fig("fig06_epoch_times_vgg16", "04_multirun_stats", "Fig. 6", "Fig. 6: VGG16 training time per epoch"),
    _fig("fig07_epoch_times_resnet50", "04_multirun_stats", "Fig. 7", "Fig. 7: ResNet50 training time per epoch"),
    _fig("fig11_curves_resnet50", "04_multirun_stats", "Fig. 11", "Fig. 11: accuracy and loss curves of ResNet50"),
    _fig("fig12_curves_vgg16", "04_multirun_stats", "Fig. 12", "Fig. 12: accuracy and loss curves of VGG16"),
    _fig("fig13_multirun_bars", "04_multirun_stats", "Fig. 13", "Fig. 13: mean +- std over independent VGG16 runs"),
    _table("table_multirun", "04_multirun_stats", "5.4", "VGG16, batch 32, lr 1e-4, independent runs"),
    _table("table_environment", "04_multirun_stats", "5.1", "The machine, libraries and device of the runs"),
    # 05_report
    _table("table_paper_verdicts", "05_report", "all", "One verdict per result of the paper (REPORT.md)"),
    # the page of the web service (section 3.4), screenshot by tests/test_webapp_browser.py, copied by 05
    _fig("fig04_webpage", "05_report", "Fig. 4",
         "Fig. 4: the web page (section 3.4) after classifying an ECG, as the browser test saw it (its own "
         "small model, trained on the synthetic twin, not this run's)"),
    # 06_beyond_the_paper: 5.2, 5.5
    _fig("fig14_leakage", "06_beyond_the_paper", "5.2",
         _BEYOND + "5.2: accuracy and macro F1 per split protocol (leakage study)"),
    _table("table_leakage", "06_beyond_the_paper", "5.2", "Leakage study: grouped cross-validation per protocol"),
    _table("table_leakage_gap", "06_beyond_the_paper", "5.2", "Leakage gap, paired per fold"),
    _table("table_leakage_copies", "06_beyond_the_paper", "5.2", "CNN accuracy with vs without a copy in train"),
    _fig("fig15_gradcam_grid", "06_beyond_the_paper", "5.2",
         _BEYOND + "5.2: Grad-CAM overlays, correct and wrong test images per class"),
    _table("table_gradcam_header_fraction", "06_beyond_the_paper", "5.2", "Grad-CAM heat per page region"),
    _fig("fig16_robustness", "06_beyond_the_paper", "5.2",
         _BEYOND + "5.2: accuracy vs corruption severity per model"),
    _table("table_robustness", "06_beyond_the_paper", "5.2", "Accuracy per corruption and severity"),
    _fig("fig17_accuracy_vs_latency", "06_beyond_the_paper", "5.5",
         _BEYOND + "5.5: accuracy vs CPU latency per image"),
    _table("table_lightweight", "06_beyond_the_paper", "5.5", "Lightweight models and ensemble"),
    _table("table_statistics", "06_beyond_the_paper", "5.2", "Honest statistics"),
    _table("table_input_ablation", "06_beyond_the_paper", "3.1.1, 3.5", "Input scaling x BatchNorm mode"),
    _fig("fig18_reliability", "06_beyond_the_paper", "5.2",
         "Beyond the paper: reliability diagram of the `grouped` runs, before and after temperature scaling "
         "fitted on validation"),
    _table("table_per_class", "06_beyond_the_paper", "5.2", "Per class, one against the rest"),
    _table("table_calibration", "06_beyond_the_paper", "5.2", "Calibration before and after temperature scaling"),
)

_BY_NAME = {o.name: o for o in OUTPUTS}
assert len(_BY_NAME) == len(OUTPUTS), "an output name is registered twice"


def output(name: str) -> Output:
    """The registered output ``name``; a KeyError that says where to register a new one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a registered output: add it to ecgpaper/catalog.py") from None


def names(kind: str, *notebooks: str) -> list[str]:
    """Names of the outputs of ``kind`` ("figure" or "table"), of these notebooks only if given."""
    return [o.name for o in OUTPUTS if o.kind == kind and (not notebooks or o.notebook in notebooks)]


def figure_captions() -> dict[str, str]:
    """REPORT.md's caption of every figure, by name."""
    return {o.name: o.caption for o in OUTPUTS if o.kind == "figure"}

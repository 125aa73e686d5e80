"""The notebooks' interpretation cells: what the numbers of this run say, in sentences.

Every number in a sentence is read from the finished runs
(``store.experiment_runs``), the tables written with REPORT.md or the paper's constants
(``config.PAPER_RESULTS``); the Markdown itself is never read back;
none is typed in. Every paragraph starts by saying whether the data are the
SYNTHETIC twin or the real archive, so a twin result never reads as the paper's.
"""
from __future__ import annotations

import pandas as pd

from ecgpaper.config import PAPER_IMAGE_SIZE, PAPER_RESULTS, PAPER_TRAIN_IMAGES, get_profile
from ecgpaper.errors import UserError
from ecgpaper.metrics import mean_std
from ecgpaper.paths import Workspace
from ecgpaper.runs.store import Run
from ecgpaper.studies.significance import VERDICTS_TABLE, paired_row
from ecgpaper.studies.verdicts import OUTCOMES, protocol_differences, runs_differences


def data_sentence(ws: Workspace) -> str:
    """Twin or real data, and what that allows one to conclude."""
    if ws.synthetic:
        return (f"**Data: the SYNTHETIC twin** (`{ws.dataset}`, profile `{ws.profile}`). These numbers test "
                "the pipeline and the method; they neither reproduce nor refute the paper.")
    size = get_profile(ws.profile).image_size
    scale = ("the paper's settings" if ws.profile == "paper" else
             f"the `{ws.profile}` profile ({size} px instead of {PAPER_IMAGE_SIZE}, fewer optimizer steps), "
             "so part of any gap to the paper can come from the profile")
    return f"**Data: the real ECG images** (`{ws.dataset}`) at {scale}."


def _ci(ci) -> str:
    return f"95 % CI {ci[0]:.2f}-{ci[1]:.2f}"


def _inside(value: float, ci) -> bool:
    return ci is not None and ci[0] <= value <= ci[1]


def _beside_paper(paper: float, run: Run, dataset: str) -> str:
    """The paper's number beside ours: compared only when the run follows the paper's
    protocol (``verdicts.protocol_differences``; REPORT.md gives the verdict)."""
    differs = protocol_differences(run.config, dataset)
    if differs:
        return f"the paper reports {paper:.2f}, not comparable here ({'; '.join(differs)})."
    where = "inside" if _inside(paper, run.metrics["ci95"]["accuracy"]) else "outside"
    return f"the paper's {paper:.2f} is {where} this interval (REPORT.md gives the verdict)."


def _paragraph(ws: Workspace, sentences: list[str]) -> str:
    return "\n".join([data_sentence(ws), ""] + [f"- {s}" for s in sentences])


def baseline(runs: list[Run], ws: Workspace) -> str:
    """Notebook 02 (section 4, Fig. 8-9): VGG16 vs ResNet50, with the paired test."""
    by = {r.config["model"]: r for r in runs}
    out = []
    for model, run in by.items():
        m, paper = run.metrics, PAPER_RESULTS["baseline"][model]["accuracy"]
        out.append(f"{model}: test accuracy {m['accuracy']:.2f} ({_ci(m['ci95']['accuracy'])}, "
                   f"{m['n_test']} test images); {_beside_paper(paper, run, ws.dataset)} "
                   f"Training accuracy {m.get('train_accuracy', float('nan')):.2f}: "
                   + ("the model fits its training set far better than the test set (overfitting)."
                      if m.get("train_accuracy", 0) - m["accuracy"] > 0.1 else
                      "training and test accuracy are close."))
    if {"VGG16", "ResNet50"} <= set(by):
        row = paired_row("baseline", ws, by["VGG16"], by["ResNet50"])
        diff, lo, hi = row["ours"], row["ci95_groups_low"], row["ci95_groups_high"]
        paper_gap = PAPER_RESULTS["baseline"]["VGG16"]["accuracy"] - PAPER_RESULTS["baseline"]["ResNet50"]["accuracy"]
        verb = "beats" if diff > 0 else ("trails" if diff < 0 else "ties with")
        settled = ("excludes 0: the difference is real on this test set" if lo > 0 or hi < 0 else
                   "includes 0: this test set cannot tell the two models apart")
        out.append(f"VGG16 {verb} ResNet50 by {abs(diff):.2f} (paired 95 % CI {lo:+.2f} to {hi:+.2f} over "
                   f"duplicate groups; McNemar over groups p = {row['p_value_groups']:.2g}); the paper reports a gap of "
                   f"{paper_gap:.2f}. The interval {settled}, and it "
                   f"{'holds' if lo <= paper_gap <= hi else 'does not hold'} the paper's gap.")
    return _paragraph(ws, out)


def grid(runs: list[Run], ws: Workspace) -> str:
    """Notebook 03 (section 4, Table 1): the grid, the best cell chosen by validation."""
    cells = [(r.config["batch_size"], r.config["learning_rate"], r.metrics) for r in runs]
    best = max(cells, key=lambda c: (c[2]["val_accuracy"], -c[2]["val_loss"]))  # never the test set
    paper_best = max(PAPER_RESULTS["grid"].items(), key=lambda kv: kv[1]["accuracy"])
    paper_best_cells = [k for k, v in PAPER_RESULTS["grid"].items() if v["accuracy"] == paper_best[1]["accuracy"]]
    accs = [c[2]["accuracy"] for c in cells]
    lows, highs = [c[2]["ci95"]["accuracy"][0] for c in cells], [c[2]["ci95"]["accuracy"][1] for c in cells]
    inside = sum(_inside(PAPER_RESULTS["grid"][(b, lr)]["accuracy"], m["ci95"]["accuracy"]) for b, lr, m in cells)
    return _paragraph(ws, [
        f"Chosen by validation accuracy, ties by validation loss (choosing by test accuracy would leak the "
        f"test set), the best cell "
        f"is batch {best[0]}, lr {best[1]:g}: test accuracy {best[2]['accuracy']:.2f} "
        f"({_ci(best[2]['ci95']['accuracy'])}). The paper's best: "
        + " and ".join(f"batch {b} with lr {lr:g}" for b, lr in paper_best_cells)
        + f" ({paper_best[1]['accuracy']:.2f}).",
        f"Our {len(cells)} cells range from {min(accs):.2f} to {max(accs):.2f}; "
        + ("all their 95 % intervals overlap, so this test set cannot rank the settings."
           if max(lows) <= min(highs) else
           "not all their intervals overlap, so some settings are really better than others here."),
        (f"The paper's accuracy lies inside our interval for {inside} of {len(cells)} cells."
         if not _differs(runs, ws.dataset) else
         f"The paper's Table 1 is not comparable here ({'; '.join(_differs(runs, ws.dataset))})."),
    ])


def _differs(runs: list[Run], dataset: str) -> list[str]:
    return runs_differences(runs, dataset)


def curves(runs: list[Run], ws: Workspace) -> str:
    """Notebook 04, part 1 (section 3.5, Fig. 6-7, 11-12): fit and time per epoch."""
    lo, hi = PAPER_RESULTS["epoch_seconds_t4"]
    paper_ms = (1000 * lo / PAPER_TRAIN_IMAGES, 1000 * hi / PAPER_TRAIN_IMAGES)
    out = []
    for run in sorted(runs, key=lambda r: r.config["model"]):
        m, c, env = run.metrics, run.config, run.environment
        device = ", ".join(g["name"] for g in env.get("gpus", [])) or f"{env.get('cpu_count', '?')} CPU cores"
        sel = m.get("selected_checkpoint") or {}
        text = (f"{c['model']}: training accuracy {m.get('train_accuracy', float('nan')):.2f}, validation "
                f"{m.get('val_accuracy', float('nan')):.2f}, test {m['accuracy']:.2f} at the selected checkpoint "
                f"({sel.get('phase', '?')} phase, epoch {sel.get('epoch', '?')}).")
        if m.get("epoch_seconds_mean"):
            ms = 1000 * m["epoch_seconds_mean"] / m["n_train"]
            first = m.get("first_epoch_seconds")
            text += (f" An epoch took {m['epoch_seconds_mean']:.1f} s on {device} for {m['n_train']} images of "
                     f"{c['image_size']} px ({ms:.0f} ms per image, steady state"
                     + (f"; epoch 1, which also built the graphs, took {first:.1f} s" if first and m.get("epochs_run", 1) > 1
                        else "") + f"); the paper: {lo}-{hi} s on a T4 for "
                     f"~{PAPER_TRAIN_IMAGES:,} images of {PAPER_IMAGE_SIZE} px ({paper_ms[0]:.0f}-{paper_ms[1]:.0f} "
                     "ms per image).")
        out.append(text)
    return _paragraph(ws, out)


def multirun(runs: list[Run], ws: Workspace) -> str:
    """Notebook 04, part 2 (section 5.4, Fig. 13): five seeds, mean and spread."""
    stats = mean_std([r.metrics for r in runs])
    out = []
    for k, (pm, ps) in PAPER_RESULTS["multirun"].items():
        mean, std = stats[k]
        std = std or 0.0
        out.append(f"{k}: ours {mean:.4f} +- {std:.4f} over {len(runs)} runs, the paper's {pm:.4f} +- {ps:.4f}; "
                   f"our spread over seeds is {std / ps:.1f} x the paper's (REPORT.md judges the means, "
                   "with the test set's sampling error as well as the seeds').")
    out.append("The spread over seeds is the run-to-run noise of one setting: a difference between two "
               "settings smaller than it (about two standard deviations) is not a finding.")
    return _paragraph(ws, out)


def report(ws: Workspace) -> str:
    """Notebook 05: how REPORT.md's verdicts (``ecgpaper.studies.verdicts``) came out,
    read from the verdict table ``report.write_report`` writes beside it."""
    table = ws.results / f"{VERDICTS_TABLE}.csv"
    if not table.is_file():
        raise UserError(f"{table} is missing: write REPORT.md first (ecgpaper.report.write_report)")
    verdicts = pd.read_csv(table)["verdict"].astype(str).tolist()
    counts = {k: sum(v.startswith(k) for v in verdicts) for k in ("n/a",) + OUTCOMES}
    out = [f"REPORT.md sets {len(verdicts)} results of the paper beside ours, one verdict each: "
           + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + "."]
    if counts["n/a"]:
        out.append("'n/a' rows follow another protocol than the paper's (each says what differs: data, "
                   "profile, weights, split, image size); their numbers and intervals are shown, but they "
                   "neither reproduce nor refute the paper.")
    if ws.synthetic:
        out.append("On the synthetic twin every verdict is n/a: agreement or disagreement with the paper "
                   "means nothing until the pipeline runs on the real images "
                   "(`./run_all.sh --profile paper --download` on a GPU).")
    return _paragraph(ws, out)


def beyond(sections: dict[str, list[str]], ws: Workspace) -> str:
    """Notebook 06: the first conclusion of each study, as computed in its section."""
    out = [f"{name}: {sentences[0]}" for name, sentences in sections.items() if sentences]
    return _paragraph(ws, out)

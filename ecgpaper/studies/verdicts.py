"""One rule for "does our number agree with the paper's?" (REPORT.md, table_statistics).

A verdict is only issued for a run that follows the paper's protocol
(:func:`protocol_differences`: the Kaggle images, the ``paper`` profile, ImageNet
weights, the ``paper`` split, 224 px, sections 3.1-3.5). Any other run gets
``n/a: <what differs>``: its numbers, intervals and differences are still shown,
but they neither reproduce nor refute the paper.

The rule (:func:`compare_with_paper`): a 95 % interval of the difference
``ours - paper`` that carries three sources of error,

- ours: the bootstrap over duplicate groups of our test set (copies of one ECG
  are one piece of evidence), and over our runs when a number is a mean;
- the paper's test set: the paper does not report it, so it is taken to be the
  same as ours, scaled to the paper's test size (``PAPER_TEST_IMAGES``): with
  the same protocol on the same archive that is the best estimate there is;
- the seed: the standard deviations of section 5.4 (the only spread the paper
  reports), divided by sqrt(5) for the five-run means, used as the spread of one
  run for its single numbers (section 4, Table 1); counted twice, since the
  paper's runs and ours each drew their seeds (our bootstrap holds our runs fixed).

Then, with the equivalence margin ``EQUIVALENCE_MARGIN`` (config.py):
interval inside [-margin, +margin]: "consistent"; otherwise an interval wholly
below 0: "lower", wholly above 0: "higher"; otherwise (it holds 0 but is wider
than the margin): "inconclusive", the data cannot tell.
"""
from __future__ import annotations

import numpy as np

from ecgpaper.config import EQUIVALENCE_MARGIN, PAPER_IMAGE_SIZE, PAPER_RESULTS, PAPER_TEST_IMAGES
from ecgpaper.paths import is_synthetic_dataset
from ecgpaper.runs.store import Run

OUTCOMES = ("consistent", "lower", "higher", "inconclusive")


def protocol_differences(config: dict, dataset: str) -> list[str]:
    """How a run departs from the paper's protocol in what a verdict needs
    (empty list: a verdict may be issued). ``config``: the run's config.json."""
    out = []
    if is_synthetic_dataset(dataset):
        out.append("SYNTHETIC twin, not the Kaggle images")
    if config.get("profile") != "paper":
        out.append(f"profile {config.get('profile')}, not paper")
    listed = (config.get("weights_file") or {}).get("md5_source", "keras")
    if config.get("weights") == "imagenet" and listed != "keras":
        out.append(f"weights checked against {listed}, not Keras's ImageNet files")
    if config.get("weights") != "imagenet":
        w = config.get("weights")
        out.append(f"{'random initialisation' if w == 'none' else f'weights {w}'}, not ImageNet")
    if config.get("protocol") != "paper":
        out.append(f"split {config.get('protocol')}, not the paper's random split")
    if int(config.get("image_size", 0)) != PAPER_IMAGE_SIZE:
        out.append(f"{config.get('image_size')} px, not {PAPER_IMAGE_SIZE}")
    return out


def runs_differences(runs: list[Run], dataset: str) -> list[str]:
    """The union of :func:`protocol_differences` over runs, in first-seen order,
    led by "collapsed" when the collapse detector flagged any of them
    (metrics.collapse_check): a constant or uniform answer says nothing about the paper."""
    seen: list[str] = ["collapsed"] if any(r.collapsed for r in runs) else []
    for r in runs:
        for d in protocol_differences(r.config, dataset):
            if d not in seen:
                seen.append(d)
    return seen


def paper_seed_spread(metric: str, paper_runs: int) -> float:
    """The paper's seed-to-seed standard error of a number: section 5.4's std of
    ``metric`` divided by sqrt(``paper_runs``) (1 for a single run)."""
    return PAPER_RESULTS["multirun"][metric][1] / np.sqrt(paper_runs)


def compare_with_paper(boot, paper: float, *, ours: float | None = None, n_test: int,
                       seed_spread: float, n_groups: int | None = None,
                       margin: float = EQUIVALENCE_MARGIN, paper_n_test: int = PAPER_TEST_IMAGES,
                       n_draws: int = 20000, seed: int = 0) -> dict:
    """The difference ours - paper with its 95 % interval and the outcome.

    ``boot``: bootstrap draws of our number (duplicate groups resampled);
    ``ours``: our number (default: the draws' mean); ``n_test``: our test
    images; ``seed_spread``: the paper's seed-to-seed standard error of its
    number (:func:`paper_seed_spread`); ``n_groups``: distinct ECGs in our test
    set. A bootstrap cannot vary a perfect (or null) score, so our standard error
    is at least the binomial one of ``n_groups`` ECGs with one success and one
    failure added (Laplace), lest 14 of 14 right read as certainty. Returns
    ``difference``, ``ci95`` [lo, hi], ``outcome`` (one of :data:`OUTCOMES`),
    ``margin`` and the standard errors ``se_ours`` and ``se_paper``.
    """
    boot = np.asarray(boot, float)
    ours = float(np.mean(boot)) if ours is None else float(ours)
    se_boot = float(np.std(boot, ddof=1))
    se_ours = se_boot
    if n_groups:
        p = (ours * n_groups + 1) / (n_groups + 2)
        se_ours = max(se_boot, float(np.sqrt(p * (1 - p) / n_groups)))
    se_paper_test = se_ours * np.sqrt(n_test / paper_n_test)
    se_paper = float(np.sqrt(se_paper_test ** 2 + seed_spread ** 2))
    se_other = float(np.sqrt(se_paper ** 2 + seed_spread ** 2))  # + our own seed draw
    rng = np.random.default_rng(seed)
    # our error: the bootstrap draws (kept skewed near 1.0); the paper's: normal
    ours_draws = (rng.choice(boot - boot.mean(), n_draws) + ours
                  + rng.normal(0.0, np.sqrt(se_ours ** 2 - se_boot ** 2), n_draws))  # the floor, if any
    diff = ours_draws - (paper + rng.normal(0.0, se_other, n_draws))
    lo, hi = (float(v) for v in np.percentile(diff, [2.5, 97.5]))
    return {"difference": ours - paper, "ci95": [lo, hi], "outcome": outcome(lo, hi, margin),
            "margin": margin, "se_ours": se_ours, "se_paper": se_paper}


def outcome(lo: float, hi: float, margin: float = EQUIVALENCE_MARGIN) -> str:
    """The verdict of a 95 % interval [lo, hi] of ours - paper (module docstring)."""
    if -margin <= lo and hi <= margin:
        return "consistent"
    if hi < 0:
        return "lower"
    if lo > 0:
        return "higher"
    return "inconclusive"


def verdict_text(comparison: dict | None, differences: list[str]) -> str:
    """The REPORT.md verdict cell: ``n/a: <what differs>`` or the outcome in words."""
    if differences:
        return "n/a: " + "; ".join(differences)
    if comparison is None:
        return "n/a: no bootstrap of our number"
    c, m = comparison, comparison["margin"]
    why = {
        "consistent": f"the difference's 95 % CI lies within +-{m:g}",
        "lower": "the difference's 95 % CI lies below 0 and is not within the margin",
        "higher": "the difference's 95 % CI lies above 0 and is not within the margin",
        "inconclusive": f"the difference's 95 % CI holds 0 but reaches beyond +-{m:g}",
    }[c["outcome"]]
    return f"{c['outcome']}: {why}"


def paired_outcome(lo: float, hi: float, name_a: str, name_b: str) -> str:
    """Verdict of a 95 % interval of accuracy(A) - accuracy(B) on the same test images."""
    if lo > 0:
        return f"{name_a} is more accurate (the interval lies above 0)"
    if hi < 0:
        return f"{name_b} is more accurate (the interval lies below 0)"
    return "no difference shown (the interval holds 0)"

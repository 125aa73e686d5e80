"""One rule for "does our number agree with the paper's?" (REPORT.md, table_statistics;
issue 21, docs/verdicts.md).

A verdict is only issued for a run that follows the paper's protocol
(:func:`protocol_differences`: the Kaggle images, the ``paper`` profile, ImageNet
weights, the ``paper`` split, 224 px, sections 3.1-3.5). Any other run gets
``n/a: <what differs>``: its numbers, intervals and differences are still shown,
but they neither reproduce nor refute the paper.

One verdict per paper RESULT (a run, or the five-run mean of 5.4), on its
accuracy; precision, recall and F1 of the same run move with it and are shown
without a verdict of their own. The rule (:func:`compare_with_paper`) works on
the error-rate ratio ``(1 - ours) / (1 - paper)``, whose meaning does not change
with the accuracy level (an absolute margin of 0.04 lets a 2.4 % error rate
grow 2.6-fold but a 19 % one only 1.2-fold). Its 95 % interval (normal on the
log scale) carries three sources of error:

- our test set: copies of one ECG are answered alike, so the variance of an
  error rate e on n images in duplicate groups of sizes n_g is
  e (1 - e) sum(n_g^2) / n^2 (a design effect of sum(n_g^2) / n), e smoothed by
  half an ECG each way (``PSEUDO_ECGS``) lest 14 of 14 right read as certainty
  (the paper's alike, so that equal accuracies give a ratio of 1);
- the paper's test set, which it does not report: taken to hold the same
  duplicate structure as ours, scaled to ``PAPER_TEST_IMAGES``;
- the seed: section 5.4's standard deviation (the only spread the paper
  reports), over sqrt(runs) for a mean, on both sides.

With the margin ``ERROR_RATIO_MARGIN`` (config.py: a factor of 2): interval
wholly above 1 (our errors more frequent): "lower", wholly below 1: "higher"
(each says whether the difference may lie within the margin); holding 1 and
inside [1/2, 2]: "consistent"; otherwise "inconclusive", and
when this test set cannot resolve a 5-point shortfall (:func:`operating_characteristics`)
the verdict says so. Beside each verdict: its operating characteristics,
simulated with the run's own duplicate-group sizes.
"""
from __future__ import annotations

import numpy as np

from ecgpaper.config import (
    ERROR_RATIO_MARGIN,
    OC_SEED,
    OC_SIMULATIONS,
    PAPER_IMAGE_SIZE,
    PAPER_RESULTS,
    PAPER_TEST_IMAGES,
    PSEUDO_ECGS,
    REFERENCE_SHORTFALL,
    RESOLVING_POWER,
)
from ecgpaper.paths import is_synthetic_dataset
from ecgpaper.runs.store import Run

OUTCOMES = ("consistent", "lower", "higher", "inconclusive")
#: the two-sided 95 % normal quantile
Z95 = 1.959963984540054
#: the percentile of simulated perfect replications that sets the interval's width
CALIBRATION_LEVEL = 0.96


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


def group_sizes(groups) -> np.ndarray:
    """How many test images each duplicate group holds (the structure every
    verdict's variance and simulation use)."""
    return np.unique(np.asarray(groups), return_counts=True)[1]


def _smoothed_error(accuracy, n_ecgs: float):
    """The error rate with ``PSEUDO_ECGS`` right and wrong ECGs added (never 0 or 1)."""
    return ((1.0 - np.asarray(accuracy, float)) * n_ecgs + PSEUDO_ECGS) / (n_ecgs + 2 * PSEUDO_ECGS)


def error_ratio_interval(ours, paper, sizes, *, seed_spread: float, seed_spread_paper: float | None = None,
                         paper_n_test: int = PAPER_TEST_IMAGES) -> tuple:
    """log((1 - ours) / (1 - paper)) and its standard error (module docstring);
    ``ours`` and ``paper`` may be arrays (the simulation of
    :func:`operating_characteristics` runs the very rule). ``sizes``: our test
    set's duplicate-group sizes; ``seed_spread``: the seed standard error of our
    number, ``seed_spread_paper`` of the paper's (default: the same)."""
    sizes = np.asarray(sizes, float)
    n, n_ecgs = sizes.sum(), len(sizes)
    design_effect = float((sizes ** 2).sum() / n)
    # both smoothed alike, so that equal accuracies give a ratio of exactly 1
    e_ours, e_paper = _smoothed_error(ours, n_ecgs), _smoothed_error(paper, n_ecgs)
    spread_paper = seed_spread if seed_spread_paper is None else seed_spread_paper
    var_ours = e_ours * (1 - e_ours) * design_effect / n + seed_spread ** 2
    var_paper = e_paper * (1 - e_paper) * design_effect / paper_n_test + spread_paper ** 2
    return np.log(e_ours / e_paper), np.sqrt(var_ours / e_ours ** 2 + var_paper / e_paper ** 2)


def outcome_of_ratio(lo, hi, margin: float = ERROR_RATIO_MARGIN):
    """The verdict of a 95 % interval [lo, hi] of the error-rate ratio ours / paper
    (arrays accepted): wholly above 1 "lower" (our errors are more frequent, if
    perhaps by less than the margin), wholly below 1 "higher"; holding 1 and
    within [1/margin, margin] "consistent"; else "inconclusive"."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return np.where(lo > 1, "lower", np.where(hi < 1, "higher", np.where(
        (lo >= 1 / margin) & (hi <= margin), "consistent", "inconclusive")))


def compare_with_paper(ours: float, paper: float, *, sizes, seed_spread: float,
                       seed_spread_paper: float | None = None, margin: float = ERROR_RATIO_MARGIN,
                       paper_n_test: int = PAPER_TEST_IMAGES, n_sim: int = OC_SIMULATIONS,
                       seed: int = OC_SEED) -> dict:
    """Our accuracy beside the paper's: ``difference`` ours - paper,
    ``error_ratio`` (1 - ours) / (1 - paper) with its 95 % interval
    ``error_ratio_ci95``, the same interval in accuracy points at the paper's
    error rate (``ci95`` of the difference), ``outcome`` (one of
    :data:`OUTCOMES`), ``margin``, ``se_log_ratio`` and ``oc``
    (:func:`operating_characteristics`, whose ``z`` widens the interval).
    ``sizes``: our test set's duplicate-group sizes (:func:`group_sizes`);
    ``seed_spread``: :func:`paper_seed_spread` for our number
    (``seed_spread_paper``: for the paper's, default the same)."""
    spread = dict(seed_spread=seed_spread, seed_spread_paper=seed_spread_paper, paper_n_test=paper_n_test)
    oc = operating_characteristics(paper, sizes, margin=margin, n_sim=n_sim, seed=seed, **spread)
    d, se = (float(v) for v in error_ratio_interval(ours, paper, sizes, **spread))
    lo, hi = float(np.exp(d - oc["z"] * se)), float(np.exp(d + oc["z"] * se))
    e_paper = 1.0 - paper
    return {"difference": float(ours - paper), "error_ratio": float(np.exp(d)), "error_ratio_ci95": [lo, hi],
            "ci95": [e_paper * (1 - hi), e_paper * (1 - lo)], "outcome": str(outcome_of_ratio(lo, hi, margin)),
            "margin": margin, "se_log_ratio": se, "oc": oc}


def _observed_accuracy(rng, sizes, accuracy) -> np.ndarray:
    """Test accuracies of models whose true accuracies are ``accuracy`` (one per
    replicate) on a test set of these duplicate groups: every copy of an ECG is
    answered alike, so per group size s the number of right groups is binomial."""
    values, counts = np.unique(np.asarray(sizes, int), return_counts=True)
    right = sum(v * rng.binomial(c, np.clip(accuracy, 0.0, 1.0)) for v, c in zip(values, counts))
    return right / float(np.sum(sizes))


def operating_characteristics(paper: float, sizes, *, seed_spread: float, seed_spread_paper: float | None = None,
                              margin: float = ERROR_RATIO_MARGIN, paper_n_test: int = PAPER_TEST_IMAGES,
                              shortfall: float = REFERENCE_SHORTFALL, power: float = RESOLVING_POWER,
                              n_sim: int = OC_SIMULATIONS, seed: int = OC_SEED) -> dict:
    """How the rule behaves on THIS test set, by simulation (``n_sim``
    replicates, fixed ``seed``; vectorised, milliseconds): our test set with its
    duplicate-group sizes ``sizes``, the paper's a resample of them to
    ``paper_n_test`` images, each side's true accuracy drawn around the truth
    with its seed spread, every copy of an ECG answered alike.

    The interval's ``z`` is calibrated first: the ``CALIBRATION_LEVEL``
    (96th) percentile of |log ratio| / se over simulated perfect replications,
    never below 1.96, so that a perfect replication is called lower or higher
    at most 5 % of the time even on a test set of few ECGs (the spare point
    absorbs the simulation's own error). Returns ``z``, ``consistent_if_replicated`` (a
    perfect replication, our truth = the paper's, called consistent),
    ``false_call_if_replicated`` (it called lower or higher, in fresh draws),
    ``lower_if_short`` (a true ``shortfall`` called lower, fresh draws),
    ``resolves_shortfall`` (that with probability >= ``power``),
    ``resolvable_shortfall`` (the smallest shortfall, in steps of 0.005, called
    lower with probability ``power``; None when none down to chance, 0.25),
    ``shortfall`` and ``n_sim``."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes, int)
    paper_sizes = sizes if sizes.sum() == paper_n_test else _resized(rng, sizes, paper_n_test)
    spread_paper = seed_spread if seed_spread_paper is None else seed_spread_paper
    spread = dict(seed_spread=seed_spread, seed_spread_paper=seed_spread_paper, paper_n_test=paper_n_test)

    def simulate(short: float):
        paper_obs = _observed_accuracy(rng, paper_sizes, paper + rng.normal(0, spread_paper, n_sim))
        ours_obs = _observed_accuracy(rng, sizes, paper - short + rng.normal(0, seed_spread, n_sim))
        return error_ratio_interval(ours_obs, paper_obs, sizes, **spread)

    d, se = simulate(0.0)
    z = max(Z95, float(np.quantile(np.abs(d) / se, CALIBRATION_LEVEL)))

    def verdicts(short: float) -> np.ndarray:
        d, se = simulate(short)
        return outcome_of_ratio(np.exp(d - z * se), np.exp(d + z * se), margin)

    same = verdicts(0.0)  # fresh draws: the calibration is checked, not restated
    lower_if_short = float(np.mean(verdicts(shortfall) == "lower")) if paper - shortfall > 0 else 0.0
    steps = np.round(np.arange(0.005, paper - 0.25 + 1e-9, 0.005), 3)
    lo, hi = 0, len(steps)  # bisection: the chance of "lower" grows with the shortfall
    while lo < hi:
        mid = (lo + hi) // 2
        if np.mean(verdicts(steps[mid]) == "lower") >= power:
            hi = mid
        else:
            lo = mid + 1
    return {"z": z, "consistent_if_replicated": float(np.mean(same == "consistent")),
            "false_call_if_replicated": float(np.mean((same == "lower") | (same == "higher"))),
            "lower_if_short": lower_if_short, "shortfall": shortfall, "resolves_shortfall": lower_if_short >= power,
            "resolvable_shortfall": float(steps[lo]) if lo < len(steps) else None, "n_sim": n_sim}


def _resized(rng, sizes: np.ndarray, n_images: int) -> np.ndarray:
    """Duplicate-group sizes drawn from ``sizes`` until they hold ``n_images`` images
    (the paper's test set, taken to have our structure)."""
    draws = rng.choice(sizes, size=int(np.ceil(2 * n_images / sizes.mean())) + len(sizes))
    kept = draws[: int(np.searchsorted(np.cumsum(draws), n_images)) + 1].copy()
    kept[-1] -= kept.sum() - n_images
    return kept[kept > 0]


def oc_text(oc: dict | None) -> str:
    """The operating characteristics of a verdict row in words (REPORT.md)."""
    if not oc:
        return ""
    res = (f"resolves shortfalls of {oc['resolvable_shortfall']:.3f} or more" if oc["resolvable_shortfall"]
           else "resolves no shortfall down to chance")
    return (f"perfect replication: consistent {oc['consistent_if_replicated']:.0%}, lower/higher "
            f"{oc['false_call_if_replicated']:.0%}; true {oc['shortfall']:g} shortfall: lower "
            f"{oc['lower_if_short']:.0%}; {res} ({RESOLVING_POWER:.0%} of the time)")


def verdict_text(comparison: dict | None, differences: list[str]) -> str:
    """The REPORT.md verdict cell: ``n/a: <what differs>`` or the outcome in words,
    saying when the test set cannot resolve a 5-point shortfall (``comparison["oc"]``)."""
    if differences:
        return "n/a: " + "; ".join(differences)
    if comparison is None:
        return "n/a: no test set of ours"
    c, m = comparison, comparison["margin"]
    lo, hi = c.get("error_ratio_ci95", (float("nan"), float("nan")))
    ci = f"error-rate ratio ours / paper {c.get('error_ratio', float('nan')):.2f} (95 % CI {lo:.2f}-{hi:.2f})"
    within = f", by less than a factor {m:g}" if 1 / m <= lo and hi <= m else ""
    why = {
        "consistent": f"{ci} lies within 1/{m:g}-{m:g}",
        "lower": f"{ci} lies above 1: our errors are more frequent{within}",
        "higher": f"{ci} lies below 1: our errors are rarer{within}",
        "inconclusive": f"{ci} holds 1 but reaches beyond 1/{m:g}-{m:g}",
    }[c["outcome"]]
    oc = c.get("oc")
    if c["outcome"] == "inconclusive" and oc and not oc["resolves_shortfall"]:
        why += (f"; this test set cannot resolve a {oc['shortfall']:g} shortfall (it calls one lower "
                f"{oc['lower_if_short']:.0%} of the time)")
    return f"{c['outcome']}: {why}"


def paired_outcome(lo: float, hi: float, name_a: str, name_b: str) -> str:
    """Verdict of a 95 % interval of accuracy(A) - accuracy(B) on the same test images."""
    if lo > 0:
        return f"{name_a} is more accurate (the interval lies above 0)"
    if hi < 0:
        return f"{name_b} is more accurate (the interval lies below 0)"
    return "no difference shown (the interval holds 0)"

"""``python -m ecgpaper clean``: free the disk space generated outputs take.

A quick ``./run_all.sh`` leaves gigabytes of run folders (every run keeps its
model and best-epoch weights). What can go, and what it costs:

- ``--runs``: the run folders ``results/<dataset>/<profile>/runs/`` (models,
  weights, per-run metrics and predictions); the next ``./run_all.sh``
  retrains them. Tables, figures, REPORT.md, executed notebooks and the
  exported ``models/ecg_classifier.keras`` stay.
- ``--cache``: the decoded image caches ``data/cache/``; rebuilt on demand.

Downloaded or synthesised data (``data/raw``) is never touched.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ecgpaper import paths


def folder_size(path: Path) -> int:
    """Bytes held by the files under ``path`` (links not followed)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def clean_targets(*, runs: bool, cache: bool, profile: str | None = None) -> list[Path]:
    """The folders ``clean`` would delete, existing ones only."""
    targets: list[Path] = []
    if runs:
        pattern = f"*/{profile or '*'}/runs"
        targets += sorted(p for p in paths.RESULTS.glob(pattern) if p.is_dir())
        targets += [p for p in [paths.RESULTS / ".running"] if p.is_dir()]  # a killed runner's staging
    if cache and paths.CACHE.is_dir():
        targets.append(paths.CACHE)
    return targets


def clean(*, runs: bool, cache: bool, dry_run: bool = False, profile: str | None = None,
          log=print) -> int:
    """Delete (or with ``dry_run`` only measure) the targets; return the bytes freed.
    Without ``runs`` or ``cache`` nothing is deleted: the sizes of both are reported."""
    if not (runs or cache):
        dry_run, runs, cache = True, True, True
        log("nothing deleted: say what to clean with --runs and/or --cache. What each would free:")
    total = 0
    for target in clean_targets(runs=runs, cache=cache, profile=profile):
        size = folder_size(target)
        total += size
        shown = target.relative_to(paths.ROOT) if target.is_relative_to(paths.ROOT) else target
        log(f"  {human_size(size):>9s}  {shown}")
        if not dry_run:
            shutil.rmtree(target)
    verb = "would free" if dry_run else "freed"
    log(f"{verb} {human_size(total)} in total"
        + ("" if total else " (nothing to clean)"))
    return total

"""How every figure and table is written (showyourwork's rule: one function per
output, a stable file name, a caption that names the data).

Figures go to ``figures/<dataset>/<profile>/<name>.png`` (300 dpi) and
``.pdf``; tables to ``results/<dataset>/<profile>/<name>.csv`` (numbers as
numbers: a 95 % interval is two columns, :func:`interval_columns`) and
``.md`` (with the caption and the intervals formatted, :func:`format_intervals`).
Every caption and title carries :attr:`ecgpaper.paths.Workspace.label`, which
says SYNTHETIC for the twin, so a number from it can never pass for the paper's.
Used by every stage that writes an output (the data audit, the paper's figures,
the studies), so it imports none of them.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ecgpaper import paths  # noqa: E402
from ecgpaper.paths import Workspace  # noqa: E402


def use_style() -> None:
    """One style for every figure."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 300, "savefig.bbox": "tight",
                         "axes.titleweight": "bold"})


def save_figure(fig, name: str, ws: Workspace) -> Path:
    """Write ``name``.png (300 dpi) and ``name``.pdf; return the PNG path."""
    out = ws.figures
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.savefig(png)
    fig.savefig(out / f"{name}.pdf")
    plt.close(fig)
    return png


def interval_columns(name: str, ci) -> dict:
    """How a table stores a 95 % interval: two numeric columns ``<name>_low`` and
    ``<name>_high`` (NaN when there is none). ``name`` contains ``ci95``; the
    interval is formatted only for display (:func:`format_intervals`)."""
    lo, hi = (float(ci[0]), float(ci[1])) if ci is not None and len(ci) == 2 else (float("nan"),) * 2
    return {f"{name}_low": lo, f"{name}_high": hi}


def format_ci(ci, *, signed: bool = False) -> str:
    """'lo-hi' as the paper's tables; 'lo to hi' with signs when an end is negative
    (or ``signed``, for a difference), so the dash is never a minus sign; '' for none."""
    if ci is None or len(ci) != 2 or any(v is None or v == "" or pd.isna(v) for v in ci):
        return ""  # CSVs read with keep_default_na=False give "" for a missing end
    lo, hi = float(ci[0]), float(ci[1])
    return f"{lo:+.3f} to {hi:+.3f}" if signed or min(lo, hi) < 0 else f"{lo:.3f}-{hi:.3f}"


def format_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` for display: each pair of :func:`interval_columns` becomes one text
    column ``<name>`` where the low one was (signed for a ``difference``)."""
    out = df.copy()
    for low in [c for c in df.columns if isinstance(c, str) and "ci95" in c and c.endswith("_low")]:
        name = low[: -len("_low")]
        if f"{name}_high" not in df.columns:
            continue
        text = [format_ci((lo, hi), signed=name.startswith("difference"))
                for lo, hi in zip(df[low], df[f"{name}_high"])]
        out.insert(out.columns.get_loc(low), name, text)
        out = out.drop(columns=[low, f"{name}_high"])
    return out


def _float_format(column) -> str:
    """Four decimals, except a learning rate: 1e-05, not 0.0000."""
    return "g" if isinstance(column, str) and column.endswith("learning_rate") else ".4f"


def save_table(df: pd.DataFrame, name: str, ws: Workspace, caption: str) -> Path:
    """Write ``name``.csv (numbers as numbers: an interval is two columns) and a
    Markdown ``name``.md with its caption and formatted intervals; return the CSV path."""
    out = ws.results
    out.mkdir(parents=True, exist_ok=True)
    csv = out / f"{name}.csv"
    paths.atomic_write_text(csv, df.to_csv(index=False, lineterminator="\n"))
    shown = format_intervals(df)
    table = shown.to_markdown(index=False, floatfmt=[_float_format(c) for c in shown.columns])
    md = f"**{caption}** ({ws.label})\n\n{table}\n"
    paths.atomic_write_text(out / f"{name}.md", md)
    return csv


def labelled(df: pd.DataFrame, ws: Workspace, caption: str = ""):
    """``df`` for display in a notebook, its caption naming the data (twin or real):
    a table copied out of a notebook keeps its label. The saved CSV/Markdown
    tables carry the same label (:func:`save_table`)."""
    title = f"{caption}: {ws.label}" if caption else ws.label
    shown = format_intervals(df)
    rates = [c for c in shown.columns if _float_format(c) == "g"]
    return (shown.style.set_caption(title).format(precision=4).format("{:g}", subset=rates, na_rep="")
            .hide(axis="index"))


def collapse_warning(runs) -> str:
    """A Markdown warning naming every run the collapse detector flagged
    (``Run.collapsed``; metrics.collapse_check), with its reasons; "" when none
    did. Shuffled-label controls are meant to learn nothing and are left out."""
    flagged = [r for r in runs if r.collapsed and r.config.get("label_control", "none") == "none"]
    if not flagged:
        return ""
    lines = [f"> **WARNING: {len(flagged)} of {len(runs)} runs COLLAPSED** (constant or uniform "
             "predictions, or a training set never fitted). Their numbers say nothing about the "
             "paper: REPORT.md gives them no verdict (`n/a: collapsed`) and they are never exported. "
             "See docs/training_recipe.md, 'The paper recipe'.", ">"]
    for r in flagged:
        reasons = r.metrics.get("collapse", {}).get("reasons") or ["see its metrics.json"]
        lines.append(f"> - `{r.run_id}` ({r.config.get('model')}, batch {r.config.get('batch_size')}, "
                     f"lr {r.config.get('learning_rate'):g}): {'; '.join(reasons)}")
    return "\n".join(lines)


def warn_if_collapsed(runs) -> None:
    """Notebooks: show :func:`collapse_warning` as a visible Markdown cell output
    (not a log line) when a run collapsed."""
    text = collapse_warning(runs)
    if text:
        from IPython.display import Markdown, display

        display(Markdown(text))


def append_benchmark(table: pd.DataFrame, name: str, *, hide: tuple[str, ...] = ()) -> Path:
    """Append a benchmark's rows, stamped with the machine and the date, to
    ``results/benchmarks/<name>.csv`` (a history: one row per measurement) and
    print them as Markdown without the stamp and the ``hide`` columns."""
    import os
    import platform
    import time

    table = table.assign(machine=f"{platform.node()} ({os.cpu_count()} CPUs)", date=time.strftime("%Y-%m-%d"))
    out = paths.BENCHMARKS / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, mode="a", header=not out.exists(), index=False)
    print(table.drop(columns=["machine", "date", *hide]).to_markdown(index=False))
    print(f"\nappended to {out}")
    return out

"""``docs/reference-run/``: a finished run's figures and REPORT.md, committed so that
readers see results without running anything (``python -m ecgpaper reference-run``).

The folder is regenerated from a run's outputs (``figures/<dataset>/<profile>/``
and ``results/<dataset>/<profile>/REPORT.md``), never edited by hand. Every
file is stamped with the commit, profile, dataset (SYNTHETIC for the twin),
machine and date. Figures are downscaled and palette-compressed so that the
repository stays small; the 300 dpi originals stay in ``figures/``.
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from ecgpaper import paths
from ecgpaper.errors import UserError
from ecgpaper.report import write_report

DEFAULT_OUT = paths.REPO / "docs" / "reference-run"
MAX_WIDTH_PX = 1400
STAMP_FILE = "STAMP.json"
COMMAND = "python -m ecgpaper reference-run"


def git_commit(repo: Path = paths.REPO) -> str:
    """``<sha>`` of HEAD, ``+dirty`` when tracked files changed; "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def run_machine(dataset: str, profile: str) -> str:
    """The machine the runs trained on (from a run's environment.json, paper 3.5 / Fig. 5)."""
    for env_file in sorted((paths.profile_results(dataset, profile) / "runs").glob("*/environment.json")):
        env = json.loads(env_file.read_text())
        gpus = ", ".join(g["name"] for g in env.get("gpus", []))
        return (f"{env.get('cpu_count')} CPU cores, " + (f"GPU {gpus}" if gpus else "no GPU")
                + f"; {env.get('platform')}; Python {env.get('python')}, TensorFlow "
                  f"{env.get('tensorflow')}, Keras {env.get('keras')}")
    return f"{platform.platform()} (no run recorded its environment)"


def runner_seconds(dataset: str, profile: str) -> float | None:
    """Wall time of the notebooks as the runner recorded it (timings.json), if it did."""
    f = paths.profile_results(dataset, profile) / "notebooks" / "timings.json"
    if not f.exists():
        return None
    return float(sum(json.loads(f.read_text())["seconds"].values()))


def _shrink_png(src: Path, dst: Path) -> None:
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        if img.width > MAX_WIDTH_PX:
            img = img.resize((MAX_WIDTH_PX, round(img.height * MAX_WIDTH_PX / img.width)),
                             Image.Resampling.LANCZOS)
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def build_reference_run(dataset: str, profile: str, out: Path = DEFAULT_OUT, *,
                        data_root: str | None = None, log=print) -> Path:
    """Replace ``out`` with the figures (PNG) and the stamped REPORT.md of a finished run.
    REPORT.md is written afresh from the run's records first, so that it holds Fig. 4
    when the browser test has left its screenshot (report.webpage_screenshot)."""
    report = paths.profile_results(dataset, profile) / "REPORT.md"
    fig_dir = paths.profile_figures(dataset, profile)
    if not report.exists() or not list(fig_dir.glob("*.png")):
        raise UserError(f"no finished run of dataset '{dataset}', profile '{profile}': {report} or the "
                        f"figures in {fig_dir} are missing. Run `./run_all.sh --profile {profile}` first.")
    if data_root and Path(data_root).is_relative_to(paths.ROOT):  # no machine-specific prefix
        data_root = str(Path(data_root).relative_to(paths.ROOT))
    write_report(dataset, profile, data_root=data_root)
    pngs = sorted(fig_dir.glob("*.png"))
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "figures").mkdir(parents=True)
    for png in pngs:
        _shrink_png(png, tmp / "figures" / png.name)

    seconds = runner_seconds(dataset, profile)
    stamp = {"commit": git_commit(), "profile": profile, "dataset": dataset,
             "synthetic": dataset.startswith("synthetic"), "machine": run_machine(dataset, profile),
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "notebooks_seconds": seconds, "figures": [p.name for p in pngs],
             "command": f"{COMMAND} --profile {profile} --dataset {dataset}"}
    data = ("the SYNTHETIC twin (not the paper's Kaggle data: these numbers test the pipeline, "
            "they do not reproduce or refute the paper)" if stamp["synthetic"] else f"`{dataset}`")
    header = [
        "<!-- generated by `" + stamp["command"] + "`; do not edit by hand -->",
        f"> **Reference run.** Commit `{stamp['commit']}`, profile `{profile}`, data: {data}.",
        f"> Machine: {stamp['machine']}. Generated {stamp['date']}"
        + (f"; the notebooks took {seconds / 60:.1f} min." if seconds else "."),
        f"> Regenerate after `./run_all.sh --profile {profile}`: `{stamp['command']}`.",
        "",
    ]
    text = report.read_text()
    # the report links figures relative to results/<dataset>/<profile>/; here they sit in figures/
    for png in pngs:
        text = re.sub(r"\]\([^)\s]*" + re.escape(png.name) + r"\)", f"](figures/{png.name})", text)
        text = text.replace(f"`{png.relative_to(paths.ROOT) if png.is_relative_to(paths.ROOT) else png}`",
                            f"`figures/{png.name}`")
    title, _, body = text.partition("\n")
    (tmp / "REPORT.md").write_text(title + "\n\n" + "\n".join(header) + body)
    (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"reference run ({dataset}, {profile}, commit {stamp['commit']}) -> {out} "
        f"({len(pngs)} figures, {size / 1e6:.1f} MB)")
    return out

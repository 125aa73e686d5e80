"""Run the notebooks in order, headless, with papermill (``./run_all.sh``).

Executed copies go to ``results/<dataset>/<profile>/notebooks/``. The first
failing notebook stops the run with its name, the failing cell and the error;
its executed copy (saved by papermill up to the failure) is the log to open.
Finished experiment runs are reused, so a second run is fast.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import paths
from .errors import UserError

NOTEBOOK_DIR = paths.ROOT / "notebooks"


def notebook_list(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order."""
    folder = Path(folder or NOTEBOOK_DIR)
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def run_notebooks(profile: str, data_root: str | None = None, *, seed: int = 0,
                  only: list[str] | None = None, log=print) -> Path:
    """Execute every notebook; return the REPORT.md path."""
    import papermill as pm

    from .data import resolve_data_root
    from .inventory import dataset_id

    root, source = resolve_data_root(data_root, profile)
    dataset = dataset_id(root)
    if source == "synthetic":
        log(f"NOTE: no Kaggle data found in {paths.KAGGLE_RAW}: running on the SYNTHETIC twin "
            f"({root}). Its numbers test the pipeline; they are NOT the paper's. To use the real "
            "data: `python -m ecgpaper download` (Kaggle credentials) or --data-root PATH.")
    out_dir = paths.profile_results(dataset, profile) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "data_root": str(root) if data_root else None, "seed": seed}
    notebooks = [nb for nb in notebook_list() if not only or nb.stem in only]
    for nb in notebooks:
        t0 = time.perf_counter()
        out = out_dir / nb.name
        log(f"== {nb.name} (profile {profile}, dataset {dataset})")
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                                cwd=str(nb.parent), progress_bar=False,
                                request_save_on_cell_execute=True, start_timeout=120)
        except pm.PapermillExecutionError as exc:
            raise UserError(
                f"notebook {nb.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                f"the executed notebook up to the failure: {out}") from None
        log(f"   done in {time.perf_counter() - t0:.0f} s -> {out}")
    report = paths.profile_results(dataset, profile) / "REPORT.md"
    log(f"\nREPORT: {report}\nfigures: {paths.profile_figures(dataset, profile)}\n"
        f"tables:  {paths.profile_results(dataset, profile)}\nexecuted notebooks: {out_dir}")
    return report

"""Run the notebooks in order, headless, with papermill (``./run_all.sh``).

Executed copies go to ``results/<dataset>/<profile>/notebooks/``. The dataset
is known only once notebook 00 has run (it downloads the Kaggle data when
credentials are configured), so each notebook is executed into a staging
folder and filed under the dataset the data root names *after* it ran.
The first failing notebook stops the run with its name, the failing cell and
the error; its executed copy (saved by papermill up to the failure) is the
log to open. Finished experiment runs are reused, so a second run is fast.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from ecgpaper import paths
from ecgpaper.data.inventory import dataset_id
from ecgpaper.data.prepare import resolve_data_root
from ecgpaper.errors import UserError
from ecgpaper.lab import ensure_kernel, kernel_encryption_available
from ecgpaper.progress import ENV


def notebook_list(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order."""
    folder = Path(folder or paths.NOTEBOOKS)
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def current_data(data_root: str | None, profile: str) -> tuple[Path, str, str]:
    """(root, source, dataset) as the notebooks see them now (paper 3.1: the data)."""
    root, source = resolve_data_root(data_root, profile)
    return root, source, dataset_id(root)


def quiet_kernel_environment() -> None:
    """Environment the papermill kernels inherit: TensorFlow's C++ start-up lines
    (oneDNN, CUDA factories) hidden, training progress one line per epoch."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault(ENV, "lines")


#: Start-up lines TensorFlow's C++ runtime writes to stderr in every kernel before its
#: log level applies (TF_CPP_MIN_LOG_LEVEL cannot hide them): absl INFO lines (oneDNN,
#: CPU features), the CUDA plugin registrations of GPU wheels and oneDNN's fallback notes.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog"
                      r"|I\d{4} [\d:. ]+\d+ \S+:\d+\]"
                      r"|E\d{4} [\d:. ]+\d+ \S+:\d+\] (Unable to register cu\w+ factory|oneDNN supports)"
                      r"|To enable the following instructions:)")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = TF_NOISE):
    """Route file descriptor 2 (inherited by the kernels papermill starts) through a
    filter that drops ``noise`` lines; everything else reaches stderr unchanged."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()

    def pump():
        with os.fdopen(read_end, "rb") as src, os.fdopen(os.dup(saved), "wb", buffering=0) as dst:
            for line in src:
                if not noise.match(line.decode("utf-8", "replace")):
                    dst.write(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the pump drains and stops
        os.close(saved)
        thread.join(timeout=10)


def _kernel_manager_config():
    """Encrypted kernel transport (CurveZMQ) when this pyzmq and jupyter_client offer it:
    ipykernel otherwise warns "Kernel is running over TCP without encryption" per notebook."""
    from traitlets.config import Config

    if kernel_encryption_available():
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    return Config()


def _describe(source: str, root: Path) -> str:
    if source == "synthetic":
        return (f"NOTE: no Kaggle data found in {paths.KAGGLE_RAW}: ran on the SYNTHETIC twin "
                f"({root}). Its numbers test the pipeline; they are NOT the paper's. To use the real "
                "data: `python -m ecgpaper download` (Kaggle credentials) or --data-root PATH.")
    return f"data: {root} ({source})"


def _record_timings(path: Path, seconds: dict[str, float]) -> None:
    """Wall seconds per notebook (the README's runtimes and the reference run's stamp);
    notebooks not run this time keep their last time."""
    old = json.loads(path.read_text())["seconds"] if path.exists() else {}
    paths.atomic_write_text(path, json.dumps({
        "seconds": {**old, **seconds}, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(), "platform": platform.platform()}, indent=2) + "\n")


def preflight(profile: str, *, log=print) -> None:
    """Before the first notebook, what would stop a run hours in: a GPU profile
    without a GPU (``require_gpu``), and ImageNet weights that cannot be had for
    any backbone a notebook builds (02-04: VGG16, ResNet50; 06: MobileNetV2,
    EfficientNetB0), fetched now when missing."""
    from ecgpaper.config import get_profile
    from ecgpaper.model.backbones import MODEL_NAMES
    from ecgpaper.runs.experiments import require_gpu, resolve_weights

    prof = get_profile(profile)
    if prof.gpu:
        require_gpu(profile)
    if prof.weights == "imagenet":
        for name in MODEL_NAMES:
            resolve_weights("imagenet", name, prof.image_size, log=log)


def run_notebooks(profile: str, data_root: str | None = None, *, seed: int = 0,
                  only: list[str] | None = None, log=print, notebook_dir: Path | None = None,
                  cell_timeout: int | None = None) -> Path:
    """Execute every notebook, each cell within ``cell_timeout`` seconds (default:
    the profile's ``cell_timeout_s``); return the REPORT.md path."""
    import papermill as pm

    from ecgpaper.config import get_profile

    preflight(profile, log=log)
    cell_timeout = cell_timeout or get_profile(profile).cell_timeout_s
    kernel = ensure_kernel(log)
    quiet_kernel_environment()
    params = {"profile": profile, "data_root": str(Path(data_root).resolve()) if data_root else None,
              "seed": seed}
    notebooks = [nb for nb in notebook_list(notebook_dir) if not only or nb.stem in only]
    staging = paths.RESULTS / ".running" / profile
    staging.mkdir(parents=True, exist_ok=True)
    announced = None
    seconds: dict[str, float] = {}
    for nb in notebooks:
        t0 = time.perf_counter()
        staged = staging / nb.name
        log(f"== {nb.name} (profile {profile})")
        failure = None
        try:
            with filtered_stderr():
                pm.execute_notebook(str(nb), str(staged), parameters=params, kernel_name=kernel,
                                    cwd=str(nb.parent), progress_bar=False, coalesce_streams=True,
                                    request_save_on_cell_execute=True, start_timeout=120,
                                    execution_timeout=cell_timeout,
                                    config=_kernel_manager_config(),
                                    # C-level output (TensorFlow's start-up lines) goes to the kernel's
                                    # stderr, i.e. through filtered_stderr, not into the notebook
                                    extra_arguments=["--IPKernelApp.capture_fd_output=False"])
        except pm.PapermillExecutionError as exc:
            failure = exc
        except TimeoutError as exc:  # nbclient's CellTimeoutError: a cell ran past cell_timeout
            failure = exc
        # file it under the dataset the notebook left behind (00 may have downloaded Kaggle's)
        root, source, dataset = current_data(data_root, profile)
        out_dir = paths.Workspace(dataset, profile).results / "notebooks"
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / nb.name
        if staged.exists():
            shutil.move(str(staged), out)
        if isinstance(failure, TimeoutError):
            raise UserError(
                f"notebook {nb.name}: a cell ran longer than {cell_timeout} s (the profile's "
                f"cell_timeout_s; --cell-timeout changes it) and was stopped ({failure}); finished "
                f"runs are kept and a rerun resumes. The executed notebook up to there: {out}") from None
        if failure is not None:
            raise UserError(
                f"notebook {nb.name} failed in cell {failure.exec_count}: {failure.ename}: "
                f"{failure.evalue}\nthe executed notebook up to the failure: {out}") from None
        if announced != (source, dataset):
            log(_describe(source, root))
            log(f"   outputs of this run are filed under dataset '{dataset}'")
            announced = (source, dataset)
        seconds[nb.stem] = round(time.perf_counter() - t0, 1)
        log(f"   done in {seconds[nb.stem]:.0f} s -> {out}")
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):  # another profile's run may still be staging there
        staging.parent.rmdir()
    root, source, dataset = current_data(data_root, profile)
    ws = paths.Workspace(dataset, profile)
    report = ws.results / "REPORT.md"
    _record_timings(ws.results / "notebooks" / "timings.json", seconds)
    log(f"\nREPORT: {report}\nfigures: {ws.figures}\ntables:  {ws.results}\n"
        f"executed notebooks: {ws.results / 'notebooks'}")
    if source == "synthetic":
        log(_describe(source, root))
    return report

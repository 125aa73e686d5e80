"""The notebook runner (``./run_all.sh``): where executed notebooks are filed and what the log says.

Tiny stand-in notebooks run through the real runner, papermill and the
project's kernel; the first one "downloads" the Kaggle data as notebook 00
does when credentials are configured (it writes the download marker).
"""
from __future__ import annotations

import json

import nbformat
import pytest

from ecgpaper.data.download import DOWNLOAD_MARKER
from ecgpaper.errors import UserError
from ecgpaper.runner import run_notebooks

PARAMETERS = 'profile = "quick"\ndata_root = None\nseed = 0\n'
#: what TensorFlow's C++ runtime prints at import in every kernel, whatever TF_CPP_MIN_LOG_LEVEL says
NOISE = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
         b"I0000 00:00:1796187548.157595   27632 port.cc:153] oneDNN custom operations are on. You may "
         b"see slightly different numerical results\n"
         b"E0000 00:00:1796190027.598276    1599 util.cc:131] oneDNN supports DT_INT32 only on platforms "
         b"with AVX-512. Falling back to the default Eigen-based implementation if present.\n")


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "ecgpaper", "display_name": "Python (ecgpaper)", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def fake_notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write_notebook(folder / "00_get.ipynb",
                   "from ecgpaper import paths\n"
                   "paths.KAGGLE_RAW.mkdir(parents=True, exist_ok=True)\n"
                   f"(paths.KAGGLE_RAW / {DOWNLOAD_MARKER!r}).write_text('downloaded')\n"
                   "print('downloaded to', paths.KAGGLE_RAW)")
    write_notebook(folder / "01_use.ipynb", f"import os\nNOISE = {NOISE!r}\nprint('progress mode', os.environ['ECGPAPER_PROGRESS'])\n"
                   "os.write(2, NOISE + b'kernel says: keep this line\\n')")
    return folder


def test_notebooks_are_filed_under_the_dataset_notebook_00_downloaded(fake_notebooks, project_root, capfd):
    lines = []
    report = run_notebooks("smoke", log=lines.append, notebook_dir=fake_notebooks)
    out = project_root / "results/kaggle/smoke/notebooks"
    assert sorted(p.name for p in out.iterdir()) == ["00_get.ipynb", "01_use.ipynb", "timings.json"]
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["seconds"]) == {"00_get", "01_use"} and all(v > 0 for v in timings["seconds"].values())
    assert not (project_root / "results/synthetic-smoke").exists()
    assert report == project_root / "results/kaggle/smoke/REPORT.md"
    log = "\n".join(lines)
    assert "SYNTHETIC" not in log and "dataset 'kaggle'" in log
    # the kernels were told to keep training progress to one line per epoch
    executed = json.loads((out / "01_use.ipynb").read_text())
    assert "progress mode lines" in "".join(executed["cells"][-1]["outputs"][0]["text"])
    # the log keeps what a kernel says but not TensorFlow's start-up lines nor ipykernel's
    # "without encryption" warning (the kernels get CurveZMQ keys)
    err = capfd.readouterr().err
    assert "kernel says: keep this line" in err
    assert "oneDNN" not in err and "absl::InitializeLog" not in err
    assert "without encryption" not in err
    # nor does the executed notebook keep them: C-level output bypasses the notebook
    outputs = "".join("".join(o.get("text", "")) for o in executed["cells"][-1]["outputs"])
    assert "oneDNN" not in outputs and "kernel says: keep this line" not in outputs


def test_a_twin_run_is_labelled_synthetic_and_a_failure_names_the_executed_copy(tmp_path, project_root):
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_notebook(folder / "00_twin.ipynb",
                   "from ecgpaper import paths\n"
                   "import json\n"
                   "root = paths.twin_root('smoke'); root.mkdir(parents=True)\n"
                   "(root / 'SYNTHETIC_TWIN.json').write_text(json.dumps({}))")
    write_notebook(folder / "01_fails.ipynb", "raise ValueError('broken on purpose')")
    lines = []
    with pytest.raises(UserError) as err:
        run_notebooks("smoke", log=lines.append, notebook_dir=folder)
    failed = project_root / "results/synthetic-smoke/smoke/notebooks/01_fails.ipynb"
    assert "01_fails.ipynb failed in cell" in str(err.value) and "broken on purpose" in str(err.value)
    assert str(failed) in str(err.value) and failed.exists()
    assert any("SYNTHETIC" in line for line in lines)
    assert (project_root / "results/synthetic-smoke/smoke/notebooks/00_twin.ipynb").exists()


def test_a_cell_that_runs_past_the_time_limit_stops_the_run_with_what_to_do(tmp_path, project_root):
    """Finding 6: papermill ran every notebook without an execution timeout."""
    from ecgpaper.config import PROFILES

    assert all(p.cell_timeout_s > 0 for p in PROFILES.values())
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_notebook(folder / "00_slow.ipynb", "print('started')", "import time\ntime.sleep(60)")
    with pytest.raises(UserError, match="ran longer than 3 s") as err:
        run_notebooks("smoke", log=lambda *_: None, notebook_dir=folder, cell_timeout=3)
    executed = project_root / "results/synthetic-smoke/smoke/notebooks/00_slow.ipynb"
    assert str(executed) in str(err.value) and executed.exists()

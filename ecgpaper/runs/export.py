"""The exported model and its metadata: the one contract between the pipeline
and the web service (paper section 3.6, Fig. 4).

``models/ecg_classifier.keras`` beside ``models/ecg_classifier.json``: the class
names in order, the input size, the preprocessing (scaling, fit, crop and its
version), the dataset and profile, the run, its test metrics, the sha256 of
the model file and the page gate (``ecgpaper.data.pagegate``, issue 22 item 9:
what tells an ECG page from any other upload), calibrated on the run's own
training and validation pages, so the served model and its gate always match. :func:`export_best` writes them from the best finished run,
:func:`write_export` from any model file (the serving benchmark's untrained
VGG16), and :func:`verified_export` is what the service calls before loading:
every key present, the file there and matching its sha256, and the
preprocessing version this package serves.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ecgpaper import __version__, paths
from ecgpaper.config import CLASS_CODES, CLASS_NAMES, PAPER_METRICS
from ecgpaper.data.pagegate import PageGate, gate_for_split
from ecgpaper.data.preprocess import PREPROCESS_VERSION
from ecgpaper.errors import UserError
from ecgpaper.paths import Workspace
from ecgpaper.runs.store import read_registry

EXPORT_NAME = "ecg_classifier"

#: protocols the export looks in, in order of preference: ``grouped`` first, whose
#: validation set holds no copies of training images (the ``paper`` split's does,
#: which would favour the runs that memorise copies best)
EXPORT_PROTOCOLS = ("grouped", "paper", "kaggle")

#: metadata keys the classifier and the web service read
METADATA_KEYS = ("model_file", "model_sha256", "model", "run_id", "class_codes", "class_names",
                 "input_size", "preprocessing", "dataset", "synthetic", "profile", "protocol",
                 "metrics", "ecgpaper_version", "temperature", "page_gate")

NO_MODEL_MESSAGE = ("No model has been exported yet: run `python -m ecgpaper export` "
                    "(after `python -m ecgpaper run baseline`) or `./run_all.sh`.")


class ModelUnavailable(UserError):
    """No usable exported model in the models folder."""


def selection_key(metrics: dict, run_id: str = "?", metric: str = "val_accuracy") -> tuple[float, float]:
    """How the export ranks runs: the validation ``metric`` (higher is better), ties
    broken by the validation loss (lower is better). Never a test metric; a run
    without them is an error, not a silent fallback."""
    missing = [k for k in (metric, "val_loss") if metrics.get(k) is None]
    if missing:
        raise UserError(f"run {run_id} has no {' or '.join(missing)} in its metrics.json, so it cannot "
                        "be ranked without looking at the test set; retrain it with this version")
    return float(metrics[metric]), -float(metrics["val_loss"])


def write_export(model_src: Path, config: dict, ws: Workspace, *, run_id: str, metrics: dict,
                 selected_by: str, page_gate: dict, synthetic: bool | None = None,
                 dest: Path | None = None, temperature: float = 1.0) -> Path:
    """Copy ``model_src`` to ``<dest>/ecg_classifier.keras`` (atomically) and write
    its metadata; ``config`` is a run's config.json (model, image_size,
    scaling, fit, crop, protocol), ``ws`` the data it learnt from, ``page_gate``
    the gate's parameters (``ecgpaper.data.pagegate.fit_gate``). ``synthetic``
    (the web page's warning) defaults to whether that is the twin. ``temperature``:
    the run's temperature scaling, which the service applies to every answer
    (issue 21, item 4; 1.0: the model's own probabilities). Returns the model file."""
    PageGate(page_gate)  # a gate the service could not load is refused here
    dest = Path(dest) if dest else paths.MODELS
    dest.mkdir(parents=True, exist_ok=True)
    model_file = dest / f"{EXPORT_NAME}.keras"
    tmp = dest / f".{EXPORT_NAME}.keras.tmp"
    shutil.copyfile(model_src, tmp)
    tmp.replace(model_file)
    meta = {
        "model_file": model_file.name,
        "model_sha256": paths.file_digest(model_file),
        "model": config["model"], "run_id": run_id,
        "class_codes": list(CLASS_CODES), "class_names": [CLASS_NAMES[c] for c in CLASS_CODES],
        "input_size": config["image_size"],
        "preprocessing": {"scaling": config["scaling"], "fit": config["fit"], "crop": config["crop"],
                          "version": PREPROCESS_VERSION},
        "dataset": ws.dataset, "synthetic": ws.synthetic if synthetic is None else synthetic, "profile": ws.profile,
        "protocol": config["protocol"], "metrics": metrics, "selected_by": selected_by,
        "ecgpaper_version": __version__, "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "temperature": float(temperature),
        "page_gate": page_gate,
    }
    paths.atomic_write_text(dest / f"{EXPORT_NAME}.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return model_file


def calibration_summary(calibration: dict) -> dict:
    """What the export's metadata keeps of a run's ``calibration`` entry (metrics.calibration_report):
    the temperature, where it was fitted, and the test ECE and Brier score before and after it."""
    return ({k: calibration[k] for k in ("temperature", "fitted_on", "n_val")}
            | {f"test_{s}_{when}": calibration[when][s] for s in ("ece", "brier") for when in ("before", "after")})


def calibrate_page_gate(ws: Workspace, config: dict) -> dict:
    """The page gate of a run (``config``: its config.json), fitted on its split's
    training pages and thresholded on its validation pages (``gate_for_split``)."""
    root = config.get("data_root")
    if not root or not Path(root).is_dir():
        raise UserError(f"the run's images ({root or 'no data_root in its config.json'}) are not there, "
                        "so the page gate cannot be calibrated on its training and validation pages; "
                        "put the data back, or retrain the run with this version.")
    return gate_for_split(root, ws.dataset, config["protocol"], config["split_seed"], config.get("cv_fold", ""))


def export_best(ws: Workspace, *, run_id: str | None = None, metric: str = "val_accuracy",
                protocol: str | None = None, split_seed: int | None = None,
                dest: Path | None = None, log=print) -> Path:
    """Export the best finished run (:func:`write_export`): what the web
    service loads, so training and serving cannot disagree.

    "Best" (:func:`selection_key`) is by validation accuracy, ties broken by
    validation loss, among runs that share one validation set: one ``protocol``
    and ``split_seed`` (default: the first of :data:`EXPORT_PROTOCOLS` with a
    finished run, its lowest split seed). The test set never takes part. Runs the
    collapse detector flagged and shuffled-label controls are never exported.
    """
    records = read_registry(ws)
    if run_id:
        records = [r for r in records if r.run_id == run_id]
    records = [r for r in records if r.model_file.exists()]
    if not records:
        raise UserError(f"no finished run for dataset {ws.dataset!r}, profile {ws.profile!r}; run "
                        f"`python -m ecgpaper run baseline --profile {ws.profile}` first.")

    configs = {r.run_id: r.full_config for r in records}
    if not run_id:
        present = {configs[r.run_id]["protocol"] for r in records}
        protocol = protocol or next((p for p in EXPORT_PROTOCOLS if p in present), sorted(present)[0])
        records = [r for r in records if configs[r.run_id]["protocol"] == protocol]
        if not records:
            raise UserError(f"no finished {protocol!r} run to export for {ws.dataset}/{ws.profile}; "
                            f"protocols with runs: {', '.join(sorted(present))}")
        seeds = {configs[r.run_id]["split_seed"] for r in records}
        split_seed = min(seeds) if split_seed is None else split_seed
        records = [r for r in records if configs[r.run_id]["split_seed"] == split_seed]
        if not records:
            raise UserError(f"no finished {protocol!r} run with split seed {split_seed}; seeds: {sorted(seeds)}")
        # the leakage study's cross-validation: one validation set per fold; the 70/15/15
        # split's runs ("") first, else the first fold
        fold = min(configs[r.run_id].get("cv_fold", "") for r in records)
        records = [r for r in records if configs[r.run_id].get("cv_fold", "") == fold]

    # a collapsed run (constant or uniform answers) and a shuffled-label control are never served
    flagged = [r for r in records if r.collapsed or configs[r.run_id].get("label_control", "none") != "none"]
    records = [r for r in records if r not in flagged]
    if not records:
        raise UserError(f"nothing to export for {ws.dataset}/{ws.profile}: every candidate run collapsed "
                        f"or is a shuffled-label control ({', '.join(r.run_id for r in flagged)}); see "
                        "docs/training_recipe.md, 'The paper recipe', and retrain with another setting.")
    best = max(records, key=lambda r: selection_key(r.full_metrics, r.run_id, metric))
    metrics, config = best.full_metrics, configs[best.run_id]
    calibration = metrics.get("calibration")
    if calibration is None:  # a run of an older version, reused: said, and recorded as None
        log(f"WARNING: run {best.run_id} has no temperature scaling in its metrics.json (trained by "
            "an older version): the service shows its uncalibrated probabilities; retrain it to "
            "calibrate them")
    gate = calibrate_page_gate(ws, config)
    model_file = write_export(
        best.model_file, config, ws, run_id=best.run_id,
        metrics={k: metrics[k] for k in (*PAPER_METRICS, "ci95", "n_test")}
        | {"calibration": calibration and calibration_summary(calibration)},
        selected_by=f"{metric}, ties by val_loss, among {config['protocol']} runs of split seed "
                    f"{config['split_seed']}" + (f", {config['cv_fold']}" if config.get("cv_fold") else ""),
        page_gate=gate, dest=dest,
        temperature=calibration["temperature"] if calibration else 1.0)
    calibrated = f", temperature {calibration['temperature']:.3f}" if calibration else ""
    log(f"exported {best.run_id} ({config['model']}, test accuracy {metrics['accuracy']:.3f}{calibrated}"
        f"{', SYNTHETIC twin' if ws.synthetic else ''}; page gate: {gate['val_accepted']:.0%} of "
        f"{gate['n_val']} validation pages pass) -> {model_file}")
    return model_file


def read_export(dest: Path | None = None) -> dict:
    """The exported model's metadata, every key of :data:`METADATA_KEYS` checked;
    :class:`ModelUnavailable` (with what to run) when there is none or it is unusable."""
    meta_path = (Path(dest) if dest else paths.MODELS) / f"{EXPORT_NAME}.json"
    if not meta_path.is_file():
        raise ModelUnavailable(NO_MODEL_MESSAGE)
    try:
        meta = json.loads(meta_path.read_text())
        missing = [key for key in METADATA_KEYS if key not in meta]
    except (ValueError, TypeError):
        raise ModelUnavailable(f"{meta_path.name} is not valid JSON; export the model again: "
                               "`python -m ecgpaper export`.") from None
    if missing:
        raise ModelUnavailable(f"{meta_path.name} lacks {', '.join(missing)}; export the model "
                               "again with this version of ecgpaper: `python -m ecgpaper export`.")
    return meta


def verified_export(dest: Path | None = None) -> tuple[dict, Path]:
    """(metadata, model file) once the export passes every check of the
    contract: the metadata (:func:`read_export`), the model file present and
    matching its sha256, and this package's preprocessing version."""
    folder = Path(dest) if dest else paths.MODELS
    meta = read_export(folder)
    meta_name = f"{EXPORT_NAME}.json"
    model_file = folder / Path(meta["model_file"]).name
    if not model_file.is_file():
        raise ModelUnavailable(f"{meta_name} names {model_file.name}, which is missing. " + NO_MODEL_MESSAGE)
    if paths.file_digest(model_file) != meta["model_sha256"]:
        raise ModelUnavailable(f"{model_file.name} does not match the sha256 in {meta_name} "
                               "(a partial copy, or a model from another export). Export again: "
                               "`python -m ecgpaper export`.")
    version = meta["preprocessing"].get("version")
    if version != PREPROCESS_VERSION:
        raise ModelUnavailable(
            f"the model was trained with preprocessing version {version}, this "
            f"package serves version {PREPROCESS_VERSION}: retrain and export it "
            "(`python -m ecgpaper run baseline`).")
    return meta, model_file

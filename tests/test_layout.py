"""Nothing in the checkout shadows an installed package when Python runs from the checkout.

``python -m pytest``, ``python -m fw`` and ``python -c`` put the current directory first on
``sys.path``. The checkout's root is the ``fw`` package, so its top-level folders are also
visible as top-level modules there. They are implicit namespace packages (no ``__init__.py``),
and Python prefers a regular package found anywhere on the path to a namespace portion, so an
installed ``kernels`` (which transformers >= 5.25 imports) or ``core`` still wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}


def top_level_names() -> list[str]:
    """Every name the checkout root would offer as a top-level module."""
    names = []
    for entry in sorted(REPO.iterdir()):
        if entry.name.startswith(".") or entry.name in NOT_SOURCE or entry.name.endswith(".egg-info"):
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names.append(entry.name)
        elif entry.suffix == ".py" and entry.stem not in ("__init__", "__main__"):
            names.append(entry.stem)
    return names


def test_no_top_level_folder_is_a_regular_package():
    assert {"core", "entrypoints", "kernels", "plugins"} <= set(top_level_names())
    regular = [name for name in top_level_names() if (REPO / name / "__init__.py").exists()]
    modules = [name for name in top_level_names() if (REPO / f"{name}.py").exists()]
    assert regular == [] and modules == []


def run_from_checkout(code: str, site: Path | None = None) -> str:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = str(site)  # after the current directory, as site-packages is
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_installed_package_wins_over_every_top_level_folder(tmp_path):
    site = tmp_path / "site"
    names = top_level_names()
    for name in names:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("INSTALLED = True\n")
    code = ("import importlib, sys\n"
            "assert sys.path[0] == ''\n"
            f"for name in {names!r}:\n"
            "    print(name, getattr(importlib.import_module(name), 'INSTALLED', False))\n")
    assert run_from_checkout(code, site).split() == [word for name in names for word in (name, "True")]


def test_transformers_gets_the_real_kernels_package_from_the_checkout():
    pytest.importorskip("kernels")
    where = run_from_checkout("import transformers.activations, kernels; print(kernels.__file__)")
    assert not Path(where.strip()).resolve().is_relative_to(REPO / "kernels")


def test_python_dash_m_fw_runs_from_the_checkout(tmp_path):
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-m", "fw", "--version"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    import fw

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(fw.__version__)


def test_the_test_process_itself_imports_the_installed_kernels():
    kernels = pytest.importorskip("kernels")
    assert not Path(kernels.__file__).resolve().is_relative_to(REPO / "kernels")

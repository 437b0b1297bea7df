"""The package installs as a real (non-editable) wheel, and the wheel holds every package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


TOP_LEVEL_PACKAGES = ("core", "entrypoints", "plugins", "kernels")


def declared_packages() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_source_package_is_declared():
    # Top-level folders are namespace packages (no __init__.py, see tests/test_layout.py);
    # every folder below them that holds Python source is a regular package.
    found = {"fw"}
    for top in TOP_LEVEL_PACKAGES:
        found.add(f"fw.{top}")
        for init in (REPO / top).rglob("__init__.py"):
            found.add("fw." + ".".join(init.parent.relative_to(REPO).parts))
    assert found == set(declared_packages())
    for folder in {source.parent for top in TOP_LEVEL_PACKAGES for source in (REPO / top).rglob("*.py")}:
        assert folder.name in TOP_LEVEL_PACKAGES or (folder / "__init__.py").exists(), folder


@pytest.mark.slow  # builds a wheel
def test_non_editable_wheel_installs_and_runs_fw_version(tmp_path):
    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Build from a copy: building in place leaves an fw.egg-info in the checkout, whose stale
    # entry points would shadow the installed ones for anything run from the checkout.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(source)],
                   check=True, timeout=600, cwd=tmp_path)
    (wheel,) = wheels.glob("fw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in declared_packages():
        folder = "/".join(package.split("."))
        if package.count(".") == 1:  # a namespace package: some module of it is there
            assert any(name.startswith(folder + "/") and name.endswith(".py") for name in names), package
        else:
            assert folder + "/__init__.py" in names, package
    assert "fw/plugins/loaders/gguf_loader.py" in names
    for source in ("cpu_attention.c", "cpu_ops.c", "cpu_bf16.h"):  # compiled at first use
        assert f"fw/kernels/{source}" in names
    assert not any(name.startswith(("fw/tests/", "fw/examples/")) for name in names)

    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import fw; print(fw.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site))  # the wheel's copy, not the checkout
    version = subprocess.run([str(site / "bin" / "fw"), "--version"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True)
    import fw

    assert version.stdout.strip().endswith(fw.__version__)

"""docs/plugins.md documents every hook (datasette-style: the suite fails on a missing one)."""

from __future__ import annotations

import inspect
from pathlib import Path

from fw.core import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    return [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("fw_")]


def test_there_are_hooks_and_each_has_a_docstring():
    names = hook_names()
    assert len(names) >= 7
    for name in names:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Called" in doc and ("Collect-all" in doc or "First-result" in doc), name


def test_every_hookspec_is_documented_in_docs_plugins_md():
    text = DOC.read_text()
    missing = [name for name in hook_names() if f"`{name}`" not in text]
    assert not missing, f"hooks missing from docs/plugins.md: {missing}"

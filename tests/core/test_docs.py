"""docs/plugins.md documents every hook with its signature (datasette-style: the suite fails on a
missing or outdated one), and the hooks are typed with the kind they register."""

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


def signature_text(name: str) -> str:
    """``fw_register_platforms(registry: Registrar[type[Platform]]) -> None``, from the hookspec itself."""
    signature = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"{name}({params}) -> {signature.return_annotation}"  # the annotations are strings


def test_every_hookspec_is_documented_in_docs_plugins_md_with_its_signature():
    text = DOC.read_text()
    missing = [signature_text(name) for name in hook_names() if f"`{signature_text(name)}`" not in text]
    assert not missing, f"hooks missing from docs/plugins.md, or documented with another signature: {missing}"


def test_each_hook_is_typed_with_the_base_class_of_its_registry():
    from fw.core.plugins import REGISTRY_HOOKS

    assert set(REGISTRY_HOOKS) == set(hook_names())
    for name, (_, _, base) in REGISTRY_HOOKS.items():
        annotation = inspect.signature(getattr(hookspecs, name)).parameters["registry"].annotation
        assert annotation == f"Registrar[type[{base.__name__}]]", name

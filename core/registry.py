"""Registries of plugin-provided classes, one per kind, held by the app (never global)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from fw.core.errors import PluginError

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    """Where a registration came from: the plugin (entry-point name) and its distribution."""

    name: str
    distribution: str
    version: str

    def describe(self) -> str:
        return f"plugin '{self.name}' (distribution {self.distribution} {self.version})"


@dataclass(frozen=True)
class Registration(Generic[T]):
    name: str
    obj: T
    plugin: PluginInfo


class Registry(Generic[T]):
    """Named classes of one kind (``kind`` is a label such as ``"quantization"``).

    A name registered by two plugins is a conflict: the first registration stays in
    the table, ``conflicts`` records the pair, and ``get`` of that name raises an error
    that names both distributions.
    """

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Registration[T]] = {}
        self.conflicts: dict[str, list[PluginInfo]] = {}
        # Plugins that failed to load; named in "not found" errors because they
        # might have provided the missing name.
        self.broken_plugins: list[PluginInfo] = []

    def validate(self, name: str, obj: T, plugin: PluginInfo) -> None:
        """Raise PluginError if ``obj`` cannot be registered under ``name``."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"{plugin.describe()} registered a {self.kind} with an empty or non-string name {name!r}")
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise PluginError(
                f"{plugin.describe()} registered {self.kind} '{name}' as {obj!r}, "
                f"which is not a subclass of {self.base.__module__}.{self.base.__qualname__}"
            )

    def add(self, name: str, obj: T, plugin: PluginInfo) -> None:
        self.validate(name, obj, plugin)
        if name in self._entries:
            first = self._entries[name].plugin
            self.conflicts.setdefault(name, [first]).append(plugin)
            return
        self._entries[name] = Registration(name, obj, plugin)

    def conflict_message(self, name: str) -> str:
        owners = " and ".join(p.describe() for p in self.conflicts[name])
        return f"{self.kind} '{name}' is registered by both {owners}; uninstall or block one of them (FW_BLOCKED_PLUGINS)"

    def get(self, name: str) -> T:
        return self.registration(name).obj

    def registration(self, name: str) -> Registration[T]:
        if name in self.conflicts:
            raise PluginError(self.conflict_message(name))
        if name not in self._entries:
            available = ", ".join(sorted(self._entries)) or "none"
            message = f"unknown {self.kind} '{name}'; available: {available}"
            if self.broken_plugins:
                broken = ", ".join(p.describe() for p in self.broken_plugins)
                message += f" (these plugins failed to load and may provide it: {broken}; see `fw plugins list`)"
            raise PluginError(message)
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def registrations(self) -> list[Registration[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class Registrar(Generic[T]):
    """What a hook receives: registers into one registry on behalf of one plugin.

    Registrations are staged and committed only when the hook returns normally, so a
    hook that raises half-way leaves nothing behind.
    """

    def __init__(self, registry: Registry[T], plugin: PluginInfo) -> None:
        self._registry = registry
        self._plugin = plugin
        self._staged: list[tuple[str, T]] = []

    @property
    def kind(self) -> str:
        return self._registry.kind

    def register(self, name: str, obj: T) -> None:
        """Register ``obj`` (a class of this registry's kind) under ``name``."""
        self._staged.append((name, obj))

    def validate(self) -> None:
        for name, obj in self._staged:
            self._registry.validate(name, obj, self._plugin)

    def commit(self) -> list[str]:
        for name, obj in self._staged:
            self._registry.add(name, obj, self._plugin)
        return [name for name, _ in self._staged]

"""Builds the plugin manager from the ``fw.plugins`` entry points and fills the registries.

Nothing here runs at import time: the CLI or an app factory calls :func:`load_plugins`
and keeps the returned :class:`Plugins` (the registries are values, not globals).

Environment controls:

- ``FW_PLUGINS=a,b``: load only these third-party plugins (entry-point names);
  an empty value loads none. fw's built-in plugins always load unless blocked.
- ``FW_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party plugin except those named
  in ``FW_PLUGINS``.
- ``FW_BLOCKED_PLUGINS=a,b``: never load these plugins, built-in ones included.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping

import importlib_metadata
import pluggy

from fw.core import hookspecs
from fw.core.errors import PluginError
from fw.core.interfaces import (
    CausalLM,
    ModelSource,
    Platform,
    QuantizationMethod,
    ReasoningParser,
    ToolParser,
    WeightLoader,
)
from fw.core.registry import PluginInfo, Registrar, Registry

BUILTIN_DISTRIBUTION = "fw"

# hook name -> (registry attribute, kind label shown to users, base class)
REGISTRY_HOOKS: dict[str, tuple[str, str, type]] = {
    "fw_register_platforms": ("platforms", "platform", Platform),
    "fw_register_model_sources": ("model_sources", "model source", ModelSource),
    "fw_register_weight_loaders": ("weight_loaders", "load format", WeightLoader),
    "fw_register_model_architectures": ("model_architectures", "model architecture", CausalLM),
    "fw_register_quantization_methods": ("quantization_methods", "quantization", QuantizationMethod),
    "fw_register_tool_parsers": ("tool_parsers", "tool parser", ToolParser),
    "fw_register_reasoning_parsers": ("reasoning_parsers", "reasoning parser", ReasoningParser),
}

LOADED, BROKEN, BLOCKED, DISABLED = "loaded", "broken", "blocked", "disabled"


@dataclass
class PluginRecord:
    """One entry point of the ``fw.plugins`` group and what became of it."""

    name: str
    distribution: str
    version: str
    module: str
    builtin: bool
    status: str = LOADED
    error: str | None = None
    #: e.g. ``["quantization: awq", "platform: cuda"]``
    provides: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    @property
    def info(self) -> PluginInfo:
        return PluginInfo(self.name, self.distribution, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "status": self.status,
            "error": self.error,
            "provides": self.provides,
            "hooks": self.hooks,
        }


@dataclass
class Plugins:
    """The loaded plugins and one registry per plugin kind."""

    records: list[PluginRecord]
    platforms: Registry[type[Platform]]
    model_sources: Registry[type[ModelSource]]
    weight_loaders: Registry[type[WeightLoader]]
    model_architectures: Registry[type[CausalLM]]
    quantization_methods: Registry[type[QuantizationMethod]]
    tool_parsers: Registry[type[ToolParser]]
    reasoning_parsers: Registry[type[ReasoningParser]]

    def registries(self) -> list[Registry]:
        return [getattr(self, attr) for attr, _, _ in REGISTRY_HOOKS.values()]

    def conflicts(self) -> list[str]:
        return [r.conflict_message(name) for r in self.registries() for name in r.conflicts]

    def check(self) -> None:
        """Raise if two plugins registered the same name (start-up must not guess)."""
        if messages := self.conflicts():
            raise PluginError("; ".join(messages))

    def broken(self) -> list[PluginRecord]:
        return [r for r in self.records if r.status == BROKEN]


def _csv(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _skip_reason(record: PluginRecord, env: Mapping[str, str]) -> str | None:
    if record.name in (_csv(env.get("FW_BLOCKED_PLUGINS")) or set()):
        return BLOCKED
    if record.builtin:
        return None
    allowed = _csv(env.get("FW_PLUGINS"))
    autoload_off = env.get("FW_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in ("1", "true", "yes")
    if allowed is not None and record.name not in allowed:
        return DISABLED
    if autoload_off and (allowed is None or record.name not in allowed):
        return DISABLED
    return None


def _describe_error(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    frame = frames[-1] if frames else None
    where = f" (at {os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}{where}"


def discover_entry_points() -> list[tuple[PluginRecord, Callable[[], Any]]]:
    """Every entry point of the ``fw.plugins`` group, with a loader for its object."""
    found = []
    seen: set[tuple[str, str]] = set()
    for ep in importlib_metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        dist_name = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "unknown"
        if (dist_name, ep.name) in seen:
            continue
        seen.add((dist_name, ep.name))
        builtin = dist_name.lower() == BUILTIN_DISTRIBUTION
        record = PluginRecord(ep.name, dist_name, version, ep.value, builtin)
        found.append((record, ep.load))
    found.sort(key=lambda item: (not item[0].builtin, item[0].name))
    return found


def load_plugins(
    env: Mapping[str, str] | None = None,
    extra: Iterable[tuple[str, ModuleType | object]] = (),
    entry_points: bool = True,
) -> Plugins:
    """Load the plugins and fill one registry per kind.

    ``extra`` adds ``(name, plugin object)`` pairs without entry points (tests, embedding).
    A plugin that fails to import or whose hook raises is recorded as broken; it never
    stops the others from loading.
    """
    env = os.environ if env is None else env
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    registries = {
        attr: Registry(kind, base) for attr, kind, base in REGISTRY_HOOKS.values()
    }

    records: list[PluginRecord] = []
    candidates = discover_entry_points() if entry_points else []
    candidates += [
        (PluginRecord(name, "(in-process)", "", getattr(obj, "__name__", type(obj).__name__), False), lambda obj=obj: obj)
        for name, obj in extra
    ]
    for record, load in candidates:
        records.append(record)
        if reason := _skip_reason(record, env):
            record.status = reason
            continue
        try:
            plugin = load()
            manager.register(plugin, name=record.name)
        except Exception as exc:  # a broken plugin must not take fw down with it
            record.status, record.error = BROKEN, f"failed to load: {_describe_error(exc)}"
            continue
        record.hooks = sorted(impl_name for impl_name in _implemented_hooks(manager, record.name))

    for record in records:
        if record.status == LOADED:
            _register_all(manager, record, registries)

    broken = [r.info for r in records if r.status == BROKEN]
    for registry in registries.values():
        registry.broken_plugins = broken
    return Plugins(records=records, **registries)


def _register_all(manager: pluggy.PluginManager, record: PluginRecord, registries: dict[str, Registry]) -> None:
    """Call every registering hook of one plugin; keep its registrations only if all succeed."""
    staged: list[tuple[str, Registrar]] = []
    try:
        for hook_name, (attr, kind, _) in REGISTRY_HOOKS.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name == record.name:
                    registrar = Registrar(registries[attr], record.info)
                    impl.function(registry=registrar)
                    staged.append((kind, registrar))
        for _, registrar in staged:
            registrar.validate()
    except Exception as exc:  # a broken plugin must not take fw down with it
        record.status, record.error = BROKEN, f"{hook_name} raised {_describe_error(exc)}"
        return
    for kind, registrar in staged:
        record.provides += [f"{kind}: {name}" for name in registrar.commit()]


def _implemented_hooks(manager: pluggy.PluginManager, plugin_name: str) -> Iterable[str]:
    plugin = manager.get_plugin(plugin_name)
    for caller in manager.get_hookcallers(plugin) or []:
        yield caller.name

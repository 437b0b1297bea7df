"""The command line, generated from the config dataclasses.

Each field becomes ``--field-name`` (plus its short flag), in one argument group per
config class titled by the class name. Booleans get ``--x/--no-x``, tuples take several
values, ``Literal`` fields list their choices, integers accept ``32k``/``32K``, and the
choices of plugin-backed fields come from the plugin registries when the parser is built.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fw.core.config.base import ConfigBase, ConfigError, FieldSpec, field_specs
from fw.core.config.engine import option_names
from fw.core.config.human import parse_bytes, parse_human_int

if TYPE_CHECKING:
    from fw.core.plugins import Plugins


class FwArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that remembers its titled option groups (for ``--help=<group>``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.option_groups: dict[str, argparse._ArgumentGroup] = {}

    def add_option_group(self, title: str, description: str | None = None) -> argparse._ArgumentGroup:
        group = self.add_argument_group(title, description)
        self.option_groups[title] = group
        return group

    def group_actions(self, title: str) -> list[argparse.Action]:
        # argparse keeps a group's actions in _group_actions; vLLM's help relies on it too.
        return list(self.option_groups[title]._group_actions)

    def option_actions(self) -> dict[str, argparse.Action]:
        """dest -> action for every option in an option group (what a config file may set)."""
        return {action.dest: action for title in self.option_groups for action in self.group_actions(title)}


def _human_int(text: str) -> int:
    try:
        return parse_human_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bytes(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def plugin_choices(spec: FieldSpec, plugins: Plugins) -> list[str]:
    """The values a plugin-backed field accepts: its fixed extras, then the registered names."""
    registry = getattr(plugins, spec.plugin_kind)  # type: ignore[arg-type]
    return list(spec.extra_choices) + sorted(registry.names())


def _plugin_type(spec: FieldSpec, plugins: Plugins) -> Callable[[str], str]:
    """A type converter that rejects names no plugin registered, saying which exist."""
    registry = getattr(plugins, spec.plugin_kind)  # type: ignore[arg-type]

    def convert(value: str) -> str:
        if value in spec.extra_choices or (value in registry and value not in registry.conflicts):
            return value
        if value in registry.conflicts:
            raise argparse.ArgumentTypeError(registry.conflict_message(value))
        available = ", ".join(plugin_choices(spec, plugins)) or f"none (no plugin provides a {registry.kind})"
        message = f"unknown {registry.kind} '{value}'; available: {available}"
        if registry.broken_plugins:
            broken = ", ".join(p.name for p in registry.broken_plugins)
            message += f" (plugins that failed to load and may provide it: {broken}; see `fw plugins list`)"
        raise argparse.ArgumentTypeError(message)

    convert.__name__ = spec.plugin_kind or "plugin"
    return convert


def _argument_kwargs(spec: FieldSpec, plugins: Plugins) -> dict[str, Any]:
    # argparse expands %-formats in help texts, so a literal % must be doubled.
    kwargs: dict[str, Any] = {"dest": spec.name, "default": spec.default, "help": spec.help.replace("%", "%%")}
    if spec.kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    if spec.plugin_kind is not None:
        kwargs["type"] = _plugin_type(spec, plugins)
        choices = plugin_choices(spec, plugins)
        if choices:
            kwargs["choices"] = choices
        else:
            kwargs["metavar"] = spec.name.upper()
    elif spec.kind is int:
        kwargs["type"] = _bytes if spec.unit == "bytes" else _human_int
    elif spec.kind is float:
        kwargs["type"] = _float
    if spec.choices is not None:
        kwargs["choices"] = list(spec.choices)
    if spec.is_list:
        kwargs["nargs"] = "+"
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    return kwargs


def add_config_arguments(
    parser: FwArgumentParser, classes: Sequence[type[ConfigBase]], plugins: Plugins
) -> None:
    """Add one option group per config class, one option per field."""
    option_names(classes)  # raises if two classes declare the same field
    for config_cls in classes:
        description = (config_cls.__doc__ or "").strip().splitlines()[0]
        group = parser.add_option_group(config_cls.__name__, description)
        for spec in field_specs(config_cls):
            flags = [spec.flag] + ([spec.short] if spec.short else [])
            action = group.add_argument(*flags, **_argument_kwargs(spec, plugins))
            # BooleanOptionalAction adds the default itself on some Python versions.
            if spec.default is not None and "%(default)" not in (action.help or ""):
                action.help = f"{action.help} (default: %(default)s)"


def values_from_namespace(namespace: argparse.Namespace, classes: Sequence[type[ConfigBase]]) -> dict[str, Any]:
    """The config fields' values from a parsed namespace, as a flat mapping for build_configs."""
    parsed = vars(namespace)
    return {name: parsed[name] for name in option_names(classes) if name in parsed}


# ---------------------------------------------------------------- --config file.yaml


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of option names to values."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values, not a {type(data).__name__}")
    return data


def apply_config_file(parser: FwArgumentParser, path: str | Path) -> None:
    """Make the file's values the parser's defaults, so the command line still wins over them."""
    actions = parser.option_actions()
    defaults = {}
    for key, value in load_config_file(path).items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise ConfigError(f"config file {path}: unknown option '{key}'")
        defaults[dest] = _config_value(actions[dest], str(key), value, path)
    parser.set_defaults(**defaults)


def _config_value(action: argparse.Action, key: str, value: Any, path: str | Path) -> Any:
    """Convert a YAML value exactly as the command line would convert the same text."""
    where = f"config file {path}: bad value for '{key}'"
    if value is None:
        return None
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    several = action.nargs == "+"
    if isinstance(value, list) and not several:
        raise ConfigError(f"{where}: expected one value, got a list")
    items = value if isinstance(value, list) else [value]
    converted = []
    for item in items:
        if isinstance(item, (dict, list)):
            raise ConfigError(f"{where}: expected a plain value, got {item!r}")
        try:
            item = action.type(str(item)) if action.type else str(item)  # type: ignore[operator]
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if action.choices is not None and item not in action.choices:
            raise ConfigError(f"{where}: {item!r} is not one of {', '.join(map(str, action.choices))}")
        converted.append(item)
    return converted if several else converted[0]

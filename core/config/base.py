"""What every config dataclass shares: field metadata, type coercion and the error type.

A config field is declared with :func:`option`, which stores the help text and the
command-line details (short flag, plugin-backed choices, unit) in the field's metadata;
:mod:`fw.core.config.args` builds the CLI from that metadata and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Literal

from fw.core.config.human import parse_bytes, parse_human_int


class ConfigError(ValueError):
    """A config value is invalid. The message is one sentence that names the option."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    short: str | None = None,
    plugin_kind: str | None = None,
    extra_choices: tuple[str, ...] = (),
    unit: Literal["bytes"] | None = None,
    metavar: str | None = None,
) -> Any:
    """A config field with its CLI metadata.

    ``plugin_kind`` names the :class:`~fw.core.plugins.Plugins` registry whose names are
    the field's choices (plus ``extra_choices`` such as ``"auto"``); the choices are
    computed when the parser is built, never written here. ``unit="bytes"`` makes the
    field accept sizes like ``4GiB``.
    """
    metadata = {
        "help": help,
        "short": short,
        "plugin_kind": plugin_kind,
        "extra_choices": extra_choices,
        "unit": unit,
        "metavar": metavar,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class FieldSpec:
    """A config field, its type taken apart for coercion and for the CLI generator."""

    name: str
    #: bool, int, float or str (for a list field, the element type).
    kind: type
    optional: bool
    #: A tuple field (``tuple[str, ...]``): several values on the command line.
    is_list: bool
    #: The ``Literal`` values, or None.
    choices: tuple[Any, ...] | None
    default: Any
    help: str
    short: str | None
    plugin_kind: str | None
    extra_choices: tuple[str, ...]
    unit: str | None
    metavar: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _split_type(hint: Any) -> tuple[type, bool, bool, tuple[Any, ...] | None]:
    optional = is_list = False
    choices = None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"config fields take one type (optionally | None), got {hint}")
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        is_list, hint = True, typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        hint = type(choices[0])
    if hint not in (bool, int, float, str):
        raise TypeError(f"unsupported config field type {hint}")
    return hint, optional, is_list, choices


@functools.cache
def field_specs(cls: type) -> tuple[FieldSpec, ...]:
    """The fields of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = []
    for f in dataclasses.fields(cls):
        kind, optional, is_list, choices = _split_type(hints[f.name])
        meta = f.metadata
        specs.append(
            FieldSpec(
                name=f.name,
                kind=kind,
                optional=optional,
                is_list=is_list,
                choices=choices,
                default=f.default,
                help=meta.get("help", ""),
                short=meta.get("short"),
                plugin_kind=meta.get("plugin_kind"),
                extra_choices=tuple(meta.get("extra_choices", ())),
                unit=meta.get("unit"),
                metavar=meta.get("metavar"),
            )
        )
    return tuple(specs)


def coerce_scalar(spec: FieldSpec, value: Any) -> Any:
    """Convert one value given in Python or YAML (``"32k"``, ``8000``, ``"0.5"``) to the field's type."""
    kind_name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[spec.kind]
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
    elif spec.kind is int:
        if isinstance(value, str):
            try:
                return parse_bytes(value) if spec.unit == "bytes" else parse_human_int(value)
            except ValueError as exc:
                raise ConfigError(f"{spec.name}: {exc}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif spec.kind is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{spec.name} must be {kind_name}, got {value!r}")


def coerce_value(spec: FieldSpec, value: Any) -> Any:
    """Convert and check a field value; lists become tuples so configs stay hashable."""
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(f"{spec.name} needs a value (it cannot be None)")
    if spec.is_list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(f"{spec.name} must be a non-empty list, got {value!r}")
        return tuple(_check_choice(spec, coerce_scalar(spec, item)) for item in items)
    return _check_choice(spec, coerce_scalar(spec, value))


def _check_choice(spec: FieldSpec, value: Any) -> Any:
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(str(choice) for choice in spec.choices)
        raise ConfigError(f"{spec.name} must be one of {allowed}; got {value!r}")
    return value


@dataclass(frozen=True)
class ConfigBase:
    """Base of the config dataclasses: coerces field values, then calls :meth:`validate`."""

    def __post_init__(self) -> None:
        for spec in field_specs(type(self)):
            value = getattr(self, spec.name)
            coerced = coerce_value(spec, value)
            if coerced is not value:
                # Frozen dataclass: __post_init__ is the one place allowed to normalise.
                object.__setattr__(self, spec.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that do not make sense together or alone."""


def require_positive(name: str, value: int | float | None) -> None:
    """Raise unless ``value`` is None or >= 1 (counts and sizes)."""
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")

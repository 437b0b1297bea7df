"""Every hook fw defines. Plugins implement them with ``@fw.core.hookspecs.hookimpl``.

Each hook receives a :class:`~fw.core.registry.Registrar` bound to one plugin and one
kind of thing, and registers classes into it. Hooks run once, at start-up, when the CLI
or an app factory builds the plugin manager (:func:`fw.core.plugins.load_plugins`); no
hook runs per step or per token. A hook that raises marks its plugin as broken: nothing
it registered in that call is kept, and ``fw plugins list`` shows the error.

docs/plugins.md documents every hook below; tests/core/test_docs.py fails when one is
missing there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from fw.core.interfaces import (
        CausalLM,
        ModelSource,
        Platform,
        QuantizationMethod,
        ReasoningParser,
        ToolParser,
        WeightLoader,
    )
    from fw.core.registry import Registrar

PROJECT_NAME = "fw"
ENTRY_POINT_GROUP = "fw.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------- platforms


@hookspec
def fw_register_platforms(registry: Registrar[type[Platform]]) -> None:
    """Register :class:`~fw.core.interfaces.Platform` subclasses.

    Called once at start-up. Collect-all: every plugin's implementation is called.
    Call ``registry.register(name, cls)`` for each platform; ``name`` is what
    ``--device`` accepts. Return nothing. Do not initialise the device here: a
    platform reports whether it is usable through ``is_available()``.
    """


# ---------------------------------------------------------------- models and weights


@hookspec
def fw_register_model_sources(registry: Registrar[type[ModelSource]]) -> None:
    """Register :class:`~fw.core.interfaces.ModelSource` subclasses.

    Called once at start-up. Collect-all. Call ``registry.register(name, cls)``;
    when a model is resolved, sources are asked in descending ``priority`` whether
    they ``match`` the model reference, and the first that does resolves it to
    files on disk. Return nothing.
    """


@hookspec
def fw_register_weight_loaders(registry: Registrar[type[WeightLoader]]) -> None:
    """Register :class:`~fw.core.interfaces.WeightLoader` subclasses.

    Called once at start-up. Collect-all. Call ``registry.register(name, cls)``;
    ``name`` is what ``--load-format`` accepts. Return nothing.
    """


@hookspec
def fw_register_model_architectures(registry: Registrar[type[CausalLM]]) -> None:
    """Register model implementations (:class:`~fw.core.interfaces.CausalLM` subclasses).

    Called once at start-up. Collect-all. Call ``registry.register(name, cls)``
    where ``name`` is a Hugging Face ``architectures`` entry such as
    ``"LlamaForCausalLM"``. Return nothing.
    """


@hookspec
def fw_register_quantization_methods(registry: Registrar[type[QuantizationMethod]]) -> None:
    """Register :class:`~fw.core.interfaces.QuantizationMethod` subclasses.

    Called once at start-up. Collect-all. Call ``registry.register(name, cls)``;
    ``name`` is what ``--quantization`` accepts and what a checkpoint's
    ``quantization_config.quant_method`` names. Return nothing.
    """


# ---------------------------------------------------------------- output parsers


@hookspec
def fw_register_tool_parsers(registry: Registrar[type[ToolParser]]) -> None:
    """Register :class:`~fw.core.interfaces.ToolParser` subclasses.

    Called once at start-up. Collect-all. Call ``registry.register(name, cls)``;
    ``name`` is what ``--tool-call-parser`` accepts. Return nothing.
    """


@hookspec
def fw_register_reasoning_parsers(registry: Registrar[type[ReasoningParser]]) -> None:
    """Register :class:`~fw.core.interfaces.ReasoningParser` subclasses.

    Called once at start-up. Collect-all. Call ``registry.register(name, cls)``;
    ``name`` is what ``--reasoning-parser`` accepts. Return nothing.
    """

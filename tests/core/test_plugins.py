"""The plugin manager: registration, environment controls, broken plugins, conflicts."""

from __future__ import annotations

import pytest

from fw.core.errors import PluginError
from fw.core.hookspecs import hookimpl
from fw.core.interfaces import DeltaMessage, QuantizationMethod, ReasoningParser
from fw.core.plugins import BLOCKED, BROKEN, DISABLED, LOADED, load_plugins


class ToyReasoningParser(ReasoningParser):
    name = "toy"

    def extract_reasoning(self, model_output):
        return None, model_output

    def extract_reasoning_streaming(self, previous_text, current_text, delta_text):
        return DeltaMessage(content=delta_text)


def plugin(**hooks) -> object:
    """A fresh plugin object whose hook implementations are the given functions."""
    return type("InProcessPlugin", (), {name: staticmethod(hookimpl(fn)) for name, fn in hooks.items()})()


def register_toy(registry):
    registry.register("toy", ToyReasoningParser)


def test_builtin_plugins_load_and_register_their_platforms():
    plugins = load_plugins(env={})
    records = {r.name: r for r in plugins.records}
    assert records["cpu"].status == LOADED and records["cpu"].builtin
    assert records["cpu"].distribution == "fw"
    assert "platform: cpu" in records["cpu"].provides
    assert "fw_register_platforms" in records["cpu"].hooks
    assert {"cpu", "cuda"} <= set(plugins.platforms.names())


def test_in_process_plugin_registers_into_the_named_registry():
    plugins = load_plugins(env={}, extra=[("toyplug", plugin(fw_register_reasoning_parsers=register_toy))])
    assert plugins.reasoning_parsers.get("toy") is ToyReasoningParser
    owner = plugins.reasoning_parsers.registration("toy").plugin
    assert owner.name == "toyplug"
    record = next(r for r in plugins.records if r.name == "toyplug")
    assert record.provides == ["reasoning parser: toy"]


def test_registries_are_values_not_globals():
    with_toy = load_plugins(env={}, extra=[("toyplug", plugin(fw_register_reasoning_parsers=register_toy))])
    without = load_plugins(env={})
    assert "toy" in with_toy.reasoning_parsers
    assert "toy" not in without.reasoning_parsers


def test_hook_that_raises_marks_plugin_broken_and_keeps_nothing_it_registered():
    def registers_then_fails(registry):
        registry.register("half", ToyReasoningParser)
        raise RuntimeError("boom in the hook")

    plugins = load_plugins(env={}, extra=[("flaky", plugin(
        fw_register_reasoning_parsers=registers_then_fails,
    ))])
    record = next(r for r in plugins.records if r.name == "flaky")
    assert record.status == BROKEN
    assert "boom in the hook" in record.error and "RuntimeError" in record.error
    assert "half" not in plugins.reasoning_parsers
    # The others still work.
    assert "cpu" in plugins.platforms


def test_asking_for_a_missing_name_lists_available_and_names_broken_plugins():
    def fails(registry):
        raise ImportError("needs libfoo")

    plugins = load_plugins(env={}, extra=[
        ("good", plugin(fw_register_reasoning_parsers=register_toy)),
        ("hqqplug", plugin(fw_register_quantization_methods=fails)),
    ])
    with pytest.raises(PluginError) as excinfo:
        plugins.quantization_methods.get("hqq")  # a method no built-in plugin provides
    message = str(excinfo.value)
    assert "unknown quantization 'hqq'" in message
    assert "hqqplug" in message and "failed to load" in message
    with pytest.raises(PluginError, match="available: toy"):
        plugins.reasoning_parsers.get("nope")


def test_registering_a_class_of_the_wrong_kind_is_reported_as_broken():
    plugins = load_plugins(env={}, extra=[("wrong", plugin(
        fw_register_quantization_methods=lambda registry: registry.register("x", ToyReasoningParser),
    ))])
    record = next(r for r in plugins.records if r.name == "wrong")
    assert record.status == BROKEN
    assert "not a subclass of fw.core.interfaces.quantization.QuantizationMethod" in record.error


def test_same_name_from_two_plugins_is_an_error_naming_both():
    plugins = load_plugins(env={}, extra=[
        ("first", plugin(fw_register_reasoning_parsers=register_toy)),
        ("second", plugin(fw_register_reasoning_parsers=register_toy)),
    ])
    with pytest.raises(PluginError) as excinfo:
        plugins.check()
    message = str(excinfo.value)
    assert "plugin 'first'" in message and "plugin 'second'" in message
    with pytest.raises(PluginError, match="registered by both"):
        plugins.reasoning_parsers.get("toy")


def test_blocked_plugin_is_not_loaded_even_if_builtin():
    plugins = load_plugins(env={"FW_BLOCKED_PLUGINS": "cuda, toyplug"},
                           extra=[("toyplug", plugin(fw_register_reasoning_parsers=register_toy))])
    statuses = {r.name: r.status for r in plugins.records}
    assert statuses["cuda"] == BLOCKED and statuses["toyplug"] == BLOCKED
    assert "cuda" not in plugins.platforms and "toy" not in plugins.reasoning_parsers
    assert "cpu" in plugins.platforms


def test_allow_list_and_autoload_switch_apply_to_third_party_plugins_only():
    extra = [("toyplug", plugin(fw_register_reasoning_parsers=register_toy))]
    only_other = load_plugins(env={"FW_PLUGINS": "something-else"}, extra=extra)
    assert {r.name: r.status for r in only_other.records}["toyplug"] == DISABLED
    assert "cpu" in only_other.platforms  # built-ins always load

    no_autoload = load_plugins(env={"FW_DISABLE_PLUGIN_AUTOLOAD": "1"}, extra=extra)
    assert {r.name: r.status for r in no_autoload.records}["toyplug"] == DISABLED

    named = load_plugins(env={"FW_DISABLE_PLUGIN_AUTOLOAD": "1", "FW_PLUGINS": "toyplug"}, extra=extra)
    assert named.reasoning_parsers.get("toy") is ToyReasoningParser


def test_quantization_interface_requires_its_abstract_methods():
    class Incomplete(QuantizationMethod):
        name = "incomplete"

    with pytest.raises(TypeError):
        Incomplete()

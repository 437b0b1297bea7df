"""A toy in-process plugin that registers a quantization method and a tool parser."""

from __future__ import annotations

import pytest

from fw.core.hookspecs import hookimpl
from fw.core.interfaces import ExtractedToolCalls, QuantizationMethod, ToolParser
from fw.core.plugins import Plugins, load_plugins


class ToyQuantMethod(QuantizationMethod):
    name = "toyquant"

    @classmethod
    def from_config(cls, quant_config):
        return cls()

    def get_linear_method(self, prefix):
        return None  # registered for its name only: the CLI tests never build a model with it


class ToyToolParser(ToolParser):
    name = "toytools"

    def extract_tool_calls(self, model_output, request=None):
        return ExtractedToolCalls(tools_called=False, tool_calls=[], content=model_output)

    def extract_tool_calls_streaming(self, *args, **kwargs):
        return None


class ToyPlugin:
    @hookimpl
    def fw_register_quantization_methods(self, registry):
        registry.register(ToyQuantMethod.name, ToyQuantMethod)

    @hookimpl
    def fw_register_tool_parsers(self, registry):
        registry.register(ToyToolParser.name, ToyToolParser)


@pytest.fixture(scope="session")
def toy_plugins() -> Plugins:
    """fw's own plugins plus the toy one (third-party entry points are left out)."""
    return load_plugins(env={"FW_PLUGINS": "toy"}, extra=[("toy", ToyPlugin())])

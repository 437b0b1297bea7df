"""fw-example-plugin: the hook implementations fw finds through the ``fw.plugins`` entry point."""

from fw.core.hookspecs import hookimpl

from fw_example_plugin.reasoning import ExampleThinkReasoningParser
from fw_example_plugin.source import ExampleModelSource


@hookimpl
def fw_register_reasoning_parsers(registry) -> None:
    registry.register(ExampleThinkReasoningParser.name, ExampleThinkReasoningParser)


@hookimpl
def fw_register_model_sources(registry) -> None:
    registry.register(ExampleModelSource.name, ExampleModelSource)

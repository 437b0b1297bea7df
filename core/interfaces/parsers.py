"""Interfaces of output parsers: reasoning (thinking) and tool calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence


@dataclass
class ToolCall:
    name: str
    #: The arguments as a JSON string, as in OpenAI's ``function.arguments``.
    arguments: str
    id: str | None = None


@dataclass
class DeltaMessage:
    """What one streamed chunk adds to the assistant message."""

    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    #: Text outside the tool calls, if any.
    content: str | None


class ReasoningParser(ABC):
    """Splits a model's output into reasoning and the final answer.

    Registered through ``fw_register_reasoning_parsers``; ``name`` is what
    ``--reasoning-parser`` accepts. One instance is made per request.
    """

    name: ClassVar[str]

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        """Split a whole output into ``(reasoning, content)``; either may be ``None``."""

    @abstractmethod
    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str) -> DeltaMessage | None:
        """The part of ``delta_text`` that is reasoning and the part that is content.

        ``current_text == previous_text + delta_text``. Return ``None`` when the delta
        adds nothing to show yet.
        """

    def is_reasoning_end(self, token_ids: Sequence[int]) -> bool:
        """Whether the reasoning section has ended in ``token_ids`` (for structured output)."""
        return True


class ToolParser(ABC):
    """Extracts tool calls from a model's output.

    Registered through ``fw_register_tool_parsers``; ``name`` is what
    ``--tool-call-parser`` accepts. One instance is made per request.
    """

    name: ClassVar[str]

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def extract_tool_calls(self, model_output: str) -> ExtractedToolCalls:
        """Parse a whole output."""

    @abstractmethod
    def extract_tool_calls_streaming(self, previous_text: str, current_text: str, delta_text: str) -> DeltaMessage | None:
        """Parse one streamed delta; ``None`` while a call is still incomplete."""

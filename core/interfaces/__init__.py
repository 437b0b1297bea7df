"""One abstract base class per plugin kind. Plugins subclass these."""

from fw.core.interfaces.attention import AttentionBackend
from fw.core.interfaces.linear import LinearMethod
from fw.core.interfaces.model import CausalLM
from fw.core.interfaces.model_source import ModelSource, ResolvedModel
from fw.core.interfaces.ops import PlatformOps
from fw.core.interfaces.parsers import DeltaMessage, ExtractedToolCalls, ReasoningParser, ToolCall, ToolParser
from fw.core.interfaces.platform import MemoryInfo, Platform
from fw.core.interfaces.quantization import QuantizationMethod
from fw.core.interfaces.weight_loader import WeightLoader

__all__ = [
    "AttentionBackend",
    "CausalLM",
    "DeltaMessage",
    "ExtractedToolCalls",
    "LinearMethod",
    "MemoryInfo",
    "ModelSource",
    "Platform",
    "PlatformOps",
    "QuantizationMethod",
    "ReasoningParser",
    "ResolvedModel",
    "ToolCall",
    "ToolParser",
    "WeightLoader",
]

"""fw: an LLM inference and serving engine with an OpenAI-compatible API, built from plugins.

Importing fw loads no plugins and touches no GPU; ``fw.LLM`` and the CLI build the plugin
manager explicitly when they start (see fw.core.plugins).

The repository root is this package, and its top-level folders (core/, plugins/, kernels/,
entrypoints/ ...) are implicit namespace packages on purpose: they have no ``__init__.py``, so
when Python runs from the checkout (the current directory first on ``sys.path``) an
installed package of the same name (PyPI's ``kernels``, which transformers imports) still
wins the import. tests/test_layout.py keeps it that way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fw.core.engine.outputs import CompletionOutput, RequestOutput
    from fw.core.engine.sampling_params import RequestOutputKind, SamplingParams
    from fw.entrypoints.llm import LLM

__all__ = ["LLM", "SamplingParams", "RequestOutputKind", "RequestOutput", "CompletionOutput", "__version__"]

_LAZY = {
    "LLM": "fw.entrypoints.llm",
    "SamplingParams": "fw.core.engine.sampling_params",
    "RequestOutputKind": "fw.core.engine.sampling_params",
    "RequestOutput": "fw.core.engine.outputs",
    "CompletionOutput": "fw.core.engine.outputs",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import fw` (and `fw --version`) stays fast and imports no torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fw' has no attribute {name!r}")

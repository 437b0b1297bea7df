"""fw: an LLM inference and serving engine with an OpenAI-compatible API, built from plugins.

Importing fw loads no plugins and touches no GPU; the CLI and the app factories build
the plugin manager explicitly (see fw.core.plugins).
"""

from fw.version import __version__

__all__ = ["__version__"]

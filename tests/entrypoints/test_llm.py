"""``fw.LLM`` stays usable where the server's packages are not installed."""

from __future__ import annotations

import subprocess
import sys


def test_llm_and_the_engine_import_without_the_server_packages():
    # None in sys.modules makes an import raise ImportError, as if the package were not installed.
    code = ("import sys\n"
            "for name in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'pydantic', 'openai'):\n"
            "    sys.modules[name] = None\n"
            "import fw.entrypoints.llm, fw.entrypoints.chat_utils, fw.core.engine.async_engine\n"
            "from fw import LLM, SamplingParams\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

"""``fw plugins list [--json]``: a table and JSON, without a GPU and without Triton or its kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import importlib_metadata
import pytest

from fw.core.hookspecs import hookimpl
from fw.core.plugins import load_plugins

NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FW_PLUGINS": ""}

SEPARATOR = "----- json -----"
# Both forms in one process: starting Python with torch costs seconds on the CI machine.
SCRIPT = f"""
import sys
from fw.entrypoints.cli import main
table_code = main(["plugins", "list"])
print({SEPARATOR!r})
json_code = main(["plugins", "list", "--json"])
sys.stderr.write(f"exit={{table_code}},{{json_code}} triton={{any(m == 'triton' or m.startswith('fw.kernels.triton') for m in sys.modules)}}")
"""


@pytest.fixture(scope="module")
def listing() -> tuple[str, str, str]:
    """(table, json, stderr) of `fw plugins list` and `--json` run in a fresh process with no GPU visible."""
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=NO_GPU, check=True)
    table, _, as_json = result.stdout.partition(SEPARATOR + "\n")
    return table, as_json, result.stderr


def test_listing_imports_no_triton_kernels(listing) -> None:
    assert listing[2].endswith("exit=0,0 triton=False")


def test_table_lists_builtin_plugins(listing) -> None:
    lines = listing[0].splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "MODULE", "STATUS", "PROVIDES"]
    cpu = next(line for line in lines if line.startswith("cpu "))
    version = importlib_metadata.version("fw")
    assert cpu.split() == ["cpu", "fw", version, "fw.plugins.platforms.cpu", "loaded", "platform:", "cpu"]
    assert any("load format: safetensors" in line for line in lines)


def test_json_gives_the_same_records(listing) -> None:
    records = json.loads(listing[1])
    expected = [record.as_dict() for record in load_plugins(env={"FW_PLUGINS": ""}).records]
    assert records == expected


class BrokenPlugin:
    @hookimpl
    def fw_register_tool_parsers(self, registry):
        raise ImportError("needs libtoolparse")


def test_broken_plugin_shows_status_and_error(run_fw) -> None:
    plugins = load_plugins(env={"FW_PLUGINS": "shaky"}, extra=[("shaky", BrokenPlugin())])
    result = run_fw("plugins", "list", plugins=plugins)
    assert result.code == 0
    lines = result.out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("shaky "))
    assert " broken " in lines[row]
    assert lines[row + 1].strip().startswith("error: fw_register_tool_parsers raised ImportError: needs libtoolparse")
    as_json = json.loads(run_fw("plugins", "list", "--json", plugins=plugins).out)
    shaky = next(record for record in as_json if record["name"] == "shaky")
    assert shaky["status"] == "broken" and "needs libtoolparse" in shaky["error"]

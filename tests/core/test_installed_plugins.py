"""Plugins installed for real: the example package from examples/, and broken distributions.

Each is installed into a throwaway directory put on PYTHONPATH for the ``fw`` processes the
tests start, never into the environment running the tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pip installs and fw processes

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fw-example-plugin"
FW = [sys.executable, "-m", "fw"]


def run_fw(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*FW, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"fw {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def plugin_records(env: dict[str, str] | None = None) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(run_fw("plugins", "list", "--json", env=env).stdout)}


@pytest.fixture(scope="module")
def example_plugin_installed(tmp_path_factory) -> dict[str, str]:
    """pip-installs examples/fw-example-plugin for real, into a throwaway target directory (never
    into the running environment); returns the environment under which fw sees it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(EXAMPLE)], check=True, timeout=300, cwd=tmp_path_factory.mktemp("pip"))
    return {"PYTHONPATH": str(target)}


def test_the_running_environment_does_not_have_the_example_plugin(example_plugin_installed):
    assert "example" not in plugin_records()
    import importlib.util

    assert importlib.util.find_spec("fw_example_plugin") is None


def test_example_plugin_shows_in_plugins_list(example_plugin_installed):
    record = plugin_records(example_plugin_installed)["example"]
    assert record["distribution"] == "fw-example-plugin"
    assert record["version"] == "0.1.0"
    assert record["status"] == "loaded"
    assert record["builtin"] is False
    assert set(record["provides"]) == {"reasoning parser: example-think", "model source: example"}

    table = run_fw("plugins", "list", env=example_plugin_installed).stdout
    line = next(line for line in table.splitlines() if line.split() and line.split()[0] == "example")
    assert "fw-example-plugin" in line and "loaded" in line

    quantizer = plugin_records(example_plugin_installed)["example-int8"]  # its own entry point
    assert quantizer["distribution"] == "fw-example-plugin" and quantizer["status"] == "loaded"
    assert quantizer["provides"] == ["quantization: example-int8"]
    assert quantizer["hooks"] == ["fw_register_quantization_methods"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_example_plugin_is_selected_by_name(example_plugin_installed, tmp_path):
    # Its model source resolves example://tiny-llama and its reasoning parser is a valid choice:
    # the server starts and serves the model under the name the example source gave.
    import requests

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [*FW, "serve", "example://tiny-llama", "--reasoning-parser", "example-think", "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **example_plugin_installed, "FW_CACHE_DIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        models = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["example/tiny-llama"]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert "Traceback" not in log.read_text()
    assert (tmp_path / "example-plugin" / "tiny-llama" / "config.json").is_file()

    rejected = run_fw("serve", "example://tiny-llama", "--reasoning-parser", "nope", env=example_plugin_installed,
                      check=False)
    assert rejected.returncode != 0
    assert "example-think" in rejected.stderr  # the error lists what is available


def test_example_quantizer_is_selected_by_name_and_serves(example_plugin_installed, tmp_path):
    # --quantization example-int8 is a valid choice only with the plugin installed; the server
    # quantizes the unquantized example checkpoint at load and answers a completion.
    import requests

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [*FW, "serve", "example://tiny-llama", "--quantization", "example-int8", "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **example_plugin_installed, "FW_CACHE_DIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        response = requests.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60, json={
            "model": "example/tiny-llama", "prompt": "the quick", "max_tokens": 5, "temperature": 0})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 5
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert "quantization:" in text and "example-int8" in text  # the start-up summary names it

    rejected = run_fw("serve", "example://tiny-llama", "--quantization", "example-int8", check=False)
    assert rejected.returncode != 0 and "example-int8" in rejected.stderr  # not installed: not a choice


def test_example_plugin_can_be_blocked_or_left_out(example_plugin_installed):
    def status(**env: str) -> str:
        return plugin_records({**example_plugin_installed, **env})["example"]["status"]

    assert status(FW_BLOCKED_PLUGINS="example") == "blocked"
    assert status(FW_PLUGINS="other") == "disabled"
    assert status(FW_DISABLE_PLUGIN_AUTOLOAD="1") == "disabled"
    assert status(FW_DISABLE_PLUGIN_AUTOLOAD="1", FW_PLUGINS="example") == "loaded"


def write_distribution(site: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info + modules) in ``site``, as pip would leave it."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def broken_site(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    write_distribution(site, "fw-broken-import", """
        [fw.plugins]
        broken-import = fw_broken_import
    """, {"fw_broken_import": "import a_module_that_does_not_exist\n"})
    write_distribution(site, "fw-broken-hook", """
        [fw.plugins]
        broken-hook = fw_broken_hook
    """, {"fw_broken_hook": """
        from fw.core.hookspecs import hookimpl

        @hookimpl
        def fw_register_tool_parsers(registry):
            raise RuntimeError("tool parser table is corrupt")
    """})
    return {"PYTHONPATH": str(site)}


def test_broken_plugins_are_reported_and_the_rest_works(broken_site):
    records = plugin_records(broken_site)
    assert records["broken-import"]["status"] == "broken"
    assert "a_module_that_does_not_exist" in records["broken-import"]["error"]
    assert records["broken-hook"]["status"] == "broken"
    assert "tool parser table is corrupt" in records["broken-hook"]["error"]
    assert records["cpu"]["status"] == "loaded"

    table = run_fw("plugins", "list", env=broken_site).stdout
    assert "broken-import" in table and "broken" in table and "a_module_that_does_not_exist" in table


def test_asking_for_what_a_broken_plugin_may_provide_fails_with_the_reason(broken_site):
    result = run_fw("serve", "--tool-call-parser", "hermes", env=broken_site, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "broken-hook" in result.stderr and "hermes" in result.stderr

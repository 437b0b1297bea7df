"""``fw collect-env`` prints what a bug report needs and masks secrets."""

from __future__ import annotations

import importlib_metadata
import platform

from fw.entrypoints import collect_env


def test_report_has_system_packages_platforms_plugins_and_env(run_fw, monkeypatch) -> None:
    monkeypatch.setenv("FW_TEST_SETTING", "on")
    monkeypatch.setenv("HF_HOME", "/models/hf")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("FW_API_KEY", "sk-secret")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "nope")
    monkeypatch.setattr(collect_env, "PACKAGES", (*collect_env.PACKAGES, "surely-not-an-installed-package"))
    result = run_fw("collect-env")
    assert result.code == 0
    out = result.out
    for heading in ("System:", "Packages:", "Platforms:", "Plugins:", "Environment variables:"):
        assert heading in out
    sections: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        if line and not line.startswith(" "):
            section = sections.setdefault(line.rstrip(":"), {})
        elif line.strip():
            name, _, value = line.strip().partition("  ")
            section[name] = value.strip()
    values = {**sections["System"], **sections["Packages"], **sections["Environment variables"]}
    assert values["Python"].startswith(platform.python_version())
    assert values["torch"] == importlib_metadata.version("torch")
    assert values["transformers"] == importlib_metadata.version("transformers")
    assert values["xgrammar"] == importlib_metadata.version("xgrammar")
    assert values["surely-not-an-installed-package"] == "not installed"
    assert sections["Platforms"]["cpu"] == "available"
    assert sections["Plugins"]["cpu"] == f"fw {importlib_metadata.version('fw')}, loaded"
    assert values["CPU"] == collect_env.cpu_model()
    assert "total" in values["memory"]
    assert values["FW_TEST_SETTING"] == "on"
    assert values["HF_HOME"] == "/models/hf"
    assert values["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert values["HF_TOKEN"] == "***" and values["FW_API_KEY"] == "***"
    assert "hf_secret_value" not in out and "sk-secret" not in out
    assert "UNRELATED_VARIABLE" not in out


def test_plugins_section_shows_each_plugin(plugins) -> None:
    title, items = collect_env.plugins_section(plugins)
    assert title == "Plugins"
    assert dict(items)["cpu"].startswith("fw ")
    assert dict(items)["cpu"].endswith(", loaded")

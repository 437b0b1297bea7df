"""``fw collect-env``: the facts a bug report needs, as ``name: value`` lines under headings."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import TYPE_CHECKING, Mapping

import importlib_metadata
import psutil

from fw.core.config.human import format_bytes

if TYPE_CHECKING:
    from fw.core.plugins import Plugins

PACKAGES = (
    "fw", "torch", "triton", "transformers", "tokenizers", "safetensors", "xgrammar",
    "huggingface-hub", "gguf", "pluggy", "fastapi", "uvicorn", "numpy",
)
ENV_PREFIXES = ("FW_", "HF_")
ENV_NAMES = ("CUDA_VISIBLE_DEVICES",)
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET")

Section = tuple[str, list[tuple[str, str]]]


def package_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_section() -> Section:
    memory = psutil.virtual_memory()
    return "System", [
        ("OS", platform.platform()),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"),
        ("CPU", cpu_model()),
        ("CPU cores", f"{psutil.cpu_count(logical=False)} physical, {psutil.cpu_count(logical=True)} logical"),
        ("memory", f"{format_bytes(memory.total)} total, {format_bytes(memory.available)} available"),
    ]


def packages_section() -> Section:
    items = [(name, package_version(name)) for name in PACKAGES]
    try:
        import torch

        items.append(("torch CUDA build", torch.version.cuda or "none (CPU build)"))
    except ImportError:
        pass
    return "Packages", items


def platforms_section(plugins: Plugins) -> Section:
    """Each registered platform: available or not, and what it says about its devices."""
    items = []
    for registration in plugins.platforms.registrations():
        try:
            platform_cls = registration.obj
            if not platform_cls.is_available():
                items.append((registration.name, "not available"))
                continue
            facts = platform_cls().describe()
        except Exception as exc:  # a plugin's bug must not hide the rest of the report
            items.append((registration.name, f"error: {type(exc).__name__}: {exc}"))
            continue
        items.append((registration.name, "available"))
        items += [(f"  {key}", value) for key, value in facts.items()]
    return "Platforms", items


def plugins_section(plugins: Plugins) -> Section:
    items = []
    for record in plugins.records:
        status = record.status if record.error is None else f"{record.status} ({record.error})"
        items.append((record.name, f"{record.distribution} {record.version}".strip() + f", {status}"))
    return "Plugins", items


def masked(name: str, value: str) -> str:
    """The value, or ``***`` when the name suggests a secret (tokens, keys)."""
    return "***" if any(marker in name.upper() for marker in SECRET_MARKERS) else value


def environment_section(env: Mapping[str, str]) -> Section:
    names = sorted(name for name in env if name.startswith(ENV_PREFIXES) or name in ENV_NAMES)
    return "Environment variables", [(name, masked(name, env[name])) for name in names]


def collect_env(plugins: Plugins, env: Mapping[str, str] | None = None) -> list[Section]:
    env = os.environ if env is None else env
    return [
        system_section(),
        packages_section(),
        platforms_section(plugins),
        plugins_section(plugins),
        environment_section(env),
    ]


def format_sections(sections: list[Section]) -> str:
    lines = []
    for title, items in sections:
        lines.append(f"{title}:")
        width = max((len(name) for name, _ in items), default=0)
        lines += [f"  {name:<{width}}  {value}" for name, value in items] or ["  (none)"]
        lines.append("")
    return "\n".join(lines)


def run_collect_env(args: argparse.Namespace, plugins: Plugins) -> int:
    sys.stdout.write(format_sections(collect_env(plugins)))
    return 0

"""Builds fw's C kernels for the CPU at first use, with the system C compiler.

Each source next to this file is compiled once into fw's cache directory (keyed by the
source, the flags and the CPU's features, since it is built with -march=native) and loaded
with ctypes, whose calls release the GIL. The kernels use OpenMP, which resolves to the
libgomp torch already loaded, so they share torch's threads. Without a compiler, or when
the build fails, ``build`` returns None and callers use torch instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fopenmp")


def cache_dir() -> Path:
    root = os.environ.get("FW_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fw")
    return Path(root) / "kernels"


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def build(source: Path, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled library of ``source``, or None when it cannot be built here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.info("no C compiler found: %s is not used, torch does its work", source.name)
        return None
    flags = FLAGS + extra_flags
    # The headers next to the source are part of what is compiled.
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
    key = hashlib.sha256(source.read_bytes() + headers + " ".join(flags).encode()
                         + _cpu_fingerprint().encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = [compiler, *flags, str(source), "-o", str(built), "-lm"]
            try:
                result = subprocess.run(command, capture_output=True, text=True)
            except OSError as exc:  # e.g. CC names a compiler that is not there
                logger.warning("could not run the C compiler %s (%s); torch does the work of %s",
                               compiler, exc, source.name)
                return None
            if result.returncode != 0:
                logger.warning("could not compile %s (%s); torch does its work", source.name,
                               result.stderr.strip().splitlines()[-1:] or result.returncode)
                return None
            os.replace(built, target)  # atomic: concurrent builders never see half a file
    return ctypes.CDLL(str(target))

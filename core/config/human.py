"""Human-readable integers and byte sizes, as vLLM's command line accepts them.

Integers (``--max-model-len 32k``): a lowercase suffix is decimal and may follow a
decimal number (``1k`` = 1,000, ``25.6k`` = 25,600, ``1m``, ``1g``, ``1t``); an uppercase
suffix is binary and needs a whole number (``1K`` = 1,024, ``32K`` = 32,768, ``1M``, ``1G``,
``1T``).

Byte sizes (``--kv-cache-memory-bytes 4GiB``) accept the same, plus the unit words
``KB``/``MB``/``GB``/``TB`` (powers of 1000) and ``KiB``/``MiB``/``GiB``/``TiB`` (powers of
1024), in any case, with an optional space and a trailing ``B`` for bytes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}

_HUMAN_INT = re.compile(r"^(?P<number>\d+(?:\.\d+)?)(?P<suffix>[kmgtKMGT])$")
_BYTES = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgtKMGT](?:[iI]?[bB])?|[bB])$")


def parse_human_int(text: str) -> int:
    """``'32k'`` -> 32000, ``'32K'`` -> 32768, ``'7'`` -> 7. Raises ValueError otherwise."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    match = _HUMAN_INT.match(text)
    if match is None:
        raise ValueError(f"'{text}' is not an integer (examples: 2048, 32k = 32000, 32K = 32768)")
    number, suffix = match["number"], match["suffix"]
    power = _POWERS[suffix.lower()]
    if suffix.isupper():
        if "." in number:
            raise ValueError(
                f"'{text}' has a binary suffix ({suffix}), which needs a whole number; "
                f"use a lowercase suffix for decimal multiples such as {number}{suffix.lower()}"
            )
        return int(number) * 1024**power
    return _whole(Decimal(number) * 1000**power, text)


def parse_bytes(text: str) -> int:
    """A byte count such as ``'4GiB'``, ``'4G'``, ``'512MB'``, ``'1.5 GiB'`` or ``'1048576'``."""
    text = text.strip()
    try:
        return parse_human_int(text)
    except ValueError:
        pass
    match = _BYTES.match(text)
    if match is None:
        raise ValueError(f"'{text}' is not a size in bytes (examples: 4GiB, 8G, 512MB, 1073741824)")
    number, unit = Decimal(match["number"]), match["unit"].lower()
    if unit == "b":
        return _whole(number, text)
    base = 1024 if unit.endswith("ib") else 1000
    return _whole(number * base ** _POWERS[unit[0]], text)


def _whole(value: Decimal, text: str) -> int:
    # Decimal keeps "25.6k" exact; float would give 25599.999... and round down.
    try:
        integral = value.to_integral_value()
    except InvalidOperation:  # pragma: no cover - regex admits only finite numbers
        raise ValueError(f"'{text}' is not a number") from None
    if integral != value:
        raise ValueError(f"'{text}' is not a whole number ({value.normalize()})")
    return int(integral)


def format_bytes(num_bytes: int) -> str:
    """``4294967296`` -> ``'4 GiB'`` (for help texts and reports)."""
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if num_bytes >= 1024**power:
            value = num_bytes / 1024**power
            return f"{value:.4g} {unit}"
    return f"{num_bytes} B"

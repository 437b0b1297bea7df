"""Human-readable integers and byte sizes parse as vLLM's command line does."""

from __future__ import annotations

import pytest

from fw.core.config.human import format_bytes, parse_bytes, parse_human_int


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2048", 2048),
        ("-1", -1),
        ("1k", 1000),
        ("1K", 1024),
        ("32k", 32_000),
        ("32K", 32_768),
        ("1m", 1_000_000),
        ("1M", 1_048_576),
        ("1g", 10**9),
        ("1G", 2**30),
        ("1t", 10**12),
        ("1T", 2**40),
        ("25.6k", 25_600),
        (" 8k ", 8000),
    ],
)
def test_human_int(text: str, expected: int) -> None:
    assert parse_human_int(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("1.5K", "binary suffix"),  # binary suffixes need whole numbers
        ("1.0001k", "not a whole number"),
        ("abc", "not an integer"),
        ("4GiB", "not an integer"),  # a byte unit is not an integer suffix
        ("", "not an integer"),
    ],
)
def test_human_int_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_human_int(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4GiB", 4 * 2**30),
        ("4gib", 4 * 2**30),
        ("4G", 4 * 2**30),
        ("4g", 4 * 10**9),
        ("4GB", 4 * 10**9),
        ("512MB", 512 * 10**6),
        ("512MiB", 512 * 2**20),
        ("512M", 512 * 2**20),
        ("1.5 GiB", 3 * 2**29),
        ("100B", 100),
        ("1048576", 1_048_576),
    ],
)
def test_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["4 parsecs", "GiB", "0.3B", "4XiB"])
def test_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_format_bytes() -> None:
    assert format_bytes(4 * 2**30) == "4 GiB"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(12) == "12 B"

"""Shared test set-up: GPU tests skip visibly where no GPU is present."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (cuda marker); none on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

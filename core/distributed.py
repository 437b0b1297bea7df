"""Where this process sits in the tensor-parallel group: the one place layers read it from.

fw runs on one device today, so every process is rank 0 of a group of 1. The layers take
their shard of every weight from these numbers (``core/layers``), so tensor parallelism
changes what these functions return, plus the communication the layers' docstrings name.
"""

from __future__ import annotations


def tensor_parallel_rank() -> int:
    """This process's index in the tensor-parallel group."""
    return 0


def tensor_parallel_size() -> int:
    """How many processes share each layer's weights."""
    return 1


def divide(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` for sizes that must split evenly over the ranks."""
    if numerator % denominator:
        raise ValueError(f"{numerator} does not split evenly over {denominator} tensor-parallel ranks")
    return numerator // denominator

"""Triton kernels run interpreted (TRITON_INTERPRET=1, on CPU tensors) where there is no GPU.

Triton reads TRITON_INTERPRET when it is imported and when ``@triton.jit`` decorates a
function, so it must be set before anything imports triton: tests/conftest.py sets it at
start-up where there is no GPU, before any test module is imported (whatever the test
order). The ``triton_ops`` fixture checks the kernels really are interpreted there.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch


def _interpreted(module) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    kernels = [value for name, value in vars(module).items() if name.startswith("_") and name.endswith("_kernel")]
    return bool(kernels) and all(isinstance(kernel, InterpretedFunction) for kernel in kernels)


@pytest.fixture(scope="session")
def triton_ops() -> SimpleNamespace:
    """The kernel wrappers and the backend, plus the device their tensors must live on."""
    from fw.kernels import triton_attention, triton_cache
    from fw.plugins.platforms import cuda_attention

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpret and not torch.cuda.is_available():
        pytest.fail("no GPU and TRITON_INTERPRET is not 1: tests/conftest.py should have set it")
    for module in (triton_cache, triton_attention):
        if _interpreted(module) != interpret:
            setting = os.environ.get("TRITON_INTERPRET")
            pytest.fail(f"{module.__name__} was imported before TRITON_INTERPRET={setting} was set")
    return SimpleNamespace(
        write_kv=triton_cache.write_kv,
        paged_attention=triton_attention.paged_attention,
        backend=cuda_attention.TritonAttentionBackend(),
        interpreted=interpret,
        device=torch.device("cpu" if interpret else "cuda"),
    )

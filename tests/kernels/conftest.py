"""Triton kernels run interpreted (TRITON_INTERPRET=1, on CPU tensors) where there is no GPU.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a function, i.e. when a kernel
module is imported. This conftest sets it before any test in this folder imports one, and
the ``triton_ops`` fixture re-imports the kernel modules if another test imported them
compiled earlier in the session, so the result does not depend on test order.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def _interpreted(module) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    kernels = [value for name, value in vars(module).items() if name.startswith("_") and name.endswith("_kernel")]
    return bool(kernels) and all(isinstance(kernel, InterpretedFunction) for kernel in kernels)


@pytest.fixture(scope="session")
def triton_ops() -> SimpleNamespace:
    """The kernel wrappers and the backend, plus the device their tensors must live on."""
    from fw.core.attention import triton_backend
    from fw.kernels import triton_attention, triton_cache

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if interpret and not (_interpreted(triton_cache) and _interpreted(triton_attention)):
        importlib.reload(triton_cache)
        importlib.reload(triton_attention)
        importlib.reload(triton_backend)  # it holds the wrappers by name
    for module in (triton_cache, triton_attention):
        if _interpreted(module) != interpret:
            raise RuntimeError(f"{module.__name__}: kernels interpreted={_interpreted(module)}, TRITON_INTERPRET={interpret}")
    return SimpleNamespace(
        write_kv=triton_cache.write_kv,
        paged_attention=triton_attention.paged_attention,
        backend=triton_backend.TritonAttentionBackend(),
        interpreted=interpret,
        device=torch.device("cpu" if interpret else "cuda"),
    )

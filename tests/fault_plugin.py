"""A fault-injection platform for tests: fw's cpu platform with faults a request can trigger.

It registers the platform ``faulty-cpu`` (``--device faulty-cpu``; ``--device auto`` never
picks it). Its ops are the cpu platform's own, except:

- A request sampled at ``temperature`` :data:`FAULT_TEMPERATURE` (1.2345) makes the sampling
  op raise ``RuntimeError("injected fault ...")`` for the whole batch it is in: the engine
  must fail that request alone and serve the others. Over HTTP:
  ``{"prompt": "hi", "max_tokens": 4, "temperature": 1.2345}``.
- A request sampled at ``temperature`` :data:`DEVICE_LOST_TEMPERATURE` (1.618) "loses the
  device": that sampling op and every forward after it raise, as a GPU that fell off the bus
  would. The engine must die (every request in flight gets ``EngineDeadError``) and a server
  exit non-zero. In process, ``platform.faults.device_lost = True`` does the same.

The marker must reach the sampling op: leave ``top_k``, ``top_p`` and ``min_p`` off (they sample
in torch, past the op). ``faults.num_injected`` counts the faults raised.

Used two ways (fixtures in tests/conftest.py): in process, this file imported as the module
``fw_fault_plugin`` and passed to ``load_plugins(extra=[("fault", module)])``; in a real
``fw serve`` process, as the installed distribution ``fw-fault-plugin`` on ``PYTHONPATH``.
It imports only fw, so it runs from either place.
"""

from __future__ import annotations

import torch

from fw.core.hookspecs import hookimpl
from fw.core.interfaces import PlatformOps
from fw.core.layers.ops import TorchOps
from fw.plugins.platforms.cpu import CpuPlatform

#: A request at this temperature makes the batch's sampling raise.
FAULT_TEMPERATURE = 1.2345
#: A request at this temperature makes its sampling, and every forward after it, raise.
DEVICE_LOST_TEMPERATURE = 1.618


class FaultState:
    """What the platform's ops share: whether the device is lost, and how many faults fired."""

    def __init__(self) -> None:
        self.device_lost = False
        self.num_injected = 0

    def check_device(self) -> None:
        if self.device_lost:
            self.num_injected += 1
            raise RuntimeError("injected fault: the device is lost")


def _has_row_at(temperature: torch.Tensor, marker: float) -> bool:
    return bool(((temperature - marker).abs() < 1e-4).any())


class FaultyOps(TorchOps):
    """The cpu platform's ops (``inner``), with the faults of :class:`FaultState`."""

    def __init__(self, inner: PlatformOps, faults: FaultState) -> None:
        self.inner = inner
        self.faults = faults
        self.sample_rows_dtypes = inner.sample_rows_dtypes

    def rms_norm(self, x, weight, eps):
        self.faults.check_device()
        return self.inner.rms_norm(x, weight, eps)

    def fused_add_rms_norm(self, x, residual, weight, eps):
        self.faults.check_device()
        return self.inner.fused_add_rms_norm(x, residual, weight, eps)

    def silu_and_mul(self, gate_up):
        return self.inner.silu_and_mul(gate_up)

    def rotary_neox(self, q, k, cos, sin):
        return self.inner.rotary_neox(q, k, cos, sin)

    def sample_rows(self, logits, temperature, uniform):
        self.faults.check_device()
        if _has_row_at(temperature, DEVICE_LOST_TEMPERATURE):
            self.faults.device_lost = True
            self.faults.check_device()
        if _has_row_at(temperature, FAULT_TEMPERATURE):
            self.faults.num_injected += 1
            raise RuntimeError(f"injected fault: a row sampled at temperature {FAULT_TEMPERATURE}")
        return self.inner.sample_rows(logits, temperature, uniform)


class FaultyCpuPlatform(CpuPlatform):
    name = "faulty-cpu"
    priority = -100  # --device auto never picks it

    def __init__(self) -> None:
        self.faults = FaultState()

    def ops(self, dtype: torch.dtype) -> PlatformOps:
        return FaultyOps(super().ops(dtype), self.faults)


@hookimpl
def fw_register_platforms(registry) -> None:
    registry.register(FaultyCpuPlatform.name, FaultyCpuPlatform)

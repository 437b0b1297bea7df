"""ParallelConfig: how many devices share the model."""

from __future__ import annotations

from dataclasses import dataclass

from fw.core.config.base import ConfigBase, option, require_positive


@dataclass(frozen=True)
class ParallelConfig(ConfigBase):
    """Tensor, pipeline and data parallelism."""

    tensor_parallel_size: int = option(1, short="-tp", help="Number of devices each layer is split across.")
    pipeline_parallel_size: int = option(1, short="-pp", help="Number of pipeline stages the layers are split into.")
    data_parallel_size: int = option(1, short="-dp", help="Number of model replicas that serve requests side by side.")

    def validate(self) -> None:
        require_positive("tensor_parallel_size", self.tensor_parallel_size)
        require_positive("pipeline_parallel_size", self.pipeline_parallel_size)
        require_positive("data_parallel_size", self.data_parallel_size)

    @property
    def world_size(self) -> int:
        """Devices one replica uses."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

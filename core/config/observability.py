"""ObservabilityConfig: statistics and logging of the engine."""

from __future__ import annotations

from dataclasses import dataclass

from fw.core.config.base import ConfigBase, option


@dataclass(frozen=True)
class ObservabilityConfig(ConfigBase):
    """Engine statistics in the log."""

    disable_log_stats: bool = option(
        False, help="Do not log engine statistics (throughput, running and waiting requests, KV-cache usage)."
    )

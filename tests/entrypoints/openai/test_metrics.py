"""The stat loggers on hand-made IterationStats: Prometheus metrics and the periodic log line."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from fw.core.engine.async_engine import FinishedRequestStats, IterationStats  # noqa: E402
from fw.entrypoints.openai.metrics import LoggingStatLogger, PrometheusStatLogger  # noqa: E402


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def step(**changes) -> IterationStats:
    values = dict(time=0.0, num_running=3, num_waiting=2, kv_cache_usage=0.25, prefix_cache_queries=100,
                  prefix_cache_hits=40, num_preemptions=1, num_prompt_tokens=30, num_generation_tokens=5,
                  time_to_first_tokens=[0.05, 0.3], inter_token_latencies=[0.02],
                  finished_requests=[FinishedRequestStats("stop", 2.0, 0.1, 10, 5),
                                     FinishedRequestStats("length", 0.4, 0.0, 10, 16)])
    return IterationStats(**{**values, **changes})


def test_prometheus_metrics_have_vllms_names_with_the_fw_prefix() -> None:
    registry = CollectorRegistry()
    stat_logger = PrometheusStatLogger("tiny", registry)
    stat_logger.record(step())
    stat_logger.record(step(num_running=1, num_waiting=0, kv_cache_usage=0.5, finished_requests=[]))
    found = samples(registry)
    model = (("model_name", "tiny"),)
    assert found[("fw:num_requests_running", model)] == 1  # gauges hold the latest step
    assert found[("fw:num_requests_waiting", model)] == 0
    assert found[("fw:kv_cache_usage_perc", model)] == 0.5
    assert found[("fw:prefix_cache_queries_total", model)] == 200  # counters add the deltas up
    assert found[("fw:prefix_cache_hits_total", model)] == 80
    assert found[("fw:num_preemptions_total", model)] == 2
    assert found[("fw:prompt_tokens_total", model)] == 60
    assert found[("fw:generation_tokens_total", model)] == 10
    assert found[("fw:time_to_first_token_seconds_count", model)] == 4
    assert found[("fw:time_to_first_token_seconds_bucket", (("le", "0.1"), *model))] == 2
    assert found[("fw:inter_token_latency_seconds_sum", model)] == pytest.approx(0.04)
    assert found[("fw:e2e_request_latency_seconds_count", model)] == 2
    assert found[("fw:e2e_request_latency_seconds_bucket", (("le", "0.5"), *model))] == 1
    assert found[("fw:request_queue_time_seconds_sum", model)] == pytest.approx(0.1)
    assert found[("fw:request_success_total", (("finished_reason", "stop"), *model))] == 1
    assert found[("fw:request_success_total", (("finished_reason", "length"), *model))] == 1


def test_each_app_gets_its_own_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    PrometheusStatLogger("a", first).record(step())
    PrometheusStatLogger("a", second)  # the same names again: no "duplicated timeseries" error
    assert samples(second)[("fw:prompt_tokens_total", (("model_name", "a"),))] == 0


def test_the_log_line_reports_the_interval_and_resets(caplog) -> None:
    stat_logger = LoggingStatLogger(interval=10.0)
    start = stat_logger._last_log_time
    stat_logger.record(step(num_prompt_tokens=300, num_generation_tokens=50))
    stat_logger.record(step(num_prompt_tokens=0, num_generation_tokens=50, num_running=4, num_waiting=1,
                            kv_cache_usage=0.125, prefix_cache_queries=100, prefix_cache_hits=0))
    with caplog.at_level(logging.INFO, logger="fw.entrypoints.openai.metrics"):
        line = stat_logger.log(now=start + 10.0)
    assert line == ("Avg prompt throughput: 30.0 tokens/s, Avg generation throughput: 10.0 tokens/s, "
                    "Running: 4 reqs, Waiting: 1 reqs, KV cache usage: 12.5%, Prefix cache hit rate: 20.0%")
    assert caplog.records[-1].levelno == logging.INFO and caplog.records[-1].message == line
    stat_logger.record(step(num_prompt_tokens=0, num_generation_tokens=0, num_running=0, num_waiting=0,
                            kv_cache_usage=0.0, prefix_cache_queries=0, prefix_cache_hits=0))
    assert stat_logger.log(now=start + 15.0).startswith(
        "Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 0.0 tokens/s, Running: 0 reqs")


def test_an_idle_server_logs_at_debug_after_one_info_line(caplog) -> None:
    stat_logger = LoggingStatLogger()
    stat_logger.record(step())
    idle = step(num_prompt_tokens=0, num_generation_tokens=0, num_running=0, num_waiting=0)
    with caplog.at_level(logging.DEBUG, logger="fw.entrypoints.openai.metrics"):
        stat_logger.log()
        stat_logger.record(idle)
        stat_logger.log()  # the drop to zero is still shown
        stat_logger.log()
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO, logging.DEBUG]

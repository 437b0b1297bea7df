"""The numbers ``fw bench serve`` reports: metrics from the per-request results, vLLM's summary
table, and the latency histograms of ``--plot``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from fw.entrypoints.bench_serve import RequestResult

#: Latency metric key -> the name the summary table gives it and its section header (vLLM's wording).
LATENCY_METRICS = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
}
WIDTH = 50


def _percentile_name(p: float) -> str:
    return str(int(p)) if p == int(p) else str(p)


def latencies(results: Sequence[RequestResult]) -> dict[str, list[float]]:
    """The latency samples of the successful requests, in seconds, per metric key."""
    done = [r for r in results if r.success]
    return {
        "ttft": [r.ttft for r in done],
        # The first token's time is the prefill's: TPOT spreads the rest over the other tokens.
        "tpot": [(r.latency - r.ttft) / (r.output_len - 1) for r in done if r.output_len > 1],
        "itl": [gap for r in done for gap in r.itl],
        "e2el": [r.latency for r in done],
    }


def compute_metrics(results: Sequence[RequestResult], duration: float, percentiles: Sequence[float]) -> dict[str, Any]:
    """Counts, throughputs and mean / median / std / percentiles (ms) of every latency metric."""
    done = [r for r in results if r.success]
    total_input = sum(r.prompt_len for r in done)
    total_output = sum(r.output_len for r in done)
    metrics: dict[str, Any] = {
        "duration": duration,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
        "percentiles": list(percentiles),
    }
    for key, samples in latencies(results).items():
        ms = np.asarray(samples or [0.0]) * 1000  # no sample (every request failed): report zeros
        metrics[f"mean_{key}_ms"] = float(ms.mean())
        metrics[f"median_{key}_ms"] = float(np.median(ms))
        metrics[f"std_{key}_ms"] = float(ms.std())
        for p in percentiles:
            metrics[f"p{_percentile_name(p)}_{key}_ms"] = float(np.percentile(ms, p))
    return metrics


def print_summary(metrics: dict[str, Any], args: argparse.Namespace) -> None:
    """The result table, laid out as vLLM's so that the two read side by side."""

    def row(label: str, value: float | int) -> None:
        print(f"{label:<40} {value:<10.2f}" if isinstance(value, float) else f"{label:<40} {value:<10}")

    print(" Serving Benchmark Result ".center(WIDTH, "="))
    row("Successful requests:", metrics["completed"])
    row("Failed requests:", metrics["failed"])
    if args.max_concurrency is not None:
        row("Maximum request concurrency:", args.max_concurrency)
    if args.request_rate != float("inf"):
        row("Request rate configured (RPS):", float(args.request_rate))
    row("Benchmark duration (s):", metrics["duration"])
    row("Total input tokens:", metrics["total_input_tokens"])
    row("Total generated tokens:", metrics["total_output_tokens"])
    row("Request throughput (req/s):", metrics["request_throughput"])
    row("Output token throughput (tok/s):", metrics["output_throughput"])
    row("Total Token throughput (tok/s):", metrics["total_token_throughput"])
    for key, (name, header) in LATENCY_METRICS.items():
        print(f" {header} ".center(WIDTH, "-"))
        row(f"Mean {name} (ms):", metrics[f"mean_{key}_ms"])
        row(f"Median {name} (ms):", metrics[f"median_{key}_ms"])
        for p in metrics["percentiles"]:
            row(f"P{_percentile_name(p)} {name} (ms):", metrics[f"p{_percentile_name(p)}_{key}_ms"])
    print("=" * WIDTH)


def plot_latencies(results: Sequence[RequestResult], path: str, title: str) -> None:
    """Histograms of TTFT, TPOT, ITL and E2EL (ms) with their mean and median, into one image."""
    # A bare Figure draws with Agg and touches no pyplot state: no display, no backend switch.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 8))
    axes = figure.subplots(2, 2)
    for ax, (key, samples) in zip(axes.flat, latencies(results).items()):
        name, header = LATENCY_METRICS[key]
        ms = np.asarray(samples) * 1000
        ax.set_title(f"{header} ({len(ms)} samples)")
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("count")
        if len(ms) == 0:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.hist(ms, bins=min(50, max(5, len(ms) // 4)), color="tab:blue", alpha=0.8)
        ax.axvline(float(ms.mean()), color="tab:red", linestyle="--", label=f"mean {ms.mean():.1f}")
        ax.axvline(float(np.median(ms)), color="tab:green", linestyle=":", label=f"median {np.median(ms):.1f}")
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)

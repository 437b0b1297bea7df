"""The subcommands' parsers and their handlers.

Handlers import what they run (torch, openai, matplotlib) only when they run, so that
``fw --help`` stays fast: ``fw chat`` / ``fw complete`` run :mod:`fw.entrypoints.client`,
``fw run-batch`` :mod:`fw.entrypoints.run_batch`, ``fw bench serve``
:mod:`fw.entrypoints.bench_serve`, ``fw bench throughput`` / ``latency``
:mod:`fw.entrypoints.bench`.
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fw.core.config import ENGINE_CONFIG_CLASSES, ConfigBase, ConfigError
from fw.core.config.args import FwArgumentParser, add_config_arguments, values_from_namespace
from fw.entrypoints.help import EngineHelpAction

if TYPE_CHECKING:
    from fw.core.plugins import Plugins

Handler = Callable[[argparse.Namespace, "Plugins"], int]

DEFAULT_API_URL = "http://localhost:8000/v1"

#: vLLM options of features fw does not have yet. They are recognised so that the refusal
#: names the feature (rather than argparse's "unrecognized arguments"); never ignored.
UNAVAILABLE_OPTIONS: dict[str, str] = {
    "--speculative-config": "speculative decoding",
    "--speculative-model": "speculative decoding",
    "--num-speculative-tokens": "speculative decoding",
    "--distributed-executor-backend": "distributed executors (worker processes, Ray)",
    "--cpu-offload-gb": "offloading weights to the CPU",
    "--enable-expert-parallel": "expert parallelism",
    "--structured-outputs-config": "structured output",
    "--guided-decoding-backend": "structured output",
    "--limit-mm-per-prompt": "multimodal input",
}


class RefuseAction(argparse.Action):
    """An option fw knows from vLLM but cannot honour yet: using it is a one-line error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        raise ConfigError(f"{option_string}: {UNAVAILABLE_OPTIONS[self.option_strings[0]]} is not available yet in fw")


def add_engine_parser(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str,
    plugins: Plugins,
    classes: Sequence[type[ConfigBase]] = ENGINE_CONFIG_CLASSES,
    model_positional: bool = False,
) -> FwArgumentParser:
    """A subcommand that takes engine options: generated groups, ``--config`` and vLLM-style help."""
    usage = "%(prog)s [MODEL] [options]" if model_positional else "%(prog)s [options]"
    parser: FwArgumentParser = subparsers.add_parser(
        name, help=help, description=description, usage=usage, add_help=False
    )
    parser.add_argument("-h", "--help", action=EngineHelpAction)
    if model_positional:
        parser.add_argument(
            "model_tag", nargs="?", metavar="MODEL", default=None, help="The model to serve (same as --model)."
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="Read options from a YAML file whose keys are long option names (max-model-len or "
        "max_model_len). Options on the command line win over the file.",
    )
    add_config_arguments(parser, classes, plugins)
    for flag in UNAVAILABLE_OPTIONS:
        parser.add_argument(flag, action=RefuseAction, nargs="?", help=argparse.SUPPRESS)
    parser.set_defaults(command_parser=parser)
    return parser


def config_values(args: argparse.Namespace, classes: Sequence[type[ConfigBase]]) -> dict[str, Any]:
    """The parsed config options as a flat mapping, with the positional MODEL folded into ``model``."""
    values = values_from_namespace(args, classes)
    model_tag = getattr(args, "model_tag", None)
    if model_tag is not None:
        if values.get("model") not in (None, model_tag):
            raise ConfigError(f"the model is given twice, as {model_tag!r} and as --model {values['model']!r}; give it once")
        values["model"] = model_tag
    return values


def _lazy_handler(module: str, name: str) -> Handler:
    """A handler that imports ``fw.entrypoints.<module>`` only when its command runs."""

    def handler(args: argparse.Namespace, plugins: Plugins) -> int:
        return getattr(importlib.import_module(f"fw.entrypoints.{module}"), name)(args, plugins)

    return handler


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _percentiles(text: str) -> list[float]:
    """``"50,90,99"`` -> ``[50.0, 90.0, 99.0]``; each must lie in (0, 100]."""
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of percentiles") from None
    if not values or any(not 0 < value <= 100 for value in values):
        raise argparse.ArgumentTypeError(f"percentiles must be in (0, 100], got '{text}'")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_client_options(parser: argparse.ArgumentParser, *, system_prompt: bool) -> None:
    parser.add_argument("--url", default=DEFAULT_API_URL, help="URL of the OpenAI-compatible API (default: %(default)s).")
    parser.add_argument(
        "--model-name", "--model", dest="model_name", default=None,
        help="The model to use. Defaults to the first model the server lists.",
    )
    parser.add_argument("--api-key", default=None, help="API key sent to the server. Defaults to $OPENAI_API_KEY.")
    if system_prompt:
        parser.add_argument("--system-prompt", default=None, help="A system message that starts the conversation.")
    parser.add_argument(
        "-q", "--quick", metavar="MESSAGE", default=None,
        help="Send this one message, print the answer and exit.",
    )
    # Not in vLLM's chat/complete: without them a model with no generation config samples at
    # temperature 1 up to its whole context, and the answers cannot be reproduced.
    parser.add_argument("--temperature", type=_non_negative_float, default=None,
                        help="Sampling temperature; 0 is greedy. Defaults to the server's.")
    parser.add_argument("--max-tokens", type=_positive_int, default=None,
                        help="The most tokens in each answer. Defaults to the server's.")


def add_client_commands(subparsers: Any) -> None:
    """``fw chat`` and ``fw complete``: clients of a running server."""
    chat = subparsers.add_parser(
        "chat", help="Chat with a running fw server.", description="Chat with a model served by `fw serve`."
    )
    _add_client_options(chat, system_prompt=True)
    chat.set_defaults(handler=_lazy_handler("client", "run_chat"))
    complete = subparsers.add_parser(
        "complete",
        help="Complete prompts with a running fw server.",
        description="Send prompts to the completions API of a model served by `fw serve`.",
    )
    _add_client_options(complete, system_prompt=False)
    complete.set_defaults(handler=_lazy_handler("client", "run_complete"))


def add_run_batch_command(subparsers: Any, plugins: Plugins) -> None:
    parser = add_engine_parser(
        subparsers, "run-batch", plugins=plugins,
        help="Run a file of OpenAI batch requests offline.",
        description="Run the requests of an OpenAI batch file (JSON lines) and write the responses.",
    )
    files = parser.add_option_group("BatchFiles", "Where the batch requests come from and where the responses go.")
    # Not argparse-required, so that a --config file may give them too.
    files.add_argument("-i", "--input-file",
                       help="The batch requests, one JSON object per line (a path, or - for stdin). Required.")
    files.add_argument("-o", "--output-file",
                       help="Where to write the responses, one JSON object per line (a path, or - for stdout). "
                       "Required.")
    parser.set_defaults(handler=_lazy_handler("run_batch", "run_batch"))


def _add_sampling_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--temperature", type=float, default=0.6,
                       help="Sampling temperature of every request; 0 is greedy "
                       "(default: %(default)s, as nano-vllm's bench).")
    group.add_argument("--disable-detokenize", action=argparse.BooleanOptionalAction, default=False,
                       help="Do not turn output tokens into text (time the model and sampling only).")


def add_bench_command(subparsers: Any, plugins: Plugins) -> None:
    bench = subparsers.add_parser("bench", help="Benchmark fw.", description="Benchmark the engine or a running server.")
    kinds = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    latency = add_engine_parser(
        kinds, "latency", plugins=plugins,
        help="Latency of one batch, offline.", description="Measure the latency of processing one batch of requests.",
    )
    group = latency.add_option_group("LatencyBenchmark", "The batch to time.")
    group.add_argument("--input-len", type=_positive_int, default=32, help="Prompt tokens per request (default: %(default)s).")
    group.add_argument("--output-len", type=_positive_int, default=128, help="Generated tokens per request (default: %(default)s).")
    group.add_argument("--batch-size", type=_positive_int, default=8, help="Requests in the batch (default: %(default)s).")
    group.add_argument("--num-iters-warmup", type=int, default=2, help="Untimed warm-up runs (default: %(default)s).")
    group.add_argument("--num-iters", type=_positive_int, default=5, help="Timed runs (default: %(default)s).")
    _add_sampling_options(group)
    group.add_argument("--output-json", default=None, help="Write the results to this JSON file.")
    latency.set_defaults(handler=_lazy_handler("bench", "run_latency"))

    throughput = add_engine_parser(
        kinds, "throughput", plugins=plugins,
        help="Throughput, offline.", description="Measure how many requests and tokens per second the engine "
        "processes, optionally against Hugging Face transformers on the same requests (--backend hf|both). "
        "Prompts are random token ids; every request generates exactly its output length (ignore_eos). "
        "The random seed is --seed.",
    )
    group = throughput.add_option_group("ThroughputBenchmark", "The requests to process and who processes them.")
    group.add_argument("--dataset-name", choices=["random"], default="random", help="Where prompts come from (default: %(default)s).")
    group.add_argument("--input-len", "--random-input-len", dest="input_len", type=_positive_int, default=1024,
                       help="Prompt tokens per request (default: %(default)s).")
    group.add_argument("--output-len", "--random-output-len", dest="output_len", type=_positive_int, default=128,
                       help="Generated tokens per request (default: %(default)s).")
    group.add_argument("--random-range-ratio", type=float, default=0.0,
                       help="Draw lengths uniformly from [len * (1 - ratio), len * (1 + ratio)]; in [0, 1) "
                       "(default: %(default)s).")
    group.add_argument("--input-len-range", nargs=2, type=_positive_int, metavar=("MIN", "MAX"), default=None,
                       help="Draw prompt lengths uniformly from MIN..MAX (replaces --input-len and the ratio).")
    group.add_argument("--output-len-range", nargs=2, type=_positive_int, metavar=("MIN", "MAX"), default=None,
                       help="Draw output lengths uniformly from MIN..MAX (replaces --output-len and the ratio).")
    group.add_argument("--num-prompts", type=_positive_int, default=128, help="Number of requests (default: %(default)s).")
    group.add_argument("--backend", choices=["fw", "hf", "both"], default="fw",
                       help="fw's engine, Hugging Face transformers generate() in padded batches, or both "
                       "one after the other with the ratio of their output tokens/s (default: %(default)s).")
    group.add_argument("--hf-max-batch-size", type=_positive_int, default=32,
                       help="The most requests in one transformers generate() batch (default: %(default)s).")
    _add_sampling_options(group)
    group.add_argument("--output-json", default=None, help="Write the results to this JSON file.")
    throughput.set_defaults(handler=_lazy_handler("bench", "run_throughput"))

    add_bench_serve_command(kinds)


def add_bench_serve_command(kinds: Any) -> None:
    """``fw bench serve``: vLLM's flags for the same benchmark, against any OpenAI-compatible server."""
    serve = kinds.add_parser(
        "serve", help="Load-test a running server.",
        description="Send requests to a running OpenAI-compatible server and measure latency and throughput. "
        "Prompts are random token ids; every request generates exactly its output length (ignore_eos).",
    )
    target = serve.add_argument_group("Server")
    target.add_argument("--base-url", default="http://localhost:8000", help="The server's URL (default: %(default)s).")
    target.add_argument("--endpoint", choices=["/v1/completions", "/v1/chat/completions"], default="/v1/completions",
                        help="API path to send requests to (default: %(default)s).")
    target.add_argument("--model", default=None, help="The model to ask for. Defaults to the first model the server lists.")
    target.add_argument("--api-key", default=None, help="API key sent to the server. Defaults to $OPENAI_API_KEY.")
    data = serve.add_argument_group("Requests")
    data.add_argument("--dataset-name", "--dataset", dest="dataset_name", choices=["random"], default="random",
                      help="Where prompts come from (default: %(default)s).")
    data.add_argument("--num-prompts", type=_positive_int, default=1000, help="Number of requests (default: %(default)s).")
    data.add_argument("--random-input-len", type=_positive_int, default=1024,
                      help="Prompt tokens per random request (default: %(default)s).")
    data.add_argument("--random-output-len", type=_positive_int, default=128,
                      help="Generated tokens per random request (default: %(default)s).")
    data.add_argument("--random-range-ratio", type=float, default=0.0,
                      help="Draw lengths uniformly from [len * (1 - ratio), len * (1 + ratio)]; in [0, 1) "
                      "(default: %(default)s).")
    data.add_argument("--random-vocab-size", type=_positive_int, default=None,
                      help="Draw prompt token ids below this. Defaults to one more than the largest id the "
                      "server's /tokenize gives for a varied sample text.")
    data.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                      help="Generate exactly the output length even past the end-of-sequence token (default: on).")
    data.add_argument("--temperature", type=_non_negative_float, default=0.0,
                      help="Sampling temperature of every request (default: %(default)s, greedy).")
    data.add_argument("--seed", type=int, default=0, help="Seed of the random prompts and arrivals (default: %(default)s).")
    load = serve.add_argument_group("Load")
    load.add_argument("--request-rate", type=float, default=float("inf"),
                      help="Requests per second, sent as a Poisson process; inf sends them all at once "
                      "(default: %(default)s).")
    load.add_argument("--burstiness", type=float, default=1.0,
                      help="Arrival burstiness: 1 is Poisson, below 1 burstier, above 1 more regular "
                      "(default: %(default)s).")
    load.add_argument("--max-concurrency", type=_positive_int, default=None, help="The most requests in flight at once.")
    report = serve.add_argument_group("Results")
    report.add_argument("--metric-percentiles", type=_percentiles, default=[99.0], metavar="P[,P...]",
                        help="Percentiles of each latency to report, comma-separated (default: 99).")
    report.add_argument("--save-result", action="store_true", help="Save the results to a JSON file.")
    report.add_argument("--result-dir", default=None, help="Directory of the JSON file (default: the current one).")
    report.add_argument("--result-filename", default=None,
                        help="Name of the JSON file (default: <backend>-<rate>qps[-concurrency<n>]-<model>-<date>.json).")
    report.add_argument("--plot", metavar="FILE.png", default=None,
                        help="Draw histograms of TTFT, TPOT, ITL and end-to-end latency into this image "
                        "(needs matplotlib: pip install 'fw[bench]').")
    serve.set_defaults(handler=_lazy_handler("bench_serve", "run_bench_serve"))

"""The subcommands' parsers, and the commands later versions implement (chat, complete,
bench serve, run-batch), which parse and check their options and then say they are not available.
``fw bench throughput`` and ``fw bench latency`` run :mod:`fw.core.entrypoints.bench`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from fw.core.config import ENGINE_CONFIG_CLASSES, ConfigBase, ConfigError, EngineConfig
from fw.core.config.args import FwArgumentParser, add_config_arguments, values_from_namespace
from fw.core.entrypoints.help import EngineHelpAction
from fw.core.errors import FwError

if TYPE_CHECKING:
    from fw.core.plugins import Plugins

Handler = Callable[[argparse.Namespace, "Plugins"], int]

DEFAULT_API_URL = "http://localhost:8000/v1"


class CommandNotAvailableError(FwError):
    """The command exists and its options parse, but this fw version does not implement it yet."""


def not_available(what: str) -> NoReturn:
    raise CommandNotAvailableError(f"{what} is not available in this fw version yet")


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


def _check_engine_options(what: str) -> Handler:
    def handler(args: argparse.Namespace, plugins: Plugins) -> int:
        EngineConfig.from_values(config_values(args, ENGINE_CONFIG_CLASSES))
        not_available(what)

    return handler


def _client_only(what: str) -> Handler:
    def handler(args: argparse.Namespace, plugins: Plugins) -> int:
        not_available(what)

    return handler


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


def add_client_commands(subparsers: Any) -> None:
    """``fw chat`` and ``fw complete``: clients of a running server."""
    chat = subparsers.add_parser(
        "chat", help="Chat with a running fw server.", description="Chat with a model served by `fw serve`."
    )
    _add_client_options(chat, system_prompt=True)
    chat.set_defaults(handler=_client_only("`fw chat`"))
    complete = subparsers.add_parser(
        "complete",
        help="Complete prompts with a running fw server.",
        description="Send prompts to the completions API of a model served by `fw serve`.",
    )
    _add_client_options(complete, system_prompt=False)
    complete.set_defaults(handler=_client_only("`fw complete`"))


def add_run_batch_command(subparsers: Any, plugins: Plugins) -> None:
    parser = add_engine_parser(
        subparsers, "run-batch", plugins=plugins,
        help="Run a file of OpenAI batch requests offline.",
        description="Run the requests of an OpenAI batch file (JSON lines) and write the responses.",
    )
    files = parser.add_option_group("BatchFiles", "Where the batch requests come from and where the responses go.")
    # Not argparse-required, so that a --config file may give them too.
    files.add_argument("-i", "--input-file", help="The batch requests, one JSON object per line (a path). Required.")
    files.add_argument("-o", "--output-file", help="Where to write the responses, one JSON object per line. Required.")
    check_engine = _check_engine_options("`fw run-batch`")

    def handler(args: argparse.Namespace, plugins: Plugins) -> int:
        if args.input_file is None or args.output_file is None:
            raise ConfigError("fw run-batch needs -i/--input-file and -o/--output-file")
        return check_engine(args, plugins)

    parser.set_defaults(handler=handler)


def _bench_handler(name: str) -> Handler:
    """A handler that imports the benchmarks (torch, transformers) only when one runs."""

    def handler(args: argparse.Namespace, plugins: Plugins) -> int:
        from fw.core.entrypoints import bench

        return getattr(bench, name)(args, plugins)

    return handler


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
    latency.set_defaults(handler=_bench_handler("run_latency"))

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
    throughput.set_defaults(handler=_bench_handler("run_throughput"))

    serve = kinds.add_parser(
        "serve", help="Load-test a running server.",
        description="Send requests to a running OpenAI-compatible server and measure latency and throughput.",
    )
    serve.add_argument("--base-url", default="http://localhost:8000", help="The server's URL (default: %(default)s).")
    serve.add_argument("--endpoint", default="/v1/completions", help="API path to send requests to (default: %(default)s).")
    serve.add_argument("--model", default=None, help="The model to ask for. Defaults to the first model the server lists.")
    serve.add_argument("--dataset-name", "--dataset", dest="dataset_name", choices=["random"], default="random",
                       help="Where prompts come from (default: %(default)s).")
    serve.add_argument("--num-prompts", type=_positive_int, default=1000, help="Number of requests (default: %(default)s).")
    serve.add_argument("--random-input-len", type=_positive_int, default=1024, help="Prompt tokens per random request (default: %(default)s).")
    serve.add_argument("--random-output-len", type=_positive_int, default=128, help="Generated tokens per random request (default: %(default)s).")
    serve.add_argument("--request-rate", type=float, default=float("inf"),
                       help="Requests per second, sent as a Poisson process; inf sends them all at once (default: %(default)s).")
    serve.add_argument("--max-concurrency", type=_positive_int, default=None, help="The most requests in flight at once.")
    serve.add_argument("--seed", type=int, default=0, help="Seed of the random prompts (default: %(default)s).")
    serve.add_argument("--save-result", action="store_true", help="Save the results to a JSON file.")
    serve.add_argument("--plot", action="store_true", help="Plot latencies over time into an image next to the results.")
    serve.set_defaults(handler=_client_only("`fw bench serve`"))

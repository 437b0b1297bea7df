"""The ``fw`` command.

``fw -v``/``fw --version`` answers before anything else is imported (no plugins, no torch).
Every other command loads the plugins first, because the engine options' choices
(``--quantization``, ``--load-format``, ``--device``, parsers) come from them.

Errors the user can fix print one line, ``fw: error: <message>``, and exit non-zero
(2 for usage and config errors, 1 for the rest); only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Sequence

from fw.core.config.base import ConfigError
from fw.core.errors import FwError

if TYPE_CHECKING:
    from fw.core.config.args import FwArgumentParser
    from fw.core.plugins import Plugins

USAGE_ERROR = 2


def build_parser(plugins: Plugins) -> FwArgumentParser:
    """The whole ``fw`` parser; the plugins supply the choices of the plugin-backed options."""
    from fw.core.config import SERVER_CONFIG_CLASSES
    from fw.core.config.args import FwArgumentParser
    from fw.entrypoints import collect_env, commands, plugins_cmd, serve
    from fw import __version__

    parser = FwArgumentParser(
        prog="fw",
        description="fw: an LLM inference and serving engine with an OpenAI-compatible API, built from plugins.",
        epilog="Run `fw <command> --help` for a command's options.",
    )
    parser.add_argument("-v", "--version", action="version", version=f"fw {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve_parser = commands.add_engine_parser(
        subparsers, "serve", plugins=plugins, classes=SERVER_CONFIG_CLASSES, model_positional=True,
        help="Serve a model through the OpenAI-compatible API.",
        description="Serve a model through the OpenAI-compatible HTTP API. Without MODEL, fw serves its "
        "built-in default model.",
    )
    serve_parser.set_defaults(handler=serve.run_serve)
    commands.add_client_commands(subparsers)
    commands.add_bench_command(subparsers, plugins)
    env_parser = subparsers.add_parser(
        "collect-env", help="Print facts about this machine for a bug report.",
        description="Print the OS, Python, package versions, devices, plugins and fw's environment variables.",
    )
    env_parser.set_defaults(handler=collect_env.run_collect_env)
    commands.add_run_batch_command(subparsers, plugins)
    plugins_cmd.add_plugins_command(subparsers)
    return parser


def parse_command_line(parser: FwArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, applying ``--config FILE`` between the defaults and the command line."""
    from fw.core.config.args import apply_config_file

    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        # The file's values become defaults and the command line is parsed again,
        # so that the command line wins over the file and the file over the defaults.
        apply_config_file(args.command_parser, args.config)
        args = parser.parse_args(argv)
    return args


def _run(argv: list[str], plugins: Plugins | None) -> int:
    if plugins is None:
        from fw.core.plugins import load_plugins

        plugins = load_plugins()
    args = parse_command_line(build_parser(plugins), argv)
    return args.handler(args, plugins)


def _error(message: str) -> None:
    print(f"fw: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, *, plugins: Plugins | None = None) -> int:
    """Run ``fw`` with ``argv`` (default: the process's arguments) and return the exit code.

    ``plugins`` replaces the plugins loaded from the entry points (tests, embedding).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-v"], ["--version"]):
        from fw import __version__

        print(f"fw {__version__}")
        return 0
    try:
        return _run(argv, plugins)
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE_ERROR)
    except ConfigError as exc:
        _error(str(exc))
        return USAGE_ERROR
    except FwError as exc:
        _error(str(exc))
        return 1

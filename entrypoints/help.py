"""``--help`` for the commands that take engine options, shaped like vLLM's.

- ``--help``: usage, the basic options and the list of option groups;
- ``--help=all``: every option;
- ``--help=<group>``: one group, any case (``--help=cacheconfig``);
- ``--help=<text>``: every option whose name contains the text, ``_`` and ``-`` alike
  (``--help=max_model`` shows ``--max-model-len``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from fw.core.config.args import FwArgumentParser

HELP_METAVAR = "GROUP|all|TEXT"


class EngineHelpAction(argparse.Action):
    """``-h/--help[=TOPIC]``: prints the help for TOPIC and exits."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest=dest,
            default=argparse.SUPPRESS,
            nargs="?",
            metavar=HELP_METAVAR,
            help="Show help: the option groups; with =all every option; with =<group> one group "
            "(e.g. --help=ModelConfig); with =<text> the options whose name contains the text "
            "(e.g. --help=max-model-len).",
        )

    def __call__(
        self, parser: FwArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        # Only ever added to FwArgumentParsers (the parsers that take engine options).
        text = format_help_topic(parser, values)
        if text is None:
            groups = ", ".join(parser.option_groups)
            parser.error(f"--help={values} matches no option group and no option; the groups are: {groups} (or use --help=all)")
        sys.stdout.write(text)
        parser.exit(0)


def format_help_topic(parser: FwArgumentParser, topic: str | None) -> str | None:
    """The help text for ``--help[=topic]``, or None when nothing matches ``topic``."""
    if topic is None:
        return format_basic_help(parser)
    if topic.lower() == "all":
        return parser.format_help()
    by_lower = {title.lower(): title for title in parser.option_groups}
    if topic.lower() in by_lower:
        title = by_lower[topic.lower()]
        return _format_sections(parser, [(title, parser.option_groups[title].description, parser.group_actions(title))])
    return format_matching_options(parser, topic)


def _basic_actions(parser: FwArgumentParser) -> list[argparse.Action]:
    grouped = {id(action) for title in parser.option_groups for action in parser.group_actions(title)}
    # parser._actions: every action in the order added; those in no option group are the basic ones.
    return [action for action in parser._actions if id(action) not in grouped]


def _format_sections(
    parser: FwArgumentParser,
    sections: list[tuple[str, str | None, list[argparse.Action]]],
    usage: bool = True,
) -> str:
    formatter = parser._get_formatter()
    if usage:
        formatter.add_usage(parser.usage, [], [])
    for title, description, actions in sections:
        formatter.start_section(title)
        formatter.add_text(description)
        formatter.add_arguments(actions)
        formatter.end_section()
    return formatter.format_help()


def format_basic_help(parser: FwArgumentParser) -> str:
    """Usage, description, positional and basic options, then the list of option groups."""
    basic = _basic_actions(parser)
    positionals = [action for action in basic if not action.option_strings]
    optionals = [action for action in basic if action.option_strings]
    formatter = parser._get_formatter()
    formatter.add_usage(parser.usage, [], [])
    formatter.add_text(parser.description)
    for title, actions in (("positional arguments", positionals), ("options", optionals)):
        if actions:
            formatter.start_section(title)
            formatter.add_arguments(actions)
            formatter.end_section()
    text = formatter.format_help()
    width = max((len(title) for title in parser.option_groups), default=0) + 2
    lines = ["option groups (show one with --help=<group>, e.g. --help=" + next(iter(parser.option_groups), "") + "):"]
    for title, group in parser.option_groups.items():
        lines.append(f"  {title:<{width}}{group.description or ''}")
    lines += [
        "",
        "Use --help=all to show every option, --help=<group> to show one group (any case), or",
        "--help=<text> to show the options whose name contains <text>, with _ and - alike",
        "(e.g. --help=max_model shows --max-model-len).",
    ]
    return text + "\n" + "\n".join(lines) + "\n"


def _normalise(text: str) -> str:
    return text.lower().replace("_", "-").lstrip("-")


def format_matching_options(parser: FwArgumentParser, text: str) -> str | None:
    """The options whose flag contains ``text`` (``_`` and ``-`` alike), under their group titles."""
    wanted = _normalise(text)
    if not wanted:
        return None

    def matches(action: argparse.Action) -> bool:
        names = list(action.option_strings) or [action.dest]
        return any(wanted in _normalise(name) for name in names)

    sections = []
    basic = [action for action in _basic_actions(parser) if matches(action)]
    if basic:
        sections.append(("options", None, basic))
    for title, group in parser.option_groups.items():
        found = [action for action in parser.group_actions(title) if matches(action)]
        if found:
            sections.append((title, group.description, found))
    if not sections:
        return None
    return _format_sections(parser, sections)

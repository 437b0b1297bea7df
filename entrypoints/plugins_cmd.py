"""``fw plugins list [--json]``: every plugin fw found, what it provides, and what went wrong.

Works without a GPU and imports no kernels: listing only loads the plugin modules and
calls their registering hooks.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from fw.core.plugins import PluginRecord, Plugins

COLUMNS = ("NAME", "DISTRIBUTION", "MODULE", "STATUS", "PROVIDES")


def add_plugins_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plugins", help="List the installed plugins.", description="Inspect fw's plugins (entry-point group fw.plugins)."
    )
    actions = parser.add_subparsers(dest="plugins_command", metavar="ACTION", required=True)
    list_parser = actions.add_parser(
        "list", help="List every plugin with its status and what it provides.",
        description="List every plugin: its distribution, module, status (loaded, broken, blocked, "
        "disabled) and what it provides. Broken plugins show their error.",
    )
    list_parser.add_argument("--json", action="store_true", help="Print the records as JSON.")
    list_parser.set_defaults(handler=run_plugins_list)


def run_plugins_list(args: argparse.Namespace, plugins: Plugins) -> int:
    if args.json:
        print(json.dumps([record.as_dict() for record in plugins.records], indent=2))
    else:
        sys.stdout.write(format_plugin_table(plugins.records))
        for message in plugins.conflicts():
            print(f"conflict: {message}")
    return 0


def _row(record: PluginRecord) -> list[str]:
    dist = f"{record.distribution} {record.version}".strip()
    return [record.name, dist, record.module, record.status, ""]


def format_plugin_table(records: Sequence[PluginRecord]) -> str:
    """A table with one row per plugin; extra provided items and errors go on the lines below."""
    if not records:
        return "no plugins found (entry-point group fw.plugins)\n"
    rows = [_row(record) for record in records]
    widths = [max(len(COLUMNS[i]), *(len(row[i]) for row in rows)) for i in range(len(COLUMNS) - 1)]
    indent = sum(width + 2 for width in widths)

    def line(cells: Sequence[str]) -> str:
        return "".join(cell.ljust(width + 2) for cell, width in zip(cells, widths)) + cells[-1]

    lines = [line(COLUMNS)]
    for record, row in zip(records, rows):
        provides = record.provides or ["-"]
        lines.append(line(row[:-1] + [provides[0]]).rstrip())
        lines += [" " * indent + item for item in provides[1:]]
        if record.error:
            lines.append(f"    error: {record.error}")
    return "\n".join(lines) + "\n"

"""What a command prints: a table for people (the default), JSON or YAML for scripts.

A command builds plain data (a list of rows, or one object) and hands it to render(); the table's
headers are the rows' keys in kubectl's style ("lastDecision" -> "LAST DECISION"), a missing value "-".
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import yaml

from habitat_operator.formatting import text_table

FORMATS = ("table", "json", "yaml")
_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

Row = Mapping[str, Any]


def render(data: Sequence[Row] | Row, output: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    if output == "json":
        out.write(json.dumps(data, indent=2, default=str) + "\n")
    elif output == "yaml":
        out.write(yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True))
    elif isinstance(data, Mapping):
        out.write(table([{"field": key, "value": value} for key, value in data.items()]))
    else:
        out.write(table(data))


def render_sections(sections: Mapping[str, Sequence[Row]], output: str, stream: TextIO | None = None) -> None:
    """Several tables, each under its title ("scalePolicies" -> "SCALE POLICIES"); empty ones left out.
    JSON and YAML hold every section, empty ones too, so scripts find each key."""
    out = stream or sys.stdout
    if output != "table":
        render(sections, output, out)
        return
    shown = [f"{header_of(title)}\n{table(rows)}" for title, rows in sections.items() if rows]
    out.write("\n".join(shown))


def table(rows: Sequence[Row]) -> str:
    """The rows in columns (the union of their keys, in first-seen order); "" when there are none."""
    if not rows:
        return ""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    header = [header_of(column) for column in columns]
    return text_table([header, *([cell(row.get(column)) for column in columns] for row in rows)])


def header_of(key: str) -> str:
    return _WORD.sub(" ", key).upper()


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return " ".join(text.split())  # a multi-line message stays on its row


def _plain(data: Any) -> Any:
    """yaml.safe_dump takes only builtin types: a Mapping subclass or a tuple becomes dict/list."""
    if isinstance(data, Mapping):
        return {str(key): _plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(value) for value in data]
    return data

"""What ``gaggle`` prints: tables and details for people, raw JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr); wide when writing to a pipe so tables do not wrap."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty():
        width = int(os.environ.get("COLUMNS", "0") or 0) or 200
    return Console(file=stream, width=width, soft_wrap=False, highlight=False)


def dump_json(value: Any, *, compact: bool = False) -> str:
    """``value`` as JSON text: indented, or on one line with ``compact``."""
    if compact:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value, ensure_ascii=False, indent=2)


def print_json(value: Any, *, compact: bool = False) -> None:
    """Write ``value`` as JSON on stdout, and nothing else."""
    sys.stdout.write(dump_json(value, compact=compact) + "\n")
    sys.stdout.flush()


def when(value: Any) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC as given); ``-`` for none."""
    if not value:
        return "-"
    text = str(value).replace("T", " ")
    return text[:19] if len(text) >= 19 else text


def size(value: Any) -> str:
    """A byte count for people: ``98.4 kB``."""
    if value is None:
        return "-"
    n = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop always returns


def text(value: Any) -> str:
    """Any value as table text; ``-`` for none or empty."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items())
    return str(value)


def table(console: Console, rows: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    """Print ``rows`` as a table with ``columns`` (header, getter)."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header, _ in columns:
        grid.add_column(header, overflow="fold")
    for row in rows:
        grid.add_row(*(Text(text(get(row))) for _, get in columns))
    console.print(grid)


def details(console: Console, pairs: Iterable[tuple[str, Any]]) -> None:
    """Print ``name  value`` lines, names aligned (bold on a terminal)."""
    items = [(name, text(value)) for name, value in pairs]
    width = max((len(name) for name, _ in items), default=0)
    for name, value in items:
        console.print(Text.assemble((name.ljust(width), "bold"), "  ", value), soft_wrap=True)


def counters_line(counters: Mapping[str, Any]) -> str:
    """``3/10 success, 1 failure, 2 running, 4 pending (3 queued)``.

    Queued (of the pending, those whose wave started and wait for a slot under the tenant's cap
    on updates in flight) and canceled are shown only when there are any; so are the successes
    still in their soak time and the failures that timed out or rolled back.
    """
    line = f"{counters.get('success', 0)}/{counters.get('total', 0)} success"
    if counters.get("soaking"):
        line += f" ({counters['soaking']} soaking)"
    line += f", {counters.get('failure', 0)} failure"
    kinds = [
        f"{counters[key]} {name}"
        for key, name in (("timed_out", "timed out"), ("rolled_back", "rolled back"))
        if counters.get(key)
    ]
    if kinds:
        line += f" ({', '.join(kinds)})"
    line += f", {counters.get('running', 0)} running, {counters.get('pending', 0)} pending"
    if counters.get("queued"):
        line += f" ({counters['queued']} queued)"
    if counters.get("canceled"):
        line += f", {counters['canceled']} canceled"
    return line

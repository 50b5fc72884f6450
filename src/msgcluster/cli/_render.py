"""Output: one JSON document (``--json``), or text for people.

Text goes through rich (tables, progress bars) when it is installed and
stdout is a terminal; otherwise it is plain, aligned text that scripts and
pipes can read. ``--json`` never depends on rich.
"""

from __future__ import annotations

import base64
import datetime as dt
import sys
from typing import TYPE_CHECKING, Any, Final, TextIO

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["ClusterProgress", "Output", "TableWriter", "body_text", "iso_time"]

_ENCODER: Final = msgspec.json.Encoder()
# Rows per rich table when a listing is streamed: memory stays bounded.
_PAGE_ROWS: Final = 100
_MIN_LAST_COLUMN: Final = 12


def iso_time(seconds: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC time with milliseconds (None stays None)."""
    if seconds is None:
        return None
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body_text(body: bytes) -> tuple[str, str]:
    """(text, encoding): the body as UTF-8 text, or base64 if it is not UTF-8."""
    try:
        return body.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict | list):
        return _ENCODER.encode(value).decode()
    return str(value)


def _rich_console(stream: TextIO) -> Console | None:
    """A rich console on ``stream`` if rich is installed and it is a terminal."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(file=stream, highlight=False, soft_wrap=False)
    return console if console.is_terminal else None


class Output:
    """Where a command writes its result (stdout) and notes (stderr)."""

    def __init__(self, json_mode: bool, stdout: TextIO | None = None) -> None:
        self.json = json_mode
        self.stdout = stdout or sys.stdout
        self._console: Console | None = None
        self._console_checked = False

    @property
    def console(self) -> Console | None:
        """rich's console for text output, or None (plain text)."""
        if not self._console_checked:
            self._console_checked = True
            if not self.json:
                self._console = _rich_console(self.stdout)
        return self._console

    # ----------------------------------------------------------------- JSON

    def document(self, doc: Any, *, indent: int = 0) -> None:
        """Write one JSON document (and a newline)."""
        encoded = _ENCODER.encode(doc)
        if indent:
            encoded = msgspec.json.format(encoded, indent=indent)
        self.write(encoded.decode() + "\n")

    def write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    # ----------------------------------------------------------------- text

    def line(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            self.write(text + "\n")

    @staticmethod
    def note(text: str) -> None:
        """A remark for people (cost, hints): stderr, so stdout stays the result."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def fields(self, rows: Sequence[tuple[str, object]], title: str | None = None) -> None:
        """``name: value`` lines."""
        console = self.console
        if console is not None:
            from rich.table import Table
            from rich.text import Text

            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column()
            for name, value in rows:
                # Text, not str: a body like "[red]" is data, never rich markup.
                grid.add_row(Text(name), Text(_cell(value)))
            if title:
                console.print(title, style="bold underline", markup=False)
            console.print(grid)
            return
        if title:
            self.write(title + "\n")
        width = max((len(name) for name, _ in rows), default=0)
        for name, value in rows:
            self.write(f"{name + ':':<{width + 1}} {_cell(value)}\n")

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
        """A whole table; returns the number of rows."""
        writer = self.table_writer(columns)
        for row in rows:
            writer.add(row)
        return writer.close()

    def table_writer(self, columns: Sequence[str]) -> TableWriter:
        """A table written as rows arrive (a page at a time): for long listings."""
        return TableWriter(self, columns)


class TableWriter:
    """Rows are buffered a page at a time; column widths come from the first page."""

    def __init__(self, out: Output, columns: Sequence[str]) -> None:
        self.out = out
        self.columns = list(columns)
        self.widths: list[int] | None = None
        self.buffer: list[list[str]] = []
        self.count = 0

    def add(self, row: Sequence[object]) -> None:
        self.buffer.append([_cell(value) for value in row])
        self.count += 1
        if len(self.buffer) >= _PAGE_ROWS:
            self._flush()

    def close(self) -> int:
        if self.buffer or self.widths is None:
            self._flush()
        return self.count

    def _flush(self) -> None:
        rows, self.buffer = self.buffer, []
        first = self.widths is None
        if self.widths is None:
            self.widths = [
                max([len(name), *(len(row[i]) for row in rows)])
                for i, name in enumerate(self.columns)
            ]
        console = self.out.console
        # Every page lines up with the first; the last column (a body, a URL)
        # takes what the terminal has left and is cut with an ellipsis. A
        # terminal too narrow for the other columns gets plain lines (which
        # wrap): ids are never cut.
        *leading, _ = self.widths
        left = 0 if console is None else console.width - sum(leading) - 2 * len(leading)
        if console is not None and left >= _MIN_LAST_COLUMN:
            from rich.table import Table
            from rich.text import Text

            table = Table(show_header=first, header_style="bold", box=None, pad_edge=False)
            for i, name in enumerate(self.columns):
                last = i == len(self.columns) - 1
                width = left if last else self.widths[i]
                table.add_column(name, width=width, no_wrap=True, overflow="ellipsis")
            for row in rows:
                table.add_row(*(Text(cell) for cell in row))
            console.print(table)
            return
        lines = [self._plain(self.columns)] if first else []
        lines.extend(self._plain(row) for row in rows)
        if lines:
            self.out.write("\n".join(lines) + "\n")

    def _plain(self, row: Sequence[str]) -> str:
        assert self.widths is not None
        cells = [
            cell if i == len(row) - 1 else f"{cell:<{self.widths[i]}}" for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()


class ClusterProgress:
    """A live progress bar (rich, on a terminal) or a line per change (plain)."""

    def __init__(self, out: Output, label: str) -> None:
        self.out = out
        self.label = label
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last = ""

    def __enter__(self) -> ClusterProgress:
        console = self.out.console
        if console is not None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=None, detail="")
        return self

    def update(self, *, status: str, done: int, total: int, detail: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                total=max(total, 1),
                completed=done,
                detail=f"{status}, {detail}",
            )
            return
        if self.out.json:
            return
        line = f"{status}: {done}/{total} counted, {detail}"
        if line != self._last:
            self._last = line
            self.out.write(line + "\n")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

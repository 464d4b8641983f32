"""What the command modules share: exit codes, the error they raise, the context they
get, argument types, and rendering (rich tables and progress on the terminal, plain JSON
for machines).

Results go to stdout; progress and errors go to stderr, so `trunkline ... --json | jq`
and scripts that read stdout see only the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from trunkline.core.settings import Settings, SettingsError, check_bootstrap
from trunkline.stack.base import Step

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
LOGLEVELS = ["debug", "info", "warning", "error"]

#: the subparsers object command modules add their commands to
Subparsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser] is private


class CliError(Exception):
    """Stop the command with a message on stderr and exit status `code`."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Context:
    settings: Settings
    #: no TRUNKLINE_KAFKA_BOOTSTRAP (or --bootstrap): up/down/status own the local broker
    manage_broker: bool


# -- argument types ----------------------------------------------------------------------
def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..65535")
    return value


def bootstrap_arg(text: str) -> str:
    try:
        return check_bootstrap(text, "--bootstrap")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_loglevel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loglevel", choices=LOGLEVELS, help="default: TRUNKLINE_LOG_LEVEL (info)")


def loglevel(args: argparse.Namespace, ctx: Context) -> str:
    """The service's log level: --loglevel, else TRUNKLINE_LOG_LEVEL."""
    return str(args.loglevel or ctx.settings.log_level)


# -- output ------------------------------------------------------------------------------
def _width(stream: TextIO) -> int | None:
    """Not a terminal (a pipe, a log): wide enough that lines are not cut or wrapped."""
    return 200 if not stream.isatty() and "COLUMNS" not in os.environ else None


def out() -> Console:
    return Console(width=_width(sys.stdout), highlight=False)


def err() -> Console:
    return Console(stderr=True, width=_width(sys.stderr), highlight=False)


def say(text: str = "") -> None:
    """A plain line on stdout (no markup: ids and paths print as they are)."""
    print(text, flush=True)


def print_json(data: Any, sort_keys: bool = False) -> None:
    """JSON on stdout, exactly (never wrapped or coloured)."""
    print(json.dumps(data, indent=2, sort_keys=sort_keys, default=str), flush=True)


class _RichStep:
    def __init__(self, progress: Progress, task: TaskID, total: int | None) -> None:
        self._progress = progress
        self._task = task
        self._total = total
        self._done = 0

    def advance(self, detail: str = "") -> None:
        self._done += 1
        count = f"{self._done}/{self._total}" if self._total else str(self._done)
        self._progress.update(self._task, advance=1, detail=escape(f"{count} {detail}".rstrip()))

    def update(self, detail: str) -> None:
        self._progress.update(self._task, detail=escape(detail))


class RichProgress:
    """The stack's Progress on stderr: a spinner and the elapsed time per step, a tick
    when it finished, a cross when it failed; finished steps stay listed."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            TextColumn("[dim]{task.fields[detail]}[/]"),
            TimeElapsedColumn(),
            console=console or err(),
        )

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    @contextmanager
    def step(self, what: str, total: int | None = None) -> Iterator[Step]:
        task = self._progress.add_task(escape(what), total=total, detail="")
        try:
            yield _RichStep(self._progress, task, total)
        except BaseException:
            self._progress.update(task, description=f"[red]✗ {escape(what)}[/]")
            self._progress.stop_task(task)
            raise
        self._progress.update(task, total=total or 1, completed=total or 1)
        self._progress.stop_task(task)

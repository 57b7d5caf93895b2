"""Where the commands write, and how a mistake the user can fix reaches them.

Messages (notes, progress, warnings, click's ``Error:`` line) go to stderr through
:data:`console`; results (tables, JSON, exports) go to stdout, so that they can be piped.
A mistake the user can fix (a bad file, a bad detector, an unreachable server) ends the
command with one line and exit status 1, never a traceback; a wrong command line exits
with 2 (:class:`click.UsageError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from detectors import DetectorError
from monitor.errors import AdvmonError, InspectUsageError
from schemas import SchemaError

__all__ = ["console", "file_option", "print_table", "user_errors"]

F = TypeVar("F", bound=Callable[..., Any])

#: Messages, on stderr. soft_wrap: long paths and commands stay on one line in logs and
#: pipes.
console = Console(stderr=True, highlight=False, soft_wrap=True)

_results = Console(highlight=False, soft_wrap=True)
#: Tables written to a file or a pipe are not cut to 80 columns.
_PIPE_WIDTH = 250


def print_table(table: Table) -> None:
    """Print a result table on stdout."""
    if _results.is_terminal:
        _results.print(table)
    else:
        Console(file=_results.file, width=_PIPE_WIDTH, highlight=False).print(table)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn errors a user can cause into one clear message instead of a traceback."""
    try:
        yield
    except InspectUsageError as exc:
        raise click.UsageError(str(exc)) from None
    except (AdvmonError, DetectorError, SchemaError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}") from None


def file_option(flag: str, dest: str, help: str, *, required: bool = False) -> Callable[[F], F]:
    """An option naming one file (never a folder), given to the command as a ``Path``."""
    return click.option(
        flag,
        dest,
        type=click.Path(dir_okay=False, path_type=Path),
        required=required,
        default=None,
        help=help,
    )

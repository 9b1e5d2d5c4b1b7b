"""How peftx's commands report what went wrong: a user's mistake (`PeftxError`, a full or
read-only disk) as `error: <message>` on one line and exit code 2, a diverged run as exit code 3, a run
stopped by a signal as 128 + N; paths given on the command line expanded as recipes expand theirs."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from peftx.errors import EXIT_DIVERGED, EXIT_USER_ERROR, Diverged, Interrupted, PeftxError
from peftx.util.echo import MESSAGE_CHARS, shorten
from peftx.util.files import storage_problem
from peftx.util.user_paths import expand_path

err = Console(stderr=True)


def one_line(e: BaseException) -> str:
    """An error's message as one printable line of at most about `MESSAGE_CHARS` characters (it may
    quote user data: control characters are escaped, a huge value loses its middle)."""
    return escape(shorten(str(e), MESSAGE_CHARS))


def print_error(e: PeftxError) -> None:
    """`error: <message>` on one line of stderr."""
    err.print(f"[red]error:[/] {one_line(e)}", highlight=False, soft_wrap=True)


def user_path(path: Path, what: str) -> Path:
    """A path from the command line with `~` and `$VAR` expanded, as in recipes (`what` names it)."""
    try:
        return expand_path(path)
    except ValueError as e:
        raise PeftxError(f"{what}: {e}") from None


def user_errors(fn):
    """Turn a PeftxError (or a full or read-only disk) into `error: <message>` and exit code 2; a diverged
    run into exit code 3; a run stopped by SIGINT or SIGTERM (after its checkpoint) into 130 or 143, as a
    shell reports them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Diverged as e:
            err.print(f"[red]diverged:[/] {one_line(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_DIVERGED) from None
        except PeftxError as e:
            print_error(e)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except Interrupted as e:
            err.print(f"[yellow]interrupted:[/] {one_line(e)}; continue with --resume", highlight=False)
            raise typer.Exit(128 + getattr(signal, e.signal_name, signal.SIGINT)) from None
        except OSError as e:
            problem = storage_problem(e)
            if problem is None:
                raise
            print_error(PeftxError(f"{problem}; make room (or choose a writable place), then run again"))
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper

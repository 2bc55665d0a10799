"""What every command shares: domain errors as one-line messages, signals as a stop event, logging."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
import unicodedata
from types import FrameType
from typing import Any, Callable, Iterator, TypeVar

import click

from shelfsight.edge_app.core.errors import ShelfsightError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


# Control (Cc), format (Cf: bidi overrides that reorder what is shown), surrogate (Cs) and line
# and paragraph separators (Zl, Zp).
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, keep: str = "") -> str:
    """`text` safe to print on a terminal: control characters shown as escapes (\\x1b, \\r, \\u202e).

    Every string that came from outside (names taught at kiosks, kiosk ids, their error
    messages, catalog fields) goes through this before it is printed: "\\x1b[2J" would clear
    the screen and "\\r" overwrite a line, so a name could fake a report. `keep`: characters
    to print as they are (a message's own newlines).
    """
    out = []
    for char in str(text):
        if char in keep or unicodedata.category(char) not in _UNPRINTABLE:
            out.append(char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def progress_option(func: F) -> F:
    """`--progress/--no-progress`, unset by default: resolve it with `wants_progress`."""
    return click.option(
        "--progress/--no-progress", default=None, help="Show progress bars (default: when stderr is a terminal)."
    )(func)


def wants_progress(flag: bool | None) -> bool:
    """An explicit --progress/--no-progress, else whether stderr is a terminal: bars in a log are noise."""
    return sys.stderr.isatty() if flag is None else flag


def domain_errors(func: F) -> F:
    """Turn a ShelfsightError into a one-line message (control characters escaped) and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShelfsightError as exc:
            raise click.ClickException(printable(exc, keep="\n")) from exc

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set `stop` instead of raising KeyboardInterrupt or killing the process.

    A long-running command (kiosk, HQ server) polls `stop` and shuts down between steps. An
    asynchronous KeyboardInterrupt can land inside a network library while it holds a lock, and
    the shutdown that follows then waits on that lock for ever.
    """

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

"""What every command shares: domain errors as one-line messages, signals as a stop event, logging."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from types import FrameType
from typing import Any, Callable, Iterator, TypeVar

import click

from shelfsight.edge_app.core.errors import ShelfsightError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


def domain_errors(func: F) -> F:
    """Turn a ShelfsightError into a one-line message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShelfsightError as exc:
            raise click.ClickException(str(exc)) from exc

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

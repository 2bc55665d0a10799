"""`shelfsight`: the one console command. Subcommands live beside the code they drive.

Commands only parse arguments, call the library and turn domain errors into
clean messages. Modules that need TensorFlow import it inside the command
function, so `shelfsight --help` and every edge command work without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import signal
import threading
from types import FrameType
from typing import Any, Callable, Iterator, TypeVar

import click

from edge_app.errors import ShelfsightError

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

# Each module exposes `COMMANDS`, a list of click commands or groups.
COMMAND_MODULES = (
    "train.cli",
    "convert.cli",
    "edge_app.eval_cli",
    "catalog.cli",
    "catalog.sync.cli",
    "edge_app.demo",
    "edge_app.kiosk_cli",
)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="shelfsight")
def cli(verbose: int) -> None:
    """shelfsight: visual product search for store kiosks, fully offline.

    \b
    Example:
      shelfsight demo            # the whole pipeline on built-in sample data
    """
    setup_logging(verbose)


def build_cli() -> click.Group:
    """The root group with every subcommand attached (idempotent; used by tests too)."""
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in module.COMMANDS:
            cli.add_command(command)
    return cli


def main() -> None:
    build_cli()(prog_name="shelfsight")

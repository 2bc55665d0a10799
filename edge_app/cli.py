"""`shelfsight`: the one console command. Subcommands live beside the code they drive.

Commands only parse arguments, call the library and turn domain errors into
clean messages. Modules that need TensorFlow import it inside the command
function, so `shelfsight --help` and every edge command work without it.
"""

from __future__ import annotations

import logging

import click

from shelfsight.catalog import cli as catalog_cli
from shelfsight.catalog.hq import cli as hq_cli
from shelfsight.convert import cli as convert_cli
from shelfsight.edge_app.core.clitools import setup_logging
from shelfsight.edge_app.demo import cli as demo_cli
from shelfsight.edge_app.evaluation import cli as evaluation_cli
from shelfsight.edge_app.kiosk import cli as kiosk_cli
from shelfsight.train import cli as train_cli

log = logging.getLogger(__name__)

# Each module exposes `COMMANDS`, a list of click commands or groups. The modules import only
# click at load time; TensorFlow, LiteRT and OpenCV load inside the commands that need them.
COMMAND_MODULES = (train_cli, convert_cli, evaluation_cli, catalog_cli, hq_cli, demo_cli, kiosk_cli)


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
    for module in COMMAND_MODULES:
        for command in module.COMMANDS:
            cli.add_command(command)
    for old, command, new in DEPRECATED_ALIASES:
        hq_cli.hq_group.add_command(_deprecated(command, old, new), old)
    return cli


# Kiosk-local operations moved from `shelfsight hq` to `shelfsight kiosk` in 0.2; the old names
# keep working, with a warning, for one release.
DEPRECATED_ALIASES = (
    ("seed-kiosk", kiosk_cli.seed_command, "shelfsight kiosk seed"),
    ("rollback-kiosk", kiosk_cli.rollback_command, "shelfsight kiosk rollback"),
)


def _deprecated(command: click.Command, old: str, new: str) -> click.Command:
    def callback(**kwargs: object) -> object:
        click.echo(f"warning: `shelfsight hq {old}` is deprecated; use `{new}`", err=True)
        assert command.callback is not None
        return command.callback(**kwargs)

    return click.Command(
        old, params=command.params, callback=callback, help=f"Deprecated alias of `{new}`.", hidden=True
    )


def main() -> None:
    build_cli()(prog_name="shelfsight")

"""`shelfsight kiosk`: run the kiosk (camera, recognition, page, HTTP API) from one config file."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shelfsight.edge_app.core.clitools import domain_errors, stop_on_signals
from shelfsight.edge_app.core.errors import ConfigError
from shelfsight.edge_app.kiosk.config import KioskConfig, load_config
from shelfsight.edge_app.kiosk.updates.releases import rollback, seed_release

if TYPE_CHECKING:
    from shelfsight.edge_app.kiosk.app import Kiosk

log = logging.getLogger(__name__)


def describe(config: KioskConfig) -> str:
    camera = config.camera
    where = (
        getattr(camera, "path", None)
        or getattr(camera, "device", None)
        or f"{getattr(camera, 'width', '')}x{getattr(camera, 'height', '')}"
    )
    return (
        f"model: {config.model.path or 'bundled default'} ({config.model.threads} threads)\n"
        f"catalog: {config.catalog.path}\n"
        f"camera: {camera.type} {where}\n"
        f"roi: x={config.roi.x} y={config.roi.y} w={config.roi.width} h={config.roi.height}\n"
        f"verification: {'on' if config.recognition.verify else 'off'}, "
        f"threshold: {config.recognition.unknown_threshold if config.recognition.unknown_threshold is not None else 'from catalog'}\n"
        f"web: {'http://%s:%d' % (config.web.host, config.web.port) if config.web.enabled else 'off'}"
    )


def staff_problems(config: KioskConfig) -> list[str]:
    """What keeps the staff credential the config names from being used (empty when none is named)."""
    from shelfsight.edge_app.web.auth import StaffCredential

    if not config.web.enabled or config.web.staff_credential is None:
        return []
    try:
        StaffCredential.load(config.web.staff_credential)
    except ConfigError as exc:
        return [f"web.staff_credential: {exc}"]
    return []


def run_kiosk(config: KioskConfig, stop: threading.Event) -> None:
    """Run until `stop` is set. The page keeps serving the last state if the camera source ends."""
    from shelfsight.edge_app.kiosk.build import build_kiosk
    from shelfsight.edge_app.kiosk.watch import CatalogWatcher
    from shelfsight.edge_app.web.app import MULTIPART_SLACK, WebServer, create_app
    from shelfsight.edge_app.web.auth import StaffCredential

    web = config.web
    staff = StaffCredential.load(web.staff_credential) if web.staff_credential is not None else None

    kiosk = build_kiosk(config)
    with kiosk, ExitStack() as running:
        # `shelfsight catalog remove/add/build` on the kiosk's file is picked up without a restart.
        running.enter_context(CatalogWatcher(kiosk, config.catalog.watch_interval_s))
        if config.sync is not None and config.sync.enabled:
            running.enter_context(start_sync(config, kiosk))
        if web.enabled:
            app = create_app(kiosk, web, staff=staff)
            server = WebServer(
                app,
                web.host,
                web.port,
                threads=web.threads,
                connection_timeout_s=web.connection_timeout_s,
                connection_limit=web.connection_limit,
                max_body_bytes=web.max_upload_bytes + MULTIPART_SLACK,
            )
            running.enter_context(server)
            click.echo(f"kiosk page at {server.url}")
        stop.wait()


def start_sync(config: KioskConfig, kiosk: "Kiosk") -> Any:
    """HQ's catalog deltas reload the kiosk's index; a model release swaps model and catalog together."""
    from shelfsight.edge_app.kiosk.updates.worker import KioskSync

    assert config.sync is not None
    sync = KioskSync(
        config.sync,
        config.catalog.sync_folder,
        on_applied=kiosk.reload_catalog,
        on_release=lambda model, catalog: kiosk.switch_release(model, catalog, config),
        metrics=lambda: {"fps": kiosk.recognition_rate.rate},
    )
    kiosk.connect_sync(sync)  # enrollments to HQ, events to the store, sync's health on /health
    return sync


@click.group("kiosk", invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Kiosk config file (.toml or .json).",
)
@click.option(
    "--validate-config",
    is_flag=True,
    help="Only check the config file and that the model, catalog, camera file/folder and sync keys it names "
    "are usable; print what it sets up (exit status 1 if anything is wrong).",
)
@click.pass_context
@domain_errors
def kiosk_command(ctx: click.Context, config_path: Path | None, validate_config: bool) -> None:
    """Run the store kiosk: camera -> recognition -> local web page and HTTP API.

    Without a subcommand, runs the kiosk described by --config. The subcommands
    act on a kiosk's data folder (its releases) while the kiosk is stopped.

    \b
    Examples:
      shelfsight kiosk --config /etc/shelfsight/kiosk.toml
      shelfsight kiosk --config kiosk.toml --validate-config
      shelfsight kiosk seed --data-dir /var/lib/shelfsight --model model.tflite --catalog master.db
    """
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("--config is required to run the kiosk")
    config = load_config(config_path)
    if validate_config:
        from shelfsight.edge_app.kiosk.checks import check_setup, describe_sync

        shown = f"{describe(config)}\n{describe_sync(config)}"
        problems = check_setup(config) + staff_problems(config)
        if problems:
            raise ConfigError(
                f"{config_path}: parses, but the kiosk could not serve:\n"
                + "\n".join(f"  {p}" for p in problems)
                + f"\n{shown}"
            )
        click.echo(f"{config_path}: valid\n{shown}")
        return
    with stop_on_signals(threading.Event()) as stop:
        run_kiosk(config, stop)


@kiosk_command.command("seed")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="The kiosk's data folder.")
@click.option(
    "--model", required=True, type=click.Path(exists=True, dir_okay=False), help="The .tflite (with sidecar)."
)
@click.option(
    "--catalog",
    "catalog_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A catalog built with that model.",
)
@domain_errors
def seed_command(data_dir: str, model: str, catalog_path: str) -> None:
    """Install a model + catalog pair as a kiosk's first release, so sync has a base to update.

    \b
    Example:
      shelfsight kiosk seed --data-dir /var/lib/shelfsight --model model.tflite --catalog master.db
    """
    model_path, catalog = seed_release(data_dir, model, catalog_path)
    click.echo(f"current release: {model_path.parent.name[:12]} ({catalog})")


@kiosk_command.command("rollback")
@click.option(
    "--data-dir", required=True, type=click.Path(exists=True, file_okay=False), help="The kiosk's data folder."
)
@domain_errors
def rollback_command(data_dir: str) -> None:
    """Switch a kiosk back to its previous model + catalog pair (restart the kiosk afterwards).

    \b
    Example:
      shelfsight kiosk rollback --data-dir /var/lib/shelfsight
    """
    model_path, _ = rollback(data_dir)
    click.echo(f"current release: {model_path.parent.name[:12]}")


@kiosk_command.command("set-staff-pin")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, path_type=Path, dir_okay=False),
    help="Kiosk config file; its web.staff_credential names the file to write.",
)
@click.option(
    "--pin-file",
    type=click.File("r"),
    help="Read the PIN from the first line of this file ('-': standard input) instead of asking twice.",
)
@domain_errors
def set_staff_pin_command(config_path: Path, pin_file: Any) -> None:
    """Set the staff PIN that unlocks teaching (stored as a salted scrypt hash, mode 0600).

    Restart the kiosk afterwards. The PIN is at least 6 characters.

    \b
    Examples:
      shelfsight kiosk set-staff-pin --config /etc/shelfsight/kiosk.toml
      printf '%s\\n' "$PIN" | shelfsight kiosk set-staff-pin --config kiosk.toml --pin-file -
    """
    from shelfsight.edge_app.web.auth import write_staff_credential

    target = load_config(config_path).web.staff_credential
    if target is None:
        raise ConfigError(f"{config_path}: set web.staff_credential to the file the PIN's hash goes in")
    if pin_file is not None:
        pin = pin_file.readline().rstrip("\r\n")
    else:
        pin = click.prompt("Staff PIN", hide_input=True, confirmation_prompt=True)
    click.echo(f"staff PIN set: {write_staff_credential(target, pin)}")


COMMANDS: list[click.Command] = [kiosk_command]

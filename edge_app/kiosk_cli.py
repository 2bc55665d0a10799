"""`shelfsight kiosk`: run the kiosk (camera, recognition, page, HTTP API) from one config file."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge_app.cli import domain_errors, stop_on_signals
from edge_app.config import KioskConfig, load_config

if TYPE_CHECKING:
    from edge_app.kiosk import Kiosk

log = logging.getLogger(__name__)


def describe(config: KioskConfig) -> str:
    camera = config.camera
    where = getattr(camera, "path", None) or getattr(camera, "device", None) or f"{getattr(camera, 'width', '')}x{getattr(camera, 'height', '')}"
    return (
        f"model: {config.model.path or 'bundled default'} ({config.model.threads} threads)\n"
        f"catalog: {config.catalog.path}\n"
        f"camera: {camera.type} {where}\n"
        f"roi: x={config.roi.x} y={config.roi.y} w={config.roi.width} h={config.roi.height}\n"
        f"verification: {'on' if config.recognition.verify else 'off'}, "
        f"threshold: {config.recognition.unknown_threshold if config.recognition.unknown_threshold is not None else 'from catalog'}\n"
        f"web: {'http://%s:%d' % (config.web.host, config.web.port) if config.web.enabled else 'off'}"
    )


def run_kiosk(config: KioskConfig, stop: threading.Event) -> None:
    """Run until `stop` is set. The page keeps serving the last state if the camera source ends."""
    from edge_app.kiosk import build_kiosk
    from edge_app.web import WebServer, create_app

    kiosk = build_kiosk(config)
    with kiosk, ExitStack() as running:
        if config.sync is not None and config.sync.enabled:
            running.enter_context(start_sync(config, kiosk))
        if config.web.enabled:
            web = config.web
            app = create_app(kiosk, web.max_upload_bytes, currency=web.currency, locale=web.locale)
            server = WebServer(app, web.host, web.port)
            running.enter_context(server)
            click.echo(f"kiosk page at {server.url}")
        stop.wait()


def start_sync(config: KioskConfig, kiosk: "Kiosk") -> Any:
    """HQ's catalog deltas reload the kiosk's index; a model release swaps model and catalog together."""
    from catalog.sync.kiosk import KioskSync

    assert config.sync is not None
    sync = KioskSync(
        config.sync,
        config.catalog.sync_folder,
        on_applied=kiosk.reload_catalog,
        on_release=lambda model, catalog: kiosk.switch_release(model, catalog, config),
        metrics=lambda: {"fps": kiosk.recognition_rate.rate},
    )
    kiosk.connect_sync(sync)  # products a clerk teaches go to HQ's enrollment inbox
    return sync


@click.command("kiosk")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Kiosk config file (.toml or .json).")
@click.option("--validate-config", is_flag=True, help="Only check the config file and print what it sets up.")
@domain_errors
def kiosk_command(config_path: Path, validate_config: bool) -> None:
    """Run the store kiosk: camera -> recognition -> local web page and HTTP API.

    \b
    Examples:
      shelfsight kiosk --config /etc/shelfsight/kiosk.toml
      shelfsight kiosk --config kiosk.toml --validate-config
    """
    config = load_config(config_path)
    if validate_config:
        click.echo(f"{config_path}: valid\n{describe(config)}")
        return
    with stop_on_signals(threading.Event()) as stop:
        run_kiosk(config, stop)


COMMANDS: list[click.Command] = [kiosk_command]

"""`shelfsight hq ...`: signing keys, publishing the master catalog, the fleet's status, enrollments."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, get_args

import click
from pydantic import ValidationError

from shelfsight.catalog.sync.limits import MAX_PACKET_BYTES, largest_payload
from shelfsight.catalog.sync.topics import DEFAULT_FLEET, DEFAULT_PREFIX
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.edge_app.core.clitools import domain_errors, printable, stop_on_signals
from shelfsight.edge_app.core.errors import ConfigError

log = logging.getLogger(__name__)


# The BrokerConfig fields every broker command takes as options; the others keep the model's defaults.
BROKER_FIELDS = ("host", "port", "tls_ca", "tls_cert", "tls_key", "username", "password_env", "password_file")
# Only where the command line's default differs from the model's: HQ logs in as `hq` (deploy/mosquitto ACL),
# while a kiosk's username is its own id.
CLI_DEFAULTS: dict[str, Any] = {"username": "hq"}


def _field_option(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option for BrokerConfig field `name`: its name, default and description (as help)."""
    info = BrokerConfig.model_fields[name]
    default = CLI_DEFAULTS.get(name, info.default)
    types = (info.annotation, *get_args(info.annotation))
    if Path in types:
        kind: Any = click.Path(exists=True, dir_okay=False)
    else:
        kind = int if int in types else str
    return click.option(
        f"--{name.replace('_', '-')}",
        type=kind,
        default=default,
        show_default=default is not None,
        help=info.description,
    )


def broker_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that talks to the broker shares."""
    options = [
        *(_field_option(name) for name in BROKER_FIELDS),
        click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic prefix."),
        click.option("--fleet", default=DEFAULT_FLEET, show_default=True, help="Fleet (store group) name."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _broker(kwargs: dict[str, Any]) -> tuple[BrokerConfig, Any]:
    """Pop the broker options from `kwargs` -> (BrokerConfig, Topics)."""
    from shelfsight.catalog.sync.topics import Topics

    values = {name: kwargs.pop(name) for name in BROKER_FIELDS}
    prefix, fleet = kwargs.pop("prefix"), kwargs.pop("fleet")
    try:
        config = BrokerConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"broker options: {exc.errors()[0]['msg']}") from exc
    return config, Topics(prefix, fleet)


@click.group("hq")
def hq_group() -> None:
    """Headquarters: publish the master catalog and models to every kiosk over MQTT.

    \b
    Example:
      shelfsight hq keygen --out keys/
      shelfsight hq serve --db master.db --key keys/hq_signing.key --host broker.example --fleet north
    """


@hq_group.command("keygen")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the key pair.")
@click.option("--force", is_flag=True, help="Overwrite an existing key pair (kiosks must get the new public key).")
@domain_errors
def keygen_command(out_dir: str, force: bool) -> None:
    """Create HQ's Ed25519 signing key pair. The .key file never leaves HQ; kiosks get the .pub file.

    \b
    Example:
      shelfsight hq keygen --out /etc/shelfsight/keys
    """
    from shelfsight.catalog.sync.envelope import generate_keys

    private, public = generate_keys(out_dir, overwrite=force)
    click.echo(f"private key: {private} (keep it at HQ, mode 0600)")
    click.echo(f"public key:  {public} (copy to every kiosk: sync.public_key)")


def _publisher(
    db: str,
    key: str,
    model: str | None,
    chunk_kb: int,
    content_digest: bool,
    bus: Any,
    config: BrokerConfig,
    topics: Any,
) -> Any:
    from shelfsight.catalog.hq.publisher import HqPublisher
    from shelfsight.catalog.sync.envelope import load_signer

    # The fleet's packet limit (kiosks receive as much as HQ does): chunks over it are refused here.
    return HqPublisher(
        db,
        load_signer(key),
        bus,
        topics,
        model=model,
        chunk_bytes=chunk_kb * 1024,
        max_packet_bytes=config.max_packet_bytes,
        content_digest=content_digest,
    )


# The largest chunk that fits the default packet limit with its overhead (catalog/sync/limits.py).
MAX_CHUNK_KB = largest_payload(MAX_PACKET_BYTES) // 1024


publish_options = [
    click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False), help="The master catalog."),
    click.option(
        "--key", required=True, type=click.Path(exists=True, dir_okay=False), help="HQ's private signing key."
    ),
    click.option(
        "--model",
        type=click.Path(exists=True, dir_okay=False),
        help="Roll out this .tflite (with sidecar) with the catalog.",
    ),
    click.option(
        "--chunk-kb",
        type=click.IntRange(1, MAX_CHUNK_KB),
        default=192,
        show_default=True,
        help="Snapshot chunk size; must fit the fleet's packet limit with its overhead.",
    ),
    click.option(
        "--content-digest/--no-content-digest",
        default=True,
        show_default=True,
        help="Put the content digest in the manifest; --no-content-digest while kiosks older than it remain.",
    ),
]


def _with_publish_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(publish_options):
        func = option(func)
    return func


@hq_group.command("publish")
@_with_publish_options
@broker_options
@domain_errors
def publish_command(db: str, key: str, model: str | None, chunk_kb: int, content_digest: bool, **kwargs: Any) -> None:
    """Publish the master catalog's current version once (delta, snapshot, release, manifest).

    \b
    Example:
      shelfsight hq publish --db master.db --key keys/hq_signing.key --port 1883 --fleet north
    """
    from shelfsight.catalog.sync.transport.factory import open_bus

    config, topics = _broker(kwargs)
    with open_bus(config, client_id="hq-publish", on_message=lambda m: None, persistent=False) as bus:
        bus.connect()
        manifest = _publisher(db, key, model, chunk_kb, content_digest, bus, config, topics).publish(force=True)
    assert manifest is not None
    click.echo(
        f"published v{manifest.version} to {topics.root}: snapshot {manifest.snapshot.size} bytes in "
        f"{len(manifest.snapshot.chunks)} chunks"
        + (f", release {manifest.release.size} bytes" if manifest.release else "")
    )


@hq_group.command("serve")
@_with_publish_options
@click.option("--inbox", type=click.Path(dir_okay=False), help="Store kiosks' enrollments in this SQLite file.")
@click.option("--poll", type=float, default=2.0, show_default=True, help="Seconds between checks of the master.")
@click.option("--share-group", default=None, help="Use a shared subscription group (several HQ workers).")
@click.option("--client-id", default=None, help="MQTT client id; unique per worker (default hq-serve-FLEET).")
@broker_options
@domain_errors
def serve_command(
    db: str,
    key: str,
    model: str | None,
    chunk_kb: int,
    content_digest: bool,
    inbox: str | None,
    poll: float,
    share_group: str | None,
    client_id: str | None,
    **kwargs: Any,
) -> None:
    """Keep publishing: every new master version, answers to kiosks' resync requests, enrollments into an inbox.

    \b
    Example:
      shelfsight hq serve --db master.db --key keys/hq_signing.key --inbox enroll.db --fleet north
    """
    from shelfsight.catalog.hq.inbox import EnrollmentInbox
    from shelfsight.catalog.hq.publisher import HqServer
    from shelfsight.catalog.sync.transport.factory import open_bus

    config, topics = _broker(kwargs)
    box = EnrollmentInbox(inbox) if inbox else None
    server = HqServer(
        on_enrollment=box.add if box else None,
        on_withdrawal=box.withdraw if box else None,
        poll_s=poll,
        share_group=share_group,
    )
    bus = open_bus(
        config,
        client_id=client_id or f"hq-serve-{topics.fleet}",
        on_message=server.on_message,
        on_connect=server.on_connect,
    )
    try:
        # Before connecting: a chunk size the fleet cannot receive is an error, not a stalled fleet.
        publisher = _publisher(db, key, model, chunk_kb, content_digest, bus, config, topics)
        with stop_on_signals(server.stop_event):
            bus.connect()
            click.echo(f"serving {topics.root} (Ctrl-C to stop)")
            server.run(publisher, bus)
    finally:
        bus.close()
        if box is not None:
            box.close()


@hq_group.command("status")
@click.option("--wait", "wait_s", type=float, default=2.0, show_default=True, help="Seconds to collect statuses.")
@click.option("--db", type=click.Path(exists=True, dir_okay=False), help="Master catalog, to show who is behind.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@broker_options
@domain_errors
def status_command(wait_s: float, db: str | None, as_json: bool, **kwargs: Any) -> None:
    """Show every kiosk of the fleet: version, how far behind, model, fps, last error.

    \b
    Example:
      shelfsight hq status --db master.db --host broker.example --fleet north
    """
    from shelfsight.catalog.hq.fleet import collect_status, format_table, status_rows

    config, topics = _broker(kwargs)
    statuses, problems = collect_status(config, topics, wait_s=wait_s)
    target = None
    if db is not None:
        from shelfsight.catalog.store import Catalog

        with Catalog(db, create=False) as master:
            target = master.version
    if as_json:
        click.echo(json.dumps([s.model_dump() for s in statuses], indent=2))
    else:
        header = ["kiosk", "state", "version", "behind", "model", "fps", "uptime", "seen", "last error"]
        # Every cell is what a kiosk sent (ids, errors): escaped so it cannot drive the terminal.
        click.echo(format_table(header, [[printable(c) for c in row] for row in status_rows(statuses, target)]))
        click.echo(f"{len(statuses)} kiosks" + (f", master at v{target}" if target is not None else ""))
    for problem in problems:
        click.echo(f"unreadable status: {printable(problem)}", err=True)


@hq_group.command("acl")
@click.argument("kiosks", nargs=-1, required=True)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic prefix.")
@click.option("--hq-user", default="hq", show_default=True, help="HQ's broker username.")
@domain_errors
def acl_command(kiosks: tuple[str, ...], prefix: str, hq_user: str) -> None:
    """Print the broker's ACL file for KIOSKS, each given as FLEET/KIOSK-ID (bound to that fleet).

    \b
    Example:
      shelfsight hq acl north/kiosk-0042 north/kiosk-0043 south/kiosk-0101 > /etc/mosquitto/shelfsight.acl
    """
    from shelfsight.catalog.hq.acl import render_acl

    fleets: dict[str, list[str]] = {}
    for item in kiosks:
        fleet, slash, kiosk_id = item.partition("/")
        if not slash:
            raise ConfigError(f"{item!r}: give each kiosk as FLEET/KIOSK-ID")
        fleets.setdefault(fleet, []).append(kiosk_id)
    click.echo(render_acl(prefix, fleets, hq_user=hq_user), nl=False)


inbox_option = click.option(
    "--inbox", required=True, type=click.Path(dir_okay=False), help="The enrollment inbox file."
)


@hq_group.command("enrollments")
@inbox_option
@click.option(
    "--all", "show_all", is_flag=True, help="Include approved, rejected and withdrawn ones (with why, in the note)."
)
@domain_errors
def enrollments_command(inbox: str, show_all: bool) -> None:
    """List products taught at stores that wait for approval.

    An enrollment its kiosk withdrew (the clerk undid the teach) waits for nobody and cannot be
    approved, so it is listed only with --all, as "withdrawn".

    \b
    Example:
      shelfsight hq enrollments --inbox enroll.db
    """
    from shelfsight.catalog.hq.fleet import format_table
    from shelfsight.catalog.hq.inbox import EnrollmentInbox

    with EnrollmentInbox(inbox) as box:
        entries = box.entries(None if show_all else "pending")
    # Ids and names were typed at kiosks: escaped so a name cannot clear the screen or fake a line.
    rows = [
        [
            printable(c)
            for c in (
                e.id,
                e.kiosk_id,
                e.product_id,
                e.name,
                e.category,
                "" if e.price is None else f"{e.price:.2f}",
                _clipped(e.description, DESCRIPTION_COLUMN_CHARS),
                e.frames,
                e.status,
                e.note,
            )
        ]
        for e in entries
    ]
    headers = ["id", "kiosk", "product", "name", "category", "price", "description", "frames", "status", "note"]
    click.echo(format_table(headers, rows))


# A description may be 2000 characters; the table shows its start (the console shows all of it).
DESCRIPTION_COLUMN_CHARS = 40


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@hq_group.command("approve")
@click.argument("entry_id", type=int)
@inbox_option
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False), help="The master catalog.")
@click.option(
    "--price",
    type=float,
    help="The product's price (stores show it on the product card); default: the price typed at the kiosk.",
)
@click.option("--description", help="The product's description; default: the one typed at the kiosk.")
@domain_errors
def approve_command(entry_id: int, inbox: str, db: str, price: float | None, description: str | None) -> None:
    """Fold enrollment ENTRY_ID into the master catalog; `hq serve` then sends it to every store.

    A product new to the master keeps the price and description typed at the kiosk unless
    --price / --description replace them; a product the master has changes only with them.

    \b
    Example:
      shelfsight hq approve 3 --inbox enroll.db --db master.db --price 3.50 --description "Strawberry, 350 g"
    """
    from shelfsight.catalog.hq.inbox import EnrollmentInbox
    from shelfsight.catalog.store import Catalog

    with EnrollmentInbox(inbox) as box, Catalog(db, create=False) as master:
        version = box.approve(entry_id, master, price=price, description=description)
    click.echo(f"enrollment #{entry_id} approved; master catalog now at v{version}")


@hq_group.command("reject")
@click.argument("entry_id", type=int)
@inbox_option
@click.option("--note", default="", help="Why (kept in the inbox).")
@domain_errors
def reject_command(entry_id: int, inbox: str, note: str) -> None:
    """Reject enrollment ENTRY_ID (it stays local at its store).

    \b
    Example:
      shelfsight hq reject 4 --inbox enroll.db --note "duplicate of SKU 1234"
    """
    from shelfsight.catalog.hq.inbox import EnrollmentInbox

    with EnrollmentInbox(inbox) as box:
        box.reject(entry_id, note)
    click.echo(f"enrollment #{entry_id} rejected")


@hq_group.command("console")
@click.option(
    "--catalog", "db", required=True, type=click.Path(exists=True, dir_okay=False), help="The master catalog."
)
@inbox_option
@click.option(
    "--listen",
    default="127.0.0.1:8090",
    show_default=True,
    help="Address and port the console answers on; anything but loopback needs --credential-env.",
)
@click.option(
    "--credential-env",
    default="SHELFSIGHT_CONSOLE_CREDENTIAL",
    show_default=True,
    help="Environment variable holding the staff credential (8-256 characters); kept only as a salted hash.",
)
@click.option(
    "--fleet-status/--no-fleet-status",
    default=True,
    show_default=True,
    help="Follow the kiosks' statuses on the broker (--no-fleet-status: enrollments and products only).",
)
@broker_options
@domain_errors
def console_command(db: str, inbox: str, listen: str, credential_env: str, fleet_status: bool, **kwargs: Any) -> None:
    """Serve HQ's web console: the fleet, enrollments to approve or reject with their photos, the products.

    \b
    Example:
      shelfsight hq console --catalog master.db --inbox enroll.db --listen 127.0.0.1:8090 --host broker.example
      SHELFSIGHT_CONSOLE_CREDENTIAL=... shelfsight hq console --catalog master.db --inbox enroll.db --listen 0.0.0.0:8090
    """
    import os
    from contextlib import ExitStack

    from shelfsight.catalog.hq.console.app import ConsoleFiles, ConsoleServer, check_bind, create_console
    from shelfsight.catalog.hq.console.auth import Credential
    from shelfsight.catalog.hq.console.board import FleetView, StatusBoard
    from shelfsight.catalog.hq.inbox import EnrollmentInbox
    from shelfsight.catalog.store import Catalog

    host, colon, port_text = listen.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {listen!r}: give HOST:PORT, e.g. 127.0.0.1:8090")
    host = host.strip("[]")
    secret = os.environ.get(credential_env)
    credential = Credential(secret) if secret else None
    check_bind(host, credential)
    config, topics = _broker(kwargs)
    with ExitStack() as stack:
        master = stack.enter_context(Catalog(db, create=False))
        box = stack.enter_context(EnrollmentInbox(inbox))
        fleet: FleetView | None = stack.enter_context(StatusBoard(config, topics)) if fleet_status else None
        app = create_console(ConsoleFiles(master, box), fleet, credential=credential)
        server = stack.enter_context(ConsoleServer(app, host, int(port_text)))
        stop = threading.Event()
        with stop_on_signals(stop):
            click.echo(f"HQ console at {server.url} (Ctrl-C to stop)")
            stop.wait()


COMMANDS: list[click.Command] = [hq_group]

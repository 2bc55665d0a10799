"""`--validate-config`: check that what a kiosk config names exists and is usable, before a start.

The systemd unit runs this before each start: a config that parses but names a model, catalog,
video or key that is gone must fail here, not in a restart loop.
"""

from __future__ import annotations

from pathlib import Path

from shelfsight.edge_app.camera.config import FolderConfig, VideoConfig
from shelfsight.edge_app.core.errors import ShelfsightError
from shelfsight.edge_app.core.images import iter_image_files
from shelfsight.edge_app.kiosk.config import KioskConfig
from shelfsight.edge_app.kiosk.sources import current_sources, open_catalog
from shelfsight.edge_app.runtime.factory import open_embedder


def check_setup(config: KioskConfig) -> list[str]:
    """Problems that would stop this config's kiosk from serving, one line each (empty: none).

    Opens the model and the catalog the kiosk would serve (HQ's installed release when sync
    has one), checks the catalog was built with that model, that a video or folder camera's
    path exists, and that the files [sync] names can be read.
    """
    problems: list[str] = []
    try:
        model_path, catalog_path = current_sources(config)
    except ShelfsightError as exc:
        return [str(exc)]
    fingerprint = None
    try:
        with open_embedder(model_path, threads=1) as embedder:
            fingerprint = embedder.fingerprint
    except ShelfsightError as exc:
        problems.append(f"model: {exc}")
    try:
        with open_catalog(catalog_path) as catalog:
            if fingerprint is not None:
                catalog.check_model(fingerprint)
    except ShelfsightError as exc:
        problems.append(f"catalog: {exc}")
    problems += _camera_problems(config)
    problems += _sync_problems(config)
    return problems


def _camera_problems(config: KioskConfig) -> list[str]:
    camera = config.camera
    if isinstance(camera, VideoConfig) and not camera.path.is_file():
        return [f"camera: {camera.path}: no such video file"]
    if isinstance(camera, FolderConfig):
        if not camera.path.is_dir():
            return [f"camera: {camera.path}: no such folder"]
        if next(iter(iter_image_files(camera.path)), None) is None:
            return [f"camera: {camera.path}: no images in the folder"]
    return []


def _sync_problems(config: KioskConfig) -> list[str]:
    sync = config.sync
    if sync is None or not sync.enabled:
        return []
    from shelfsight.catalog.sync.envelope import load_verifier

    problems = []
    try:
        load_verifier(sync.public_key)
    except ShelfsightError as exc:
        problems.append(f"sync public_key: {exc}")
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path: Path | None = getattr(sync, name)
        if path is not None and not path.is_file():
            problems.append(f"sync {name}: {path}: no such file")
    try:
        sync.password()
    except ShelfsightError as exc:
        problems.append(f"sync password: {exc}")
    return problems


def describe_sync(config: KioskConfig) -> str:
    """The [sync] section as `--validate-config` prints it (never the password itself)."""
    sync = config.sync
    if sync is None:
        return "sync: off (no [sync] section)"
    if not sync.enabled:
        return "sync: off (enabled = false)"
    scheme = "mqtts" if sync.tls_ca else "mqtt"
    secret = (
        f"env {sync.password_env}"
        if sync.password_env
        else f"file {sync.password_file}"
        if sync.password_file
        else "none"
    )
    return (
        f"sync: {scheme}://{sync.host}:{sync.port} as {sync.username or '(anonymous)'} (password: {secret})\n"
        f"  topics: {sync.prefix}/{sync.fleet}/..., kiosk id {sync.kiosk_id}\n"
        f"  HQ public key: {sync.public_key}\n"
        f"  releases: {config.catalog.sync_folder}"
    )

"""Model + catalog pairs on a kiosk, switched together or not at all.

Layout under the kiosk's data directory::

    releases/<fingerprint>/model.tflite
    releases/<fingerprint>/model.tflite.json
    releases/<fingerprint>/catalog.db
    current            {"current": "<fingerprint>", "previous": "<fingerprint>" | null}

A release is fully written and checked in a staging directory, renamed into
place, and only then made current by atomically replacing the `current`
file. A crash at any point leaves the previous pair in use. The previous pair
is kept for `rollback`; older ones are deleted.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

from shelfsight.edge_app.core.errors import CatalogError, ModelError, SyncError
from shelfsight.edge_app.core.files import atomic_write, fsync_path
from shelfsight.edge_app.core.spec import ModelSpec, sha256_file

log = logging.getLogger(__name__)

MODEL_NAME = "model.tflite"
CATALOG_NAME = "catalog.db"
POINTER_NAME = "current"

# Applies a snapshot to a fresh catalog file at the given path (the kiosk passes the Catalog class's logic).
SnapshotWriter = Callable[[Path, dict[str, Any]], None]


def _read_pointer(data_dir: Path) -> dict[str, Any]:
    path = data_dir / POINTER_NAME
    if not path.exists():
        return {}
    try:
        pointer = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SyncError(f"{path}: unreadable release pointer ({exc})") from exc
    if not isinstance(pointer, dict) or not isinstance(pointer.get("current"), str):
        raise SyncError(f"{path}: malformed release pointer")
    return pointer


def current_fingerprint(data_dir: str | Path) -> str | None:
    return _read_pointer(Path(data_dir)).get("current")


def release_dir(data_dir: str | Path, fingerprint: str) -> Path:
    if not fingerprint.isalnum():
        raise SyncError(f"invalid model fingerprint {fingerprint!r}")
    return Path(data_dir) / "releases" / fingerprint


def current_release(data_dir: str | Path) -> tuple[Path, Path]:
    """(model path, catalog path) of the release in use; CatalogError if the kiosk has none yet."""
    fingerprint = current_fingerprint(data_dir)
    if fingerprint is None:
        raise CatalogError(f"{data_dir}: no release installed yet (waiting for HQ, or run `shelfsight hq seed`)")
    folder = release_dir(data_dir, fingerprint)
    return folder / MODEL_NAME, folder / CATALOG_NAME


def _switch(data_dir: Path, fingerprint: str, previous: str | None) -> None:
    atomic_write(data_dir / POINTER_NAME, json.dumps({"current": fingerprint, "previous": previous}).encode())
    keep = {fingerprint, previous}
    for folder in (data_dir / "releases").iterdir():
        if folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def _stage(data_dir: Path, fingerprint: str) -> Path:
    releases = data_dir / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    return releases / f".staging-{fingerprint[:12]}-{uuid.uuid4().hex[:8]}"


def _commit(data_dir: Path, staging: Path, fingerprint: str) -> None:
    """Move a complete staging folder into place and make it current."""
    final = release_dir(data_dir, fingerprint)
    previous = current_fingerprint(data_dir)
    if final.exists():
        if previous == fingerprint:
            raise SyncError(f"release {fingerprint[:12]} is already current")
        shutil.rmtree(final)
    staging.rename(final)
    fsync_path(final.parent)
    _switch(data_dir, fingerprint, previous if previous != fingerprint else None)
    log.info("release %s is now current (previous %s)", fingerprint[:12], (previous or "none")[:12])


def install_release(
    data_dir: str | Path, spec: dict[str, Any], model: bytes, snapshot: dict[str, Any], write_catalog: SnapshotWriter
) -> tuple[Path, Path]:
    """Write a model and its catalog side by side, check they belong together, make them current."""
    data_dir = Path(data_dir)
    model_spec = ModelSpec.from_dict(spec, source="release spec")
    staging = _stage(data_dir, model_spec.fingerprint)
    try:
        staging.mkdir()
        model_path = staging / MODEL_NAME
        model_path.write_bytes(model)
        (staging / f"{MODEL_NAME}.json").write_text(model_spec.to_json() + "\n")
        if sha256_file(model_path) != model_spec.fingerprint:
            raise ModelError("release model does not match its fingerprint")
        write_catalog(staging / CATALOG_NAME, snapshot)
        _check_catalog_model(staging / CATALOG_NAME, model_spec.fingerprint)
        for name in (MODEL_NAME, f"{MODEL_NAME}.json"):
            fsync_path(staging / name)
        _commit(data_dir, staging, model_spec.fingerprint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return current_release(data_dir)


def _check_catalog_model(catalog_path: Path, fingerprint: str) -> None:
    from shelfsight.catalog.store import (
        Catalog,  # kept local: releases.py is also used by tools without a catalog
    )

    catalog = Catalog(catalog_path, create=False)
    try:
        if catalog.model_fingerprint != fingerprint:
            raise CatalogError(
                f"release catalog was built for model {str(catalog.model_fingerprint)[:12]}, not {fingerprint[:12]}"
            )
    finally:
        catalog.close()


def seed_release(data_dir: str | Path, model_path: str | Path, catalog_path: str | Path) -> tuple[Path, Path]:
    """Install an existing model (with sidecar) and catalog file as the current release (kiosk setup)."""
    from shelfsight.edge_app.core.spec import load_spec

    data_dir = Path(data_dir)
    spec = load_spec(model_path)
    staging = _stage(data_dir, spec.fingerprint)
    try:
        staging.mkdir()
        shutil.copyfile(model_path, staging / MODEL_NAME)
        (staging / f"{MODEL_NAME}.json").write_text(spec.to_json() + "\n")
        # The backup API copies a consistent image even if someone is writing the source.
        with (
            closing(sqlite3.connect(str(catalog_path))) as source,
            closing(sqlite3.connect(str(staging / CATALOG_NAME))) as target,
        ):
            source.backup(target)
        _check_catalog_model(staging / CATALOG_NAME, spec.fingerprint)
        _commit(data_dir, staging, spec.fingerprint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return current_release(data_dir)


def rollback(data_dir: str | Path) -> tuple[Path, Path]:
    """Make the previous release current again (the current one becomes 'previous')."""
    data_dir = Path(data_dir)
    pointer = _read_pointer(data_dir)
    previous = pointer.get("previous")
    if not previous or not release_dir(data_dir, previous).is_dir():
        raise SyncError(f"{data_dir}: no previous release to roll back to")
    _switch(data_dir, previous, pointer["current"])
    return current_release(data_dir)

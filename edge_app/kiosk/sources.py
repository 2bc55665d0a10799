"""Where a kiosk's model and catalog come from: the configured files, or the release HQ installed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from shelfsight.edge_app.core.errors import (
    CatalogError,
    ModelError,
)
from shelfsight.edge_app.kiosk.config import KioskConfig
from shelfsight.edge_app.recognition import (
    Recognizer,
)
from shelfsight.edge_app.runtime.factory import open_embedder

if TYPE_CHECKING:
    from shelfsight.catalog.store import Catalog
log = logging.getLogger(__name__)


def open_catalog(path: Path) -> Catalog:
    """Open an existing catalog for reading; a missing file is an error, not a new empty catalog."""
    from shelfsight.catalog.store import Catalog

    if not Path(path).is_file():
        raise CatalogError(f"{path}: no such catalog; build one with `shelfsight catalog build`")
    return Catalog(path, create=False)


def resolve_model(path: Path | None) -> Path:
    if path is not None:
        return path
    from shelfsight.edge_app.assets import default_model_path

    model = default_model_path()
    if not model.is_file():
        raise ModelError(f"{model}: the bundled default model is missing; set [model] path in the config")
    return model


def open_recognizer(
    model_path: Path, catalog_path: Path, config: KioskConfig, *, serve_at_once: bool = False
) -> Recognizer[Catalog]:
    """Model + catalog + pipeline with its search index built; nothing is left open if any part is refused.

    `serve_at_once` (a kiosk's start, when there is nothing else to serve): the embedding index is
    ready on return and the visual-word index follows in the background (`Catalog.start_index`).
    Otherwise (a release switch, while the previous release keeps serving) the complete index is
    built before returning.
    """
    embedder = open_embedder(model_path, threads=config.model.threads)
    try:
        catalog = open_catalog(catalog_path)
    except Exception:
        embedder.close()
        raise
    try:
        recognizer = Recognizer(embedder, catalog, config.recognition, config.roi)
        if serve_at_once:
            catalog.start_index()
        else:
            catalog.index()
        return recognizer
    except Exception:
        catalog.close()
        embedder.close()
        raise


def current_sources(config: KioskConfig) -> tuple[Path, Path]:
    """(model, catalog) to serve: the release HQ installed through sync if there is one, else the configured ones."""
    if config.sync is not None and config.sync.enabled:
        from shelfsight.edge_app.kiosk.updates.releases import (
            current_fingerprint,
            current_release,
        )

        if current_fingerprint(config.catalog.sync_folder) is not None:
            return current_release(config.catalog.sync_folder)
    return resolve_model(config.model.path), config.catalog.path

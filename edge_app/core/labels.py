"""ImageFolder labelling: a product id is an image's folder path relative to the root."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from shelfsight.edge_app.core.errors import InputError
from shelfsight.edge_app.core.images import iter_image_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledImages:
    paths: list[Path]
    products: list[str]


def scan_folder(root: str | Path, role: str, products: Collection[str] | None = None) -> LabelledImages:
    """Every image below `root`, labelled with its folder path (ImageFolder layout)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{role} folder {root} does not exist")
    paths = [p for p in iter_image_files(root) if p.parent != root]
    if products is not None:
        wanted = set(products)
        paths = [p for p in paths if p.parent.relative_to(root).as_posix() in wanted]
    if not paths:
        raise InputError(
            f"{role} folder {root} has no images in product subfolders (expected {root}/<product>/<image>)"
        )
    return LabelledImages(paths, [p.parent.relative_to(root).as_posix() for p in paths])

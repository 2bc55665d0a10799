"""Training data sources: ImageFolder trees, Grocery Store lists, Grocery Store iconic images.

A source is a path; its kind is decided by what it is:
- a directory: ImageFolder. The product id of an image is the path of its
  folder relative to the root (`Apple` or `Fruit/Apple/Granny-Smith`), so the
  Grocery Store `train/`, `val/` and iconic trees share ids.
- a `.txt` file: the Grocery Store list format `path, fine id, coarse id`,
  paths relative to the file's folder; ids are mapped to the same product ids
  through the parent folder of each path.
- a `.csv` file: the Grocery Store `classes.csv`; contributes the iconic image
  of each product.
Several sources combine into one labelled sample list.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from shelfsight.edge_app.core.errors import InputError
from shelfsight.edge_app.core.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: Path
    product: str


def _grocery_product(relative: str) -> str:
    """`train/Fruit/Apple/Granny-Smith/x.jpg` -> `Fruit/Apple/Granny-Smith` (drop split and file)."""
    parts = PurePosixPath(relative.strip().lstrip("/")).parts
    if len(parts) < 3:
        raise InputError(f"unexpected Grocery Store path {relative!r}")
    return "/".join(parts[1:-1])


def image_folder(root: Path) -> list[Sample]:
    """Labelled exactly as `shelfsight eval` labels folders, so training and evaluation ids agree."""
    from shelfsight.edge_app.core.labels import scan_folder

    labelled = scan_folder(root, "training")
    return [Sample(p, product) for p, product in zip(labelled.paths, labelled.products)]


def grocery_list(list_file: Path) -> list[Sample]:
    base = list_file.parent
    samples: list[Sample] = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2:
            raise InputError(f"{list_file}:{lineno}: expected 'path, fine id, coarse id'")
        samples.append(Sample(base / fields[0], _grocery_product(fields[0])))
    return samples


def _products_by_fine_id(list_file: Path) -> dict[str, str]:
    by_id: dict[str, str] = {}
    for line in list_file.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[0]:
            by_id.setdefault(fields[1], _grocery_product(fields[0]))
    return by_id


def grocery_iconic(classes_csv: Path) -> list[Sample]:
    """Iconic images, with the photo folders' product ids where a `train.txt` lies beside the CSV.

    The dataset files a few iconic images under a different folder than the
    photos (`Vegetables/Mushroom/Brown-Cap-Mushroom` vs `Vegetables/Brown-Cap-Mushroom`);
    the class id in `classes.csv` is what ties them together.
    """
    base = classes_csv.parent
    list_file = base / "train.txt"
    by_id = _products_by_fine_id(list_file) if list_file.is_file() else {}
    samples: list[Sample] = []
    with open(classes_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            iconic = next((v for k, v in row.items() if k and k.startswith("Iconic Image Path")), None)
            class_id = next((v for k, v in row.items() if k and k.startswith("Class ID")), None)
            if not iconic:
                raise InputError(f"{classes_csv}: no 'Iconic Image Path' column")
            product = by_id.get((class_id or "").strip()) or _grocery_product(iconic)
            samples.append(Sample(base / iconic.lstrip("/"), product))
    return samples


def load_source(path: str | Path) -> list[Sample]:
    path = Path(path)
    if path.is_dir():
        samples = image_folder(path)
    elif path.suffix == ".txt" and path.is_file():
        samples = grocery_list(path)
    elif path.suffix == ".csv" and path.is_file():
        samples = grocery_iconic(path)
    elif not path.exists():
        raise InputError(f"{path}: no such file or folder")
    else:
        raise InputError(f"{path}: expected an image folder, a Grocery Store list (.txt) or classes.csv")
    if not samples:
        raise InputError(f"{path}: no images found")
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise InputError(f"{path}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    log.info("%s: %d images of %d products", path, len(samples), len({s.product for s in samples}))
    return samples


def load_sources(paths: Sequence[str | Path], exclude: Iterable[str] = ()) -> list[Sample]:
    excluded = set(exclude)
    samples = [s for p in paths for s in load_source(p) if s.product not in excluded]
    if not samples:
        raise InputError("no training images left")
    counts = Counter(s.product for s in samples)
    lonely = sorted(p for p, n in counts.items() if n < 2)
    if lonely:
        where = next(s.path.parent for s in samples if s.product == lonely[0])
        raise InputError(
            f"{len(lonely)} products have a single training image, e.g. {lonely[0]!r} in {where}; "
            "metric learning needs at least two views per product (add photos or --exclude-products)"
        )
    return samples


def check_images(samples: Sequence[Sample]) -> None:
    """Decode every image once (cheaply, JPEG draft mode) so a corrupt file fails here, by name."""
    from PIL import Image

    from shelfsight.edge_app.core.errors import ImageError

    for sample in samples:
        try:
            with Image.open(sample.path) as image:
                image.draft("RGB", (64, 64))
                image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{sample.path}: unreadable training image ({exc})") from exc


def fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 over every (product, file content), order-independent: identifies the training data."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: (s.product, s.path.name, str(s.path))):
        digest.update(sample.product.encode())
        digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
    return digest.hexdigest()


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES

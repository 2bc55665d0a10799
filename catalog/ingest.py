"""Building catalogs from photos: ImageFolder trees, product CSVs, quality checks, re-embedding.

`build_catalog` never touches the target file until the build has finished:
it copies the current catalog (if any) next to the target, ingests into the
copy one transaction per batch, and atomically renames it over the target. An
interrupted or failed build (corrupt input, full disk, Ctrl-C) leaves the
previous catalog exactly as it was.

Ingestion is additive and idempotent: products are created or updated, a photo
already in the catalog (same stored image -> same reference id) is skipped,
and near-duplicate photos of one product (pHash distance at or below a
threshold) are dropped and reported.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from shelfsight.catalog.quality import (
    QualityLimits,
    check_image,
    phash,
    phash_distance,
    reference_keypoints,
    stored_jpeg,
)
from shelfsight.catalog.records import check_product_id
from shelfsight.catalog.references import prepare_reference, reference_id_for
from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import CatalogError, InputError
from shelfsight.edge_app.core.images import (
    IMAGE_SUFFIXES,
    decode_rgb,
    fit_square,
    iter_image_files,
    load_rgb,
)

log = logging.getLogger(__name__)

ID_COLUMNS = ("sku", "id", "product_id")
IMAGE_COLUMN_NAMES = ("images", "image", "image_paths")
_IMAGE_SEPARATORS = (";", "|")


@dataclass(frozen=True)
class IngestOptions:
    """How photos are screened and stored."""

    limits: QualityLimits = QualityLimits()
    dedupe_distance: int = 4  # pHash Hamming distance (of 64 bits) at or below which a photo is a duplicate
    batch_size: int = 32  # photos embedded and committed together
    progress: bool = False  # tqdm progress bar on stderr

    def __post_init__(self) -> None:
        if not 0 <= self.dedupe_distance <= 64 or self.batch_size < 1:
            raise InputError("dedupe distance must be 0..64 and batch size at least 1")


@dataclass(frozen=True)
class ProductEntry:
    """A product to ingest: its id, catalog fields, and photo files."""

    product_id: str
    fields: dict[str, Any]
    images: tuple[Path, ...] = ()
    # Why the product cannot be ingested (a folder name that is not UTF-8); its photos are rejected for it.
    problem: str = ""
    # Ingested, but probably not as meant (a CSV row no folder matched); reported as a warning.
    warning: str = ""


@dataclass
class IngestReport:
    products_added: list[str] = field(default_factory=list)
    products_updated: list[str] = field(default_factory=list)
    references_added: int = 0
    already_present: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)  # (path, duplicate of, distance)
    # Products of this build left with no reference at all: the kiosk cannot recognise them.
    unrecognisable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # entries ingested that probably are not what was meant
    thumbnails: list[str] = field(default_factory=list)  # products given a thumbnail from their best reference
    version: int = 0

    def lines(self) -> list[str]:
        """A human summary, one finding per line."""
        out = [
            f"products: {len(self.products_added)} added, {len(self.products_updated)} updated",
            f"references: {self.references_added} added, {self.already_present} already present, "
            f"{len(self.duplicates)} near-duplicates dropped, {len(self.rejected)} rejected",
        ]
        out += [f"rejected {path}: {reason}" for path, reason in self.rejected]
        out += [f"dropped {path}: near-duplicate of {other} (pHash distance {d})" for path, other, d in self.duplicates]
        out += [f"WARNING: {warning}" for warning in self.warnings]
        if self.thumbnails:
            out.append(f"thumbnails: {len(self.thumbnails)} made from the products' sharpest references")
        if self.unrecognisable:
            shown = ", ".join(self.unrecognisable[:10]) + (" ..." if len(self.unrecognisable) > 10 else "")
            out.append(
                f"WARNING: {len(self.unrecognisable)} products have no usable reference photo and cannot be "
                f"recognised until one is added: {shown}"
            )
        out.append(f"catalog version {self.version}")
        return out


# ---- sources --------------------------------------------------------------------------------


def read_image_folder(folder: str | Path) -> list[ProductEntry]:
    """ImageFolder layout: one subfolder per product, named by product id (a new product's name too)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    entries = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = tuple(iter_image_files(sub))
        if images and shown_path(sub.name) != sub.name:
            entries.append(ProductEntry(shown_path(sub.name), {}, images, NOT_UTF8 % "folder"))
        elif images:
            # No fields: the folder name is only the default name of a new product, so a later
            # folder-only build does not undo names set from a CSV.
            entries.append(ProductEntry(_product_id(sub.name, str(sub)), {}, images))
    if not entries:
        raise InputError(f"{folder}: no product subfolders with images (expected <folder>/<product id>/*.jpg)")
    return entries


NOT_UTF8 = "%s name is not valid UTF-8; rename it"


def shown_path(path: str | Path) -> str:
    """A path as text that can be printed and stored: bytes that are not UTF-8 shown as \\xNN.

    On Linux a file name is any bytes; Python keeps the ones that are not UTF-8 as lone
    surrogates, which SQLite and a UTF-8 terminal refuse.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _product_id(value: str, where: str) -> str:
    try:
        return check_product_id(value.strip())
    except CatalogError as exc:
        raise InputError(f"{where}: {exc}") from exc


def read_products_csv(path: str | Path) -> list[ProductEntry]:
    """A CSV with a header: sku (or id), name, and optionally description, category, price,
    images (paths separated by ';' or '|', relative to the CSV's folder); other columns become
    attributes. Empty cells are left out."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = list(rows[0]) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read products CSV ({exc})") from exc
    if not rows:
        raise InputError(f"{path}: no products (a header line and one row per product expected)")
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None or "name" not in header:
        raise InputError(f"{path}: needs a 'sku' (or 'id') column and a 'name' column; found {header}")
    image_column = next((c for c in IMAGE_COLUMN_NAMES if c in header), None)
    entries, seen = [], set()
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        if None in row:
            raise InputError(f"{where}: more cells than header columns")
        product_id = _product_id(row[id_column] or "", where)
        if product_id in seen:
            raise InputError(f"{where}: product {product_id} appears twice")
        seen.add(product_id)
        fields: dict[str, Any] = {}
        for column, value in row.items():
            value = (value or "").strip()
            if column in (id_column, image_column) or not value:
                continue
            fields[column] = value
        if "name" not in fields:
            raise InputError(f"{where}: product {product_id} has no name")
        if "price" in fields:
            try:
                fields["price"] = float(fields["price"])
            except ValueError as exc:
                raise InputError(f"{where}: price {fields['price']!r} is not a number") from exc
        images = _split_images(row.get(image_column or "", "") or "", path.parent)
        entries.append(ProductEntry(product_id, fields, images))
    return entries


def _split_images(cell: str, base: Path) -> tuple[Path, ...]:
    for separator in _IMAGE_SEPARATORS:
        cell = cell.replace(separator, "\n")
    paths = [Path(p.strip()) for p in cell.splitlines() if p.strip()]
    return tuple(p if p.is_absolute() else base / p for p in paths)


def collect_entries(images: str | Path | None = None, products_csv: str | Path | None = None) -> list[ProductEntry]:
    """Products from an ImageFolder, a CSV, or both (CSV fields win; photos of both are used)."""
    if images is None and products_csv is None:
        raise InputError("give an image folder, a products CSV, or both")
    from_csv = {e.product_id: e for e in read_products_csv(products_csv)} if products_csv else {}
    from_folder = {e.product_id: e for e in read_image_folder(images)} if images else {}
    merged = []
    for product_id in sorted(set(from_csv) | set(from_folder)):
        csv_entry, folder_entry = from_csv.get(product_id), from_folder.get(product_id)
        fields = csv_entry.fields if csv_entry else folder_entry.fields  # type: ignore[union-attr]
        photos = (csv_entry.images if csv_entry else ()) + (folder_entry.images if folder_entry else ())
        problem = folder_entry.problem if folder_entry else ""
        warning = ""
        if images is not None and products_csv is not None and not (csv_entry and folder_entry):
            # Usually a SKU typed differently in the CSV and as a folder name: the folder's product
            # would get no name or price, the row's no photos from the folder.
            warning = (
                f"CSV row {product_id} matches no folder in {shown_path(images)}"
                if csv_entry
                else f"folder {product_id} has no row in {shown_path(products_csv)} (no name or price)"
            )
        merged.append(ProductEntry(product_id, dict(fields), tuple(dict.fromkeys(photos)), problem, warning))
    return merged


# ---- ingestion ------------------------------------------------------------------------------


@dataclass
class _Pending:
    product_id: str
    source: str
    square: np.ndarray
    phash: str
    image_jpeg: bytes
    keypoints: bytes


def _upsert_product(catalog: Catalog, entry: ProductEntry, report: IngestReport) -> None:
    fields = dict(entry.fields)
    try:
        current = catalog.product(entry.product_id)
    except CatalogError:
        name = fields.pop("name", entry.product_id)
        catalog.add_product(entry.product_id, name, **fields)
        report.products_added.append(entry.product_id)
        return
    changed = {
        k: v
        for k, v in fields.items()
        if (current[k] if k in current and k != "attributes" else current["attributes"].get(k)) != v
    }
    if changed:
        catalog.update_product(entry.product_id, **changed)
        report.products_updated.append(entry.product_id)


def _commit(catalog: Catalog, embedder: Embedder, pending: list[_Pending], report: IngestReport) -> None:
    if not pending:
        return
    embeddings = embedder.embed_batch(np.stack([p.square for p in pending]))
    with catalog.batch():
        for item, embedding in zip(pending, embeddings):
            catalog.add_reference_vector(
                item.product_id,
                embedding,
                fingerprint=embedder.fingerprint,
                phash=item.phash,
                source=item.source,
                image_jpeg=item.image_jpeg,
                keypoints=item.keypoints,
            )
    report.references_added += len(pending)
    pending.clear()


class _Screener:
    """Decides for each photo: rejected (with the reason), already present, near-duplicate, or kept."""

    def __init__(self, catalog: Catalog, input_size: int, options: IngestOptions, report: IngestReport) -> None:
        self.input_size, self.options, self.report = input_size, options, report
        self.kept: dict[str, list[tuple[str, str]]] = {}  # product -> [(phash, source)] of its photos
        self.present: set[str] = set()
        for ref in catalog.references():
            self.kept.setdefault(ref["product_id"], []).append((ref["phash"], ref["source"] or ref["id"]))
            self.present.add(ref["id"])

    def screen(self, product_id: str, path: Path) -> _Pending | None:
        if shown_path(path) != str(path):
            self.report.rejected.append((shown_path(path), NOT_UTF8 % "file"))
            log.warning("%s: %s", shown_path(path), NOT_UTF8 % "file")
            return None
        try:
            rgb = load_rgb(path)
            check_image(rgb, self.options.limits, str(path))
        except InputError as exc:  # ImageError included: unreadable, missing, tiny, blurry
            self.report.rejected.append((str(path), str(exc).removeprefix(f"{path}: ")))
            log.warning("%s", exc)
            return None
        image_jpeg = stored_jpeg(rgb)
        reference_id = reference_id_for(product_id, image_jpeg, b"")
        if reference_id in self.present:
            self.report.already_present += 1
            return None
        photo_hash = phash(rgb)
        kept = self.kept.setdefault(product_id, [])
        for other_hash, other in kept:
            distance = phash_distance(photo_hash, other_hash) if other_hash else 65
            if distance <= self.options.dedupe_distance:
                self.report.duplicates.append((str(path), other, distance))
                return None
        kept.append((photo_hash, str(path)))
        self.present.add(reference_id)
        keypoints = reference_keypoints(rgb)
        # Sources are stored absolute so `reembed` can find the originals from any working directory.
        source = str(Path(path).resolve())
        return _Pending(product_id, source, fit_square(rgb, self.input_size), photo_hash, image_jpeg, keypoints)


def ingest(
    catalog: Catalog, embedder: Embedder, entries: Sequence[ProductEntry], options: IngestOptions = IngestOptions()
) -> IngestReport:
    """Add products and their photos to `catalog`; bad photos are reported, not fatal."""
    catalog.check_model(embedder.fingerprint)
    report = IngestReport()
    screener = _Screener(catalog, embedder.input_size, options, report)
    for entry in entries:
        if entry.problem:
            report.rejected += [(shown_path(path), entry.problem) for path in entry.images]
            log.warning("%s: %s", entry.product_id, entry.problem)
    entries = [e for e in entries if not e.problem]
    report.warnings = [e.warning for e in entries if e.warning]
    for warning in report.warnings:
        log.warning("%s", warning)
    for entry in entries:
        _upsert_product(catalog, entry, report)
    pending: list[_Pending] = []
    total = sum(len(e.images) for e in entries)
    with tqdm(total=total, unit="img", desc="catalog", disable=not options.progress) as bar:
        for entry in entries:
            for path in entry.images:
                bar.update(1)
                item = screener.screen(entry.product_id, path)
                if item is not None:
                    pending.append(item)
                if len(pending) >= options.batch_size:
                    _commit(catalog, embedder, pending, report)
        _commit(catalog, embedder, pending, report)
    report.thumbnails = catalog.fill_thumbnails(e.product_id for e in entries)
    report.unrecognisable = [e.product_id for e in entries if not catalog.product(e.product_id)["references"]]
    if report.unrecognisable:
        log.warning("%d products have no usable reference photo", len(report.unrecognisable))
    report.version = catalog.version
    return report


@dataclass(frozen=True)
class Added:
    """What `add_product_photos` stored."""

    product_id: str
    created: bool  # a new product (else its fields were updated, or left as they were)
    updated: bool
    references: tuple[str, ...]  # ids of the photos' references
    version: int


def add_product_photos(
    catalog: Catalog,
    embedder: Embedder | None,
    product_id: str,
    photos: Sequence[str | Path] = (),
    *,
    name: str | None = None,
    **fields: Any,
) -> Added:
    """Create a product (or update its fields) and add reference photos, in one transaction.

    All or nothing: a bad photo, a full disk or a kill leaves the catalog as it was. The photos
    are read, checked and embedded before the transaction, so it holds the write lock only
    for the writes. A new product needs a `name`; photos need an `embedder`.
    """
    prepared = []
    if photos:
        if embedder is None:
            raise InputError("reference photos need the model")
        catalog.check_model(embedder.fingerprint)
        for path in photos:
            if shown_path(path) != str(path):
                raise InputError(f"{shown_path(path)}: {NOT_UTF8 % 'file'}")
        prepared = [prepare_reference(load_rgb(path), embedder, str(Path(path).resolve())) for path in photos]
    with catalog.batch():
        try:
            catalog.product(product_id)
            created = False
        except CatalogError:
            created = True
        if created:
            if not name:
                raise InputError(f"product {product_id} is new: a name is required")
            catalog.add_product(product_id, name, **fields)
        elif fields or name:
            catalog.update_product(product_id, **({"name": name} if name else {}), **fields)
        for reference in prepared:
            catalog.add_prepared(product_id, reference)
        catalog.fill_thumbnails([product_id])
    references = tuple(reference_id_for(product_id, r.image_jpeg, b"") for r in prepared)
    return Added(product_id, created, bool(fields or name) and not created, references, catalog.version)


# ---- whole-file operations ------------------------------------------------------------------


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive
    return True


def remove_stale_builds(target: str | Path) -> list[Path]:
    """Delete the working copies that killed builds of `target` left behind; returns them.

    A build holds an exclusive lock on `<copy>.lock` while it runs, so a copy whose lock can be
    taken is a dead build's (the kernel drops the lock of a killed process). A copy without a
    lock file (from a release before the lock) is stale when its process id is not running.
    """
    target = Path(target)
    prefix = f".{target.name}.building-"
    pids = set()
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            tail = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            digits = tail.split("-", 1)[0].split(".", 1)[0]
            if digits.isdigit():
                pids.add(int(digits))
    removed = []
    for pid in sorted(pids):
        work = target.with_name(f"{prefix}{pid}")
        lock_path = Path(f"{work}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            if _pid_alive(pid):
                continue
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a build still running
            _remove_database(work)
            lock_path.unlink(missing_ok=True)
            removed.append(work)
        finally:
            if fd is not None:
                os.close(fd)
    if removed:
        log.info("%s: removed %d working copies of killed builds", target, len(removed))
    return removed


@contextlib.contextmanager
def _build_lock(work: Path) -> Iterator[None]:
    """Hold `<work>.lock` for the build, so `remove_stale_builds` of another process leaves `work` alone."""
    lock_path = Path(f"{work}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def replacing(target: str | Path) -> Iterator[Path]:
    """Yield a working copy of catalog `target` (or a fresh path); on success rename it over `target`.

    On any error the copy is deleted and `target` is left untouched. Copies that killed builds
    left behind (a kill -9 runs no cleanup) are deleted first.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise InputError(f"{target}: folder {target.parent} does not exist")
    work = target.with_name(f".{target.name}.building-{os.getpid()}")
    remove_stale_builds(target)
    with _build_lock(work):
        _remove_database(work)
        try:
            if target.exists():
                _copy_catalog(target, work)
            yield work
            try:
                os.replace(work, target)
            except OSError as exc:
                raise CatalogError(
                    f"{target}: could not replace the catalog ({exc}); the previous one is intact"
                ) from exc
            _fsync_dir(target.parent)
        finally:
            _remove_database(work)


def _copy_catalog(source: Path, copy: Path) -> None:
    with Catalog(source, create=False) as catalog:  # validates it
        try:
            writer = sqlite3.connect(copy)
            try:
                catalog.db.conn.backup(writer)
            finally:
                writer.close()
        except sqlite3.Error as exc:
            raise CatalogError(
                f"{source}: could not copy the catalog to build on it ({exc}); it was not changed"
            ) from exc
    # Closing the last connection checkpoints and deletes the WAL; if it is still there, someone has the file open.
    if Path(str(source) + "-wal").exists():
        raise CatalogError(
            f"{source}: the catalog is open in another process; stop it first (running kiosks get updates through sync)"
        )


def build_catalog(
    target: str | Path, embedder: Embedder, entries: Sequence[ProductEntry], options: IngestOptions = IngestOptions()
) -> IngestReport:
    """Ingest `entries` into the catalog file `target` (created if missing), all or nothing."""
    try:
        with replacing(target) as work:
            with Catalog(work) as catalog:
                report = ingest(catalog, embedder, entries, options)
    except CatalogError as exc:
        raise CatalogError(f"{exc} [build abandoned; {target} is unchanged]") from exc
    log.info("%s: built (version %d, %d references added)", target, report.version, report.references_added)
    return report


def _reference_rgb(catalog: Catalog, ref: dict[str, Any]) -> np.ndarray:
    """The best available pixels of a reference: its original file if it still shows the same
    photo (same pHash, roughly), else the stored copy."""
    source = ref["source"]
    if source and Path(source).suffix.lower() in IMAGE_SUFFIXES and Path(source).is_file():
        with contextlib.suppress(InputError):
            rgb = load_rgb(source)
            if not ref["phash"] or phash_distance(phash(rgb), ref["phash"]) <= 8:
                return rgb
    stored = catalog.reference_image(ref["id"])
    if stored is None:
        raise CatalogError(f"reference {ref['id']}: original {source or '(none)'} is gone and no copy was stored")
    return decode_rgb(stored, f"stored image of {ref['id']}")


def reembed(catalog: Catalog, embedder: Embedder, options: IngestOptions = IngestOptions()) -> int:
    """Recompute every reference's embedding with `embedder` (a new model), in one transaction.

    Returns the new catalog version. Copies of the catalog need a snapshot afterwards.
    """
    refs = catalog.references()
    embeddings: dict[str, np.ndarray] = {}
    for start in tqdm(
        range(0, len(refs), options.batch_size), unit="batch", desc="reembed", disable=not options.progress
    ):
        chunk = refs[start : start + options.batch_size]
        batch = np.stack([fit_square(_reference_rgb(catalog, ref), embedder.input_size) for ref in chunk])
        embeddings.update(zip((ref["id"] for ref in chunk), embedder.embed_batch(batch)))
    return catalog.replace_embeddings(embedder.fingerprint, embeddings)

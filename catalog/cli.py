"""`shelfsight catalog ...`: build, inspect, edit and search a product catalog file."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import click

from shelfsight.edge_app.core.clitools import domain_errors, printable, progress_option, wants_progress
from shelfsight.edge_app.core.errors import InputError

MODEL_HELP = "A .tflite embedder with its .json sidecar (default: the bundled model)."


def _default_model() -> str:
    from shelfsight.edge_app.assets import default_model_path

    return str(default_model_path())


@contextlib.contextmanager
def _open(db: str, create: bool = False) -> Iterator[Any]:
    from shelfsight.catalog.store import Catalog

    with Catalog(db, create=create) as catalog:
        yield catalog


@contextlib.contextmanager
def _embedder(model: str | None, threads: int) -> Iterator[Any]:
    from shelfsight.edge_app.runtime.factory import open_embedder

    with open_embedder(model or _default_model(), threads=threads) as embedder:
        yield embedder


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{what} {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


db_option = click.option("--db", required=True, type=click.Path(dir_okay=False), help="The catalog file (SQLite).")
model_option = click.option("--model", type=click.Path(exists=True, dir_okay=False), help=MODEL_HELP)
threads_option = click.option("--threads", type=int, default=2, show_default=True, help="Interpreter threads.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group("catalog")
def catalog_group() -> None:
    """Build and inspect product catalogs (one SQLite file each).

    \b
    Example:
      shelfsight catalog build --images photos/ --products products.csv --db store.db
      shelfsight catalog search --db store.db shelf-photo.jpg
    """


@catalog_group.command("build")
@model_option
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    help="ImageFolder: one subfolder of photos per product id.",
)
@click.option(
    "--products",
    type=click.Path(exists=True, dir_okay=False),
    help="CSV: sku,name[,description,category,price,images,...].",
)
@db_option
@click.option(
    "--dedupe",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="Drop photos within this pHash distance of one already kept.",
)
@click.option(
    "--min-side",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Reject photos smaller than this (pixels).",
)
@click.option(
    "--min-sharpness",
    type=click.FloatRange(0),
    default=15.0,
    show_default=True,
    help="Reject blurrier photos (Laplacian variance).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Photos per embedding batch and transaction.",
)
@threads_option
@progress_option
@domain_errors
def build_command(model, images, products, db, dedupe, min_side, min_sharpness, batch_size, threads, progress) -> None:
    """Create or extend a catalog from photos; the file is replaced only when the build succeeds.

    \b
    Example:
      shelfsight catalog build --model model.tflite --images photos/ --db store.db
    """
    from shelfsight.catalog.ingest import IngestOptions, build_catalog, collect_entries
    from shelfsight.catalog.quality import QualityLimits

    if not images and not products:
        raise click.UsageError("give --images, --products, or both")
    entries = collect_entries(images, products)
    options = IngestOptions(QualityLimits(min_side, min_sharpness), dedupe, batch_size, wants_progress(progress))
    with _embedder(model, threads) as embedder:
        report = build_catalog(db, embedder, entries, options)
    for line in report.lines():
        click.echo(line)


@catalog_group.command("add")
@db_option
@click.argument("product_id")
@click.option("--name", help="Product name (required for a new product).")
@click.option("--description", help="Description.")
@click.option("--category", help="Category.")
@click.option("--price", type=float, help="Price.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="An extra attribute (repeatable).")
@click.option(
    "--image",
    "image_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A reference photo (repeatable; needs the model).",
)
@model_option
@threads_option
@domain_errors
def add_command(db, product_id, name, description, category, price, attrs, image_paths, model, threads) -> None:
    """Add a product (or update its fields) and optionally reference photos, all or nothing.

    \b
    Example:
      shelfsight catalog add --db store.db cola-330 --name "Cola 330ml" --category drinks \\
        --price 1.20 --attr brand=Fizz --image cola-front.jpg --image cola-side.jpg
    """
    from shelfsight.catalog.ingest import add_product_photos

    fields = {
        k: v for k, v in {"description": description, "category": category, "price": price}.items() if v is not None
    }
    fields.update(_pairs(attrs, "--attr"))
    with contextlib.ExitStack() as stack:
        catalog = stack.enter_context(_open(db, create=True))
        embedder = stack.enter_context(_embedder(model, threads)) if image_paths else None
        added = add_product_photos(catalog, embedder, product_id, image_paths, name=name, **fields)
    # Printed only after the one transaction committed: nothing is reported that was not stored.
    if added.created:
        click.echo(f"added product {product_id}")
    elif added.updated:
        click.echo(f"updated product {product_id}")
    for path in image_paths:
        click.echo(f"added reference {path}")
    click.echo(f"catalog version {added.version}")


@catalog_group.command("remove")
@db_option
@click.argument("product_id", required=False)
@click.option("--reference", "reference_id", help="Remove only this reference (id as shown by `show`).")
@domain_errors
def remove_command(db, product_id, reference_id) -> None:
    """Remove a product with all its references, or a single reference.

    \b
    Example:
      shelfsight catalog remove --db store.db cola-330
      shelfsight catalog remove --db store.db --reference cola-330/3f2a9c01b2de
    """
    if bool(product_id) == bool(reference_id):
        raise click.UsageError("give a PRODUCT_ID or --reference, not both")
    with _open(db) as catalog:
        version = catalog.remove_reference(reference_id) if reference_id else catalog.remove_product(product_id)
    click.echo(f"removed {reference_id or product_id}; catalog version {version}")


@catalog_group.command("set-thumbnail")
@db_option
@click.argument("product_id")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@domain_errors
def set_thumbnail_command(db, product_id, image) -> None:
    """Set the picture the kiosk shows for a product (fitted to 256 px, stored as JPEG).

    Products get one from their sharpest reference photo when they are built, added, taught
    or approved; this replaces it, e.g. with a packshot.

    \b
    Example:
      shelfsight catalog set-thumbnail --db store.db cola-330 packshots/cola-330.png
    """
    from shelfsight.catalog.store import MAX_THUMBNAIL_SOURCE_BYTES

    size = Path(image).stat().st_size
    if size > MAX_THUMBNAIL_SOURCE_BYTES:
        raise InputError(f"{image}: {size} bytes, more than the {MAX_THUMBNAIL_SOURCE_BYTES} a thumbnail is made from")
    with _open(db) as catalog:
        version = catalog.set_thumbnail(product_id, Path(image).read_bytes())
    click.echo(f"thumbnail of {printable(product_id)} set; catalog version {version}")


@catalog_group.command("list")
@db_option
@click.option("--category", help="Only this category.")
@click.option(
    "--where", "conditions", multiple=True, metavar="KEY=VALUE", help="Only products with this field/attribute value."
)
@json_option
@domain_errors
def list_command(db, category, conditions, as_json) -> None:
    """List products with their reference counts.

    \b
    Example:
      shelfsight catalog list --db store.db --category drinks
    """
    filters: dict[str, Any] = _pairs(conditions, "--where")
    if category is not None:
        filters["category"] = category
    with _open(db) as catalog:
        products = catalog.products(**filters)
    if as_json:
        _echo_json(products)
        return
    if not products:
        click.echo("0 products" + (" match" if filters else ""))
        return
    for product in products:
        # Fields come from CSVs, HQ and kiosks' teaching: escaped so none can drive the terminal.
        shown = {k: printable(product[k]) for k in ("id", "name", "category")}
        price = "" if product["price"] is None else f"  {product['price']:.2f}"
        click.echo(f"{shown['id']}\t{shown['name']}\t{shown['category']}{price}\t{len(product['references'])} refs")


@catalog_group.command("show")
@db_option
@click.argument("product_id")
@json_option
@domain_errors
def show_command(db, product_id, as_json) -> None:
    """Show one product, its attributes and references.

    \b
    Example:
      shelfsight catalog show --db store.db cola-330
    """
    with _open(db) as catalog:
        product = catalog.product(product_id)
        references = [catalog.reference(r) for r in product["references"]]
        keypoints = {r: len(catalog.keypoints(r)[0]) for r in product["references"]}
    if as_json:
        _echo_json({**product, "references": references})
        return
    for key in ("id", "name", "description", "category", "price", "version"):
        click.echo(f"{key}: {printable(product[key])}")
    for key, value in sorted(product["attributes"].items()):
        click.echo(f"  {printable(key)}: {printable(value)}")
    for ref in references:
        local = " (local)" if ref["local"] else ""
        source = printable(ref["source"] or "-")
        click.echo(f"reference {printable(ref['id'])}{local}: {keypoints[ref['id']]} keypoints, source {source}")


@catalog_group.command("search")
@db_option
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@model_option
@click.option("-k", "k", type=click.IntRange(1), default=5, show_default=True, help="How many products.")
@click.option("--category", help="Only this category.")
@click.option(
    "--where", "conditions", multiple=True, metavar="KEY=VALUE", help="Only products with this field/attribute value."
)
@threads_option
@json_option
@domain_errors
def search_command(db, image, model, k, category, conditions, threads, as_json) -> None:
    """Find the products that look most like a photo.

    \b
    Example:
      shelfsight catalog search --db store.db --model model.tflite photo.jpg -k 3
    """
    from shelfsight.edge_app.core.images import load_rgb

    where = _pairs(conditions, "--where") or None
    with _open(db) as catalog, _embedder(model, threads) as embedder:
        hits = catalog.search_image(load_rgb(image), embedder, k, category=category, where=where)
        names = {h.product_id: catalog.product(h.product_id)["name"] for h in hits}
    if as_json:
        _echo_json(
            [
                {
                    "product_id": h.product_id,
                    "name": names[h.product_id],
                    "score": h.score,
                    "reference_id": h.reference_id,
                }
                for h in hits
            ]
        )
        return
    if not hits:
        click.echo("no matching products")
    for rank, hit in enumerate(hits, 1):
        click.echo(f"{rank}. {printable(hit.product_id)}\t{printable(names[hit.product_id])}\tscore {hit.score:.3f}")


@catalog_group.command("stats")
@db_option
@json_option
@domain_errors
def stats_command(db, as_json) -> None:
    """Counts, version and model of a catalog.

    \b
    Example:
      shelfsight catalog stats --db store.db
    """
    with _open(db) as catalog:
        stats = catalog.stats()
    if as_json:
        _echo_json(stats)
        return
    for key, value in stats.items():
        click.echo(f"{key}: {printable(value)}")


@catalog_group.command("reembed")
@db_option
@model_option
@threads_option
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Photos per embedding batch.")
@progress_option
@domain_errors
def reembed_command(db, model, threads, batch_size, progress) -> None:
    """Recompute all embeddings with a new model (from the originals, or the stored copies).

    All or nothing, in one transaction. Store copies then need a snapshot (sync sends one).

    \b
    Example:
      shelfsight catalog reembed --db store.db --model new-model.tflite
    """
    from shelfsight.catalog.ingest import IngestOptions, reembed
    from shelfsight.catalog.schema import MODEL_BOUND_META

    with _open(db) as catalog, _embedder(model, threads) as embedder:
        calibrated = catalog.get_meta(MODEL_BOUND_META[0]) is not None
        version = reembed(catalog, embedder, IngestOptions(batch_size=batch_size, progress=wants_progress(progress)))
        count = catalog.stats()["references"]
    click.echo(f"re-embedded {count} references with model {embedder.fingerprint[:12]}; catalog version {version}")
    if calibrated:
        click.echo(
            "the old model's 'not in catalog' threshold was cleared (kiosks use the safe default): "
            "run `shelfsight eval --calibrate --store` with the new model"
        )


@catalog_group.command("export")
@db_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the snapshot JSON.")
@domain_errors
def export_command(db, out) -> None:
    """Write the whole catalog as a JSON snapshot (the format sync uses).

    \b
    Example:
      shelfsight catalog export --db store.db --out snapshot.json
    """
    with _open(db) as catalog:
        snapshot = catalog.export_snapshot()
    try:
        Path(out).write_text(json.dumps(snapshot) + "\n")
    except OSError as exc:
        raise InputError(f"{out}: cannot write the snapshot ({exc})") from exc
    click.echo(f"wrote {out}: version {snapshot['version']}, {len(snapshot['records'])} records")


COMMANDS = [catalog_group]

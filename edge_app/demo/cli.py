"""`shelfsight demo`: the whole pipeline on built-in sample data, or on your own folders."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from shelfsight.edge_app.core.clitools import domain_errors
from shelfsight.edge_app.demo.run import run_demo

log = logging.getLogger(__name__)


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where sample data and the catalog go (default: ~/.cache/shelfsight/demo).",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A .tflite embedder (default: the bundled model).",
)
@click.option(
    "--catalog-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="ImageFolder of reference photos (default: the built-in products).",
)
@click.option(
    "--products",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="products.csv (sku,name,description,category,price) for --catalog-dir.",
)
@click.option(
    "--queries",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="ImageFolder of query photos to evaluate on.",
)
@click.option(
    "--clip",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A video to play through the kiosk (default: the built-in clip).",
)
@click.option("--threads", type=int, default=2, show_default=True, help="Interpreter threads.")
@click.option("--global-only", is_flag=True, help="Skip geometric verification (the 'global' pipeline).")
@click.option("--camera", default=None, help="Recognise live from a webcam index or stream URL instead of a clip.")
@click.option(
    "--seconds",
    type=float,
    default=0,
    show_default=True,
    help="With --camera/--serve: stop after this long (0: Ctrl-C).",
)
@click.option(
    "--serve", is_flag=True, help="Afterwards keep serving the kiosk page (on the looping clip or the camera)."
)
@click.option("--port", type=int, default=8080, show_default=True, help="Port of the kiosk page with --serve.")
@domain_errors
def demo_command(
    workdir: Path | None,
    model: Path | None,
    catalog_dir: Path | None,
    products: Path | None,
    queries: Path | None,
    clip: Path | None,
    threads: int,
    global_only: bool,
    camera: str | None,
    seconds: float,
    serve: bool,
    port: int,
) -> None:
    """Run the edge pipeline end to end on built-in rendered products (or on your folders).

    \b
    Examples:
      shelfsight demo
      shelfsight demo --serve --port 8080
      shelfsight demo --catalog-dir refs/ --products products.csv --clip shelf.mp4
      shelfsight demo --catalog-dir refs/ --products products.csv --camera 0 --serve
    """
    run_demo(workdir, model, catalog_dir, products, queries, clip, threads, global_only, serve, port, camera, seconds)


COMMANDS: list[click.Command] = [demo_command]

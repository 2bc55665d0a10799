"""`shelfsight catalog ...` end to end with the real tiny int8 TFLite model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shelfsight.catalog.ingest import build_catalog, collect_entries
from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.cli import build_cli
from shelfsight.edge_app.core.spec import load_spec
from tests.support.fakes import ProjectionEmbedder


def run(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), ["catalog", *args], catch_exceptions=False)


def test_build_inspect_search(tmp_path: Path, tiny_model: Path, tiny_dataset: dict[str, Path]) -> None:
    db = str(tmp_path / "store.db")
    photos = tiny_dataset["catalog"]
    result = run(
        "build", "--model", str(tiny_model), "--images", str(photos), "--db", db, "--no-progress", "--dedupe", "0"
    )
    assert result.exit_code == 0, result.output
    assert "products: 6 added" in result.output and "references: 12 added" in result.output

    stats = json.loads(run("stats", "--db", db, "--json").output)
    assert stats["products"] == 6 and stats["references"] == 12 and stats["embedding_dim"] == 32

    listing = run("list", "--db", db).output.splitlines()
    assert len(listing) == 6 and listing[0].startswith("product-00\tproduct-00") and listing[0].endswith("2 refs")

    shown = run("show", "--db", db, "product-03").output
    assert "name: product-03" in shown and shown.count("reference product-03/") == 2

    # The few-step tiny model barely separates products, so only the plumbing is checked here;
    # ranking quality is covered with a discriminative embedder in test_store/test_ingest.
    photo = next((photos / "product-04").iterdir())
    hits = json.loads(run("search", "--db", db, "--model", str(tiny_model), str(photo), "-k", "3", "--json").output)
    assert len(hits) == 3 and len({h["product_id"] for h in hits}) == 3
    assert all(h["product_id"].startswith("product-0") and -1.0 <= h["score"] <= 1.0 + 1e-6 for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    text = run("search", "--db", db, "--model", str(tiny_model), str(photo), "-k", "2", "--category", "none").output
    assert text == "no matching products\n"


def test_add_remove_and_errors(tmp_path: Path, tiny_model: Path, tiny_dataset: dict[str, Path]) -> None:
    db = str(tmp_path / "store.db")
    photo = str(next((tiny_dataset["catalog"] / "product-01").iterdir()))
    result = run(
        "add",
        "--db",
        db,
        "cola",
        "--name",
        "Cola",
        "--category",
        "drinks",
        "--price",
        "1.5",
        "--attr",
        "brand=Fizz",
        "--image",
        photo,
        "--model",
        str(tiny_model),
    )
    # product, reference, and the thumbnail made from it
    assert result.exit_code == 0 and "added product cola" in result.output and "catalog version 3" in result.output
    assert run("add", "--db", db, "cola", "--price", "2").output.splitlines() == [
        "updated product cola",
        "catalog version 4",
    ]
    product = json.loads(run("show", "--db", db, "cola", "--json").output)
    assert product["attributes"] == {"brand": "Fizz"} and product["price"] == 2.0
    reference = product["references"][0]["id"]
    assert "catalog version 5" in run("remove", "--db", db, "--reference", reference).output
    assert "catalog version 6" in run("remove", "--db", db, "cola").output

    missing = run("remove", "--db", db, "cola")
    assert missing.exit_code == 1 and "Error: no product 'cola'" in missing.output and "Traceback" not in missing.output
    assert "is new: a name is required" in run("add", "--db", db, "new-thing").output
    nodb = run("stats", "--db", str(tmp_path / "nope.db"))
    assert nodb.exit_code == 1 and "no such catalog" in nodb.output


def _page_count(db: Path) -> int:
    with Catalog(db) as catalog:
        return int(catalog.db.execute("PRAGMA page_count").fetchone()[0])


def test_add_on_a_full_disk_changes_nothing_and_says_so(
    tmp_path: Path, tiny_model: Path, tiny_dataset: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own "database or disk is full" (a page limit) after the product and some photos were written."""
    import shelfsight.catalog.store as store

    photos = [
        str(p) for folder in ("product-01", "product-02") for p in sorted((tiny_dataset["catalog"] / folder).iterdir())
    ]
    args = ["cola", "--name", "Cola", *(a for p in photos for a in ("--image", p)), "--model", str(tiny_model)]
    seed = tmp_path / "seed.db"
    with Catalog(seed) as catalog:
        catalog.add_product("other", "Other")
    scratch, db = tmp_path / "scratch.db", tmp_path / "store.db"
    for copy in (scratch, db):
        copy.write_bytes(seed.read_bytes())
    before = _page_count(db)
    assert run("add", "--db", str(scratch), *args).exit_code == 0
    needed = _page_count(scratch) - before
    assert needed > 2  # the product and every photo take pages: the limit below fails on the last ones

    opened = store.open_catalog

    def full_disk(*a: object, **kw: object):  # type: ignore[no-untyped-def]
        conn = opened(*a, **kw)  # type: ignore[arg-type]
        conn.execute(f"PRAGMA max_page_count = {before + needed - 1}")
        return conn

    monkeypatch.setattr(store, "open_catalog", full_disk)
    result = CliRunner().invoke(build_cli(), ["catalog", "add", "--db", str(db), *args])
    monkeypatch.undo()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "database or disk is full" in result.output and "nothing was changed" in result.output
    assert "added" not in result.output
    with Catalog(db) as catalog:
        assert [p["id"] for p in catalog.products()] == ["other"] and catalog.stats()["references"] == 0
        assert catalog.version == 1


def test_other_model_then_reembed(tmp_path: Path, tiny_model: Path, tiny_dataset: dict[str, Path]) -> None:
    db = tmp_path / "store.db"
    build_catalog(db, ProjectionEmbedder(seed=4), collect_entries(tiny_dataset["catalog"]))
    photo = str(next((tiny_dataset["catalog"] / "product-02").iterdir()))
    refused = run("search", "--db", str(db), "--model", str(tiny_model), photo)
    assert refused.exit_code == 1 and "catalog reembed" in refused.output

    result = run("reembed", "--db", str(db), "--model", str(tiny_model), "--no-progress")
    assert result.exit_code == 0 and "re-embedded 12 references" in result.output
    assert len(json.loads(run("search", "--db", str(db), "--model", str(tiny_model), photo, "--json").output)) == 5
    with Catalog(db) as cat:
        assert cat.model_fingerprint == load_spec(tiny_model).fingerprint

    out = tmp_path / "snapshot.json"
    assert "18 records" in run("export", "--db", str(db), "--out", str(out)).output  # 6 products + 12 references
    snapshot = json.loads(out.read_text())
    with Catalog(tmp_path / "copy.db") as copy:
        copy.replace_with_snapshot(snapshot)
        assert copy.stats()["references"] == 12


@pytest.mark.parametrize("command", ["build", "add", "remove", "list", "show", "search", "stats", "reembed", "export"])
def test_every_command_has_an_example(command: str) -> None:
    assert "Example:" in run(command, "--help").output


def test_catalog_never_imports_tensorflow() -> None:
    code = (
        "import sys, shelfsight.catalog, shelfsight.catalog.cli, shelfsight.catalog.ingest, shelfsight.catalog.store, "
        "shelfsight.catalog.index, shelfsight.edge_app.core.features; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


def test_list_says_when_empty_and_filters_as_people_type(tmp_path: Path) -> None:
    db = str(tmp_path / "store.db")
    with Catalog(db) as catalog:
        assert run("list", "--db", db).output == "0 products\n"
        catalog.add_product("milk", "Milk 1l", category="Milk", price=1.95, size=1)
        catalog.add_product("cola", "Cola", category="drinks", price=1.2)
    assert run("list", "--db", db, "--where", "price=1.95").output.startswith("milk\t")
    assert run("list", "--db", db, "--where", "price=1.950", "--where", "size=1.0").output.startswith("milk\t")
    assert run("list", "--db", db, "--category", "milk").output.startswith("milk\t")
    assert run("list", "--db", db, "--category", "MILK", "--where", "price=2").output == "0 products match\n"

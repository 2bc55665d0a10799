"""Fixtures for the kiosk tests: the rendered sample set, its clip, a real catalog, and the embedder.

`embedder` is the suite's real tiny int8 TFLite model (`tiny_model`, from
tests/conftest.py); `tests.support.fakes.ProjectionEmbedder` serves only where a
second, different model is needed (a catalog built with another model).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from shelfsight.catalog.store import Catalog
from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.demo.samples import (
    Clip,
    SampleSet,
    generate_clip,
    generate_sample_set,
)
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.runtime.factory import open_embedder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture()
def rendered_page(tmp_path: Path) -> Callable[[str], str]:
    """The DOM of a page as headless Chromium leaves it after its scripts ran (skips without Chromium)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt install chromium)")
    chromium = CHROMIUM

    def render(url: str) -> str:
        return subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--virtual-time-budget=3000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout

    return render


@pytest.fixture(scope="session")
def sample_set(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample_set(
        tmp_path_factory.mktemp("samples"), n_products=8, refs_per_product=2, queries_per_product=3
    )


@pytest.fixture(scope="session")
def sample_clip(sample_set: SampleSet) -> Clip:
    return generate_clip(sample_set.root / "clip.avi", sample_set, seconds=6.0, fps=5.0, size=(320, 240))


@pytest.fixture(scope="session")
def embedder(tiny_model: Path) -> Embedder:
    """The committed tiny int8 TFLite model, opened once for the session."""
    return open_embedder(tiny_model, threads=1)


@pytest.fixture(scope="session")
def sample_catalog(
    sample_set: SampleSet, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A real SQLite catalog of the rendered sample products (references, thumbnails, ORB keypoints)."""
    from shelfsight.edge_app.demo.run import build_sample_catalog

    catalog = build_sample_catalog(
        tmp_path_factory.mktemp("catalog") / "catalog.db",
        sample_set.catalog_dir,
        sample_set.products_csv,
        embedder,
    )
    yield catalog
    catalog.close()


@pytest.fixture(scope="session")
def full_config(sample_set: SampleSet) -> RecognitionConfig:
    """Verification over every product, so the outcome rests on real ORB matching, not on the stand-in embedder."""
    return RecognitionConfig(shortlist=sample_set.n_products, unknown_threshold=0.5, accept_similarity=1.01)


@pytest.fixture()
def unknown_id(sample_set: SampleSet) -> str:
    """A sample product the test's store catalog (`store_catalog`) does not have."""
    return sorted(p.name for p in sample_set.catalog_dir.iterdir() if p.is_dir())[-1]


@pytest.fixture()
def store_catalog(tmp_path: Path, sample_catalog: Any, unknown_id: str) -> Iterator[Catalog]:
    """This test's own copy of the sample catalog (HQ's), without `unknown_id`."""
    with Catalog(tmp_path / "store.db") as catalog:
        catalog.replace_with_snapshot(json.loads(json.dumps(sample_catalog.export_snapshot())))
        catalog.remove_product(unknown_id)
        yield catalog

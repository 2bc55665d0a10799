"""Fixtures for sync tests: a real Mosquitto per test, HQ keys, a master catalog, kiosks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from shelfsight.catalog.sync.envelope import (
    Signer,
    Verifier,
    generate_keys,
    load_signer,
    load_verifier,
)
from shelfsight.edge_app.kiosk.updates.worker import KioskSync
from tests.support.broker import Broker, mosquitto_binary
from tests.support.sync import Hq, kiosk_config, seed_kiosk


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "broker_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (scripts/setup.sh installs it)")
    started: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        broker = Broker(tmp_path / f"broker{len(started)}", **kwargs).start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.kill()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


@pytest.fixture(scope="session")
def hq_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Verifier, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public = generate_keys(folder)
    return load_signer(private), load_verifier(public), public


@pytest.fixture
def hq(tmp_path: Path, broker: Broker, hq_keys: tuple[Signer, Verifier, Path]) -> Iterator[Hq]:
    h = Hq(tmp_path / "hq", broker, hq_keys[0])
    yield h
    h.close()


@pytest.fixture
def kiosk_factory(
    tmp_path: Path, broker: Broker, hq_keys: tuple[Signer, Verifier, Path]
) -> Iterator[Callable[..., KioskSync]]:
    made: list[KioskSync] = []

    def make(
        kiosk_id: str = "k1",
        *,
        start: bool = True,
        hq: Hq | None = None,
        on: Broker | None = None,
        hooks: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> KioskSync:
        """A kiosk seeded from `hq` (first time only), connected to `on` (default: the test's broker)."""
        data_dir = tmp_path / "kiosks" / kiosk_id
        if hq is not None and not data_dir.exists():
            seed_kiosk(data_dir, hq)
        public_key = overrides.pop("public_key", hq_keys[2])
        config = kiosk_config(on or broker, public_key, kiosk_id, **overrides)
        sync = KioskSync(config, data_dir, **(hooks or {}))
        if start:
            sync.start()
        made.append(sync)
        return sync

    yield make
    for sync in made:
        sync.stop()

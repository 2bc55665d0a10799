"""kill -9 of a kiosk at random moments during apply: its catalog is always exactly a published version."""

from __future__ import annotations

import json
from pathlib import Path

from shelfsight.catalog.sync.envelope import Signer, Verifier
from tests.support.broker import Broker
from tests.support.sync import (
    WAIT,
    Hq,
    Tap,
    check_kiosk_catalog,
    kill_trials,
    kiosk_config,
    seed_kiosk,
)


def test_kill_nine_during_apply_never_corrupts(
    hq: Hq, broker: Broker, hq_keys: tuple[Signer, Verifier, Path], tmp_path: Path
) -> None:
    hq.add(range(20))
    hq.publisher.publish()
    hq.publisher.max_message_bytes = 64 * 1024  # the big steps go by snapshot
    data_dir = tmp_path / "killed-kiosk"
    seed_kiosk(data_dir, hq)
    config = kiosk_config(broker, hq_keys[2], "victim", hold_s=0.5)
    figures = kill_trials(hq, config, data_dir, trials=20, products_per_step=60)
    assert figures["old"] + figures["new"] + figures["other_published"] == 20, figures
    assert figures["old"] > 0 and figures["new"] > 0, figures  # kills landed before and after commits
    # The broker published the killed kiosk's last will.
    status = Tap(broker, hq.topics.status("victim"), client_id="watcher")
    assert status.wait(lambda ms: bool(ms))
    assert json.loads(status.messages[-1].payload)["state"] == "offline"
    status.close()
    # And a restarted kiosk converges on HQ's latest version.
    from shelfsight.edge_app.kiosk.updates.worker import KioskSync

    with KioskSync(config, data_dir) as kiosk:
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT), kiosk.last_error
    check_kiosk_catalog(data_dir, {hq.catalog.version: hq.catalog.export_snapshot()["records"]})

"""Fleet simulation: 50 kiosk clients on one broker converge on one update."""

from __future__ import annotations

from pathlib import Path

from shelfsight.catalog.sync.envelope import Signer, Verifier
from tests.support.broker import Broker
from tests.support.sync import WAIT, Hq, RunningServer, run_fleet


def test_fifty_kiosks_converge_on_one_update(
    hq: Hq, broker: Broker, hq_keys: tuple[Signer, Verifier, Path], tmp_path: Path
) -> None:
    hq.add(range(10))
    hq.publisher.publish()
    server = RunningServer(hq, hq_keys[0], poll_s=0.2)
    try:
        figures = run_fleet(hq, broker, hq_keys[2], tmp_path / "fleet", kiosks=50, changed=300, timeout=4 * WAIT)
    finally:
        server.stop()
    assert figures["converged"] == 50, figures

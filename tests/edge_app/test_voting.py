from __future__ import annotations

import pytest

from shelfsight.edge_app.recognition.pipeline import Recognition
from shelfsight.edge_app.recognition.voting import TemporalVoter


def rec(decision: str, pid: str | None = None) -> Recognition:
    product = {"product_id": pid, "name": pid} if pid else None
    return Recognition(decision, product, 0.9 if pid else 0.0, ())


def test_announces_only_after_agreeing_frames_and_survives_flicker() -> None:
    voter = TemporalVoter(window=5, min_votes=3)
    assert voter.push(rec("product", "A")).decision == "starting"
    assert voter.push(rec("product", "A")).decision == "starting"
    announced = voter.push(rec("product", "A"))
    assert (announced.decision, announced.product_id, announced.votes) == ("product", "A", 3)
    # Single misreads do not change the announcement.
    assert voter.push(rec("product", "B")).product_id == "A"
    assert voter.push(rec("unknown")).product_id == "A"
    # Product taken away: "empty" once three empty frames are in the window.
    voter.push(rec("empty"))
    voter.push(rec("empty"))
    final = voter.push(rec("empty"))
    assert (final.decision, final.product_id) == ("empty", None)
    assert final.recognition is not None and final.recognition.decision == "empty"


def test_switches_product_and_reports_unknown() -> None:
    voter = TemporalVoter(window=3, min_votes=2)
    for _ in range(3):
        voter.push(rec("product", "A"))
    voter.push(rec("product", "B"))
    assert voter.push(rec("product", "B")).product_id == "B"
    voter.push(rec("unknown"))
    assert voter.push(rec("unknown")).decision == "unknown"
    voter.reset()
    assert voter.current.decision == "starting"


def test_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError):
        TemporalVoter(window=2, min_votes=3)

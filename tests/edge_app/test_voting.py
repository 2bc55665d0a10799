"""Temporal voting with scripted per-frame decisions: what the shopper's screen announces after each frame."""

from __future__ import annotations

import pytest

from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.recognition.pipeline import Recognition
from shelfsight.edge_app.recognition.voting import TemporalVoter


def rec(decision: str, pid: str | None = None) -> Recognition:
    product = {"product_id": pid, "name": pid} if pid else None
    return Recognition(decision, product, 0.9 if pid else 0.0, ())


def frame(token: str) -> Recognition:
    """'A', 'B': that product; 'u': not recognised; '.': empty view."""
    return {"u": rec("unknown"), ".": rec("empty")}.get(token) or rec("product", token)


def announced(voter: TemporalVoter, script: str) -> str:
    """What the screen shows after each frame of `script`, one token per frame ('-': still starting)."""
    shown = []
    for token in script:
        a = voter.push(frame(token))
        shown.append({"starting": "-", "unknown": "u", "empty": "."}.get(a.decision) or str(a.product_id))
    return "".join(shown)


def test_announces_only_after_agreeing_frames() -> None:
    voter = TemporalVoter(window=5, min_votes=3)
    assert announced(voter, "AAA") == "--A"
    a = voter.current
    assert (a.decision, a.product_id, a.votes, a.window) == ("product", "A", 3, 5)
    assert a.recognition is not None and a.recognition.product_id == "A"


@pytest.mark.parametrize(
    "script, screen",
    [
        # One odd frame, wherever it falls, never flips the answer (nor does a run of them shorter than the hold).
        ("AAAB" + "A" * 4, "--A" + "A" * 5),
        ("AAAu" + "A" * 4, "--A" + "A" * 5),
        ("AAA." + "A" * 4, "--A" + "A" * 5),
        ("u" + "AAAA", "---AA"),
        # The flicker of issue 12: product / not recognised / product while the shopper turns it.
        ("AAAAA" + "uuuuuuuuu" + "AAAAA", "--AAA" + "A" * 9 + "AAAAA"),
        ("AAAAA" + "u.u.u.u.u" + "AAAAA", "--AAA" + "A" * 9 + "AAAAA"),
    ],
)
def test_short_interruptions_do_not_change_the_announcement(script: str, screen: str) -> None:
    assert announced(TemporalVoter(window=5, min_votes=3), script) == screen


def test_a_product_turned_away_for_long_becomes_unknown_after_the_hold() -> None:
    voter = TemporalVoter(window=5, min_votes=3)  # hold: 10 frames
    screen = announced(voter, "AAAAA" + "u" * 12)
    assert screen == "--AAA" + "A" * 9 + "uuu"
    assert voter.current.decision == "unknown" and voter.current.recognition is not None


def test_taking_the_product_away_falls_back_to_empty_after_a_short_grace() -> None:
    voter = TemporalVoter(window=5, min_votes=3)
    screen = announced(voter, "AAAAA" + "." * 11)
    assert screen == "--AAA" + "A" * 9 + ".."
    a = voter.current
    assert (a.decision, a.product_id) == ("empty", None)
    assert a.recognition is not None and a.recognition.decision == "empty"


def test_another_product_needs_a_stronger_majority_than_the_first() -> None:
    voter = TemporalVoter(window=5, min_votes=3)  # switching takes 4 of 5
    # B three times out of five would have announced B from an empty screen, but does not replace A.
    assert announced(voter, "AAAAA" + "BBAB") == "--AAA" + "AAAA"
    assert announced(voter, "B") == "B"  # now 4 of the last 5: B B A B B
    assert voter.current.votes == 4


def test_swapping_products_switches_within_the_window() -> None:
    voter = TemporalVoter(window=5, min_votes=3)
    assert announced(voter, "AAAAA" + "BBBB") == "--AAA" + "AAAB"


def test_an_unknown_product_then_a_catalog_product() -> None:
    voter = TemporalVoter(window=5, min_votes=3)
    assert announced(voter, "uuu" + "AAAA" + "uu" + "AA") == "--u" + "uuuA" + "AA" + "AA"


def test_empty_to_product_takes_the_plain_majority() -> None:
    voter = TemporalVoter(window=5, min_votes=3)
    assert announced(voter, "....." + "AAA") == "--..." + "..A"


def test_reset_starts_over() -> None:
    voter = TemporalVoter(window=3, min_votes=2)
    announced(voter, "AAA")
    voter.reset()
    assert voter.current.decision == "starting"
    assert announced(voter, "BB") == "-B"


def test_small_windows_still_have_hysteresis() -> None:
    voter = TemporalVoter(window=3, min_votes=2)  # switch: 3 of 3; hold: 6 frames
    assert announced(voter, "AAA" + "BB" + "B") == "-AA" + "AA" + "B"
    # Window 1: every frame is a majority of one, yet the hold (2 frames) still bridges a single miss.
    assert announced(TemporalVoter(window=1, min_votes=1), "AuAuuB") == "AAAAuB"


def test_from_config_and_impossible_settings() -> None:
    voter = TemporalVoter.from_config(RecognitionConfig(vote_window=7, vote_min=4))
    assert (voter.window, voter.min_votes, voter.switch_votes, voter.hold_frames) == (7, 4, 5, 14)
    with pytest.raises(ValueError):
        TemporalVoter(window=2, min_votes=3)
    with pytest.raises(ValueError):
        TemporalVoter(window=5, min_votes=3, switch_votes=2)
    with pytest.raises(ValueError):
        TemporalVoter(window=5, min_votes=3, hold_frames=-1)

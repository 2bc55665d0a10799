"""Temporal voting: announce what the camera sees only once it is stable over a few frames, and keep it stable.

Single frames flicker (motion blur, a product turned edge-on), so the kiosk
keeps the last `window` per-frame decisions. The rules have hysteresis: it is
easier to make the first announcement than to change one, so one odd frame (or
a short run of them) never flips the shopper's screen.

- From "starting" or "empty": whatever `min_votes` of the window agree on is announced.
- A product or "unknown" is replaced by a *different product* only when that product
  holds `switch_votes` of the window (a stronger majority than `min_votes`).
- It gives way to "unknown" or "empty" (the weaker answers: a product turned away
  reads as unknown, one lowered for a moment as empty) only after `hold_frames`
  frames in a row without a vote for it, and then only to what `min_votes` agree on.
  So product/unknown/product within a second stays "product", and the screen
  returns to "show a product" a moment after the product is taken away.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.recognition.pipeline import Recognition

# What a frame votes for: ("product", id), ("unknown", None) or ("empty", None).
Vote = tuple[str, str | None]


@dataclass(frozen=True)
class Announcement:
    decision: str  # "product" | "unknown" | "empty" | "starting"
    product_id: str | None
    votes: int  # frames in the window that agree
    window: int
    recognition: Recognition | None  # the most recent frame that voted for this announcement


def default_switch_votes(window: int, min_votes: int) -> int:
    """One vote more than announcing takes, as far as the window allows."""
    return min(window, min_votes + 1)


def default_hold_frames(window: int) -> int:
    """Two windows: about a second at the kiosk's 10 frames a second with the default window of 5."""
    return 2 * window


class TemporalVoter:
    def __init__(
        self,
        window: int = 5,
        min_votes: int = 3,
        *,
        switch_votes: int | None = None,
        hold_frames: int | None = None,
    ) -> None:
        if not 1 <= min_votes <= window:
            raise ValueError("need 1 <= min_votes <= window")
        switch = default_switch_votes(window, min_votes) if switch_votes is None else switch_votes
        hold = default_hold_frames(window) if hold_frames is None else hold_frames
        if not min_votes <= switch <= window:
            raise ValueError("need min_votes <= switch_votes <= window")
        if hold < 0:
            raise ValueError("need hold_frames >= 0")
        self.window, self.min_votes, self.switch_votes, self.hold_frames = window, min_votes, switch, hold
        self._votes: deque[Vote] = deque(maxlen=window)
        self._latest: dict[Vote, Recognition] = {}
        self._current = Announcement("starting", None, 0, window, None)
        self._absent = 0  # frames in a row without a vote for the current announcement

    @classmethod
    def from_config(cls, config: RecognitionConfig) -> "TemporalVoter":
        return cls(config.vote_window, config.vote_min)

    @property
    def current(self) -> Announcement:
        return self._current

    def _announce(self, vote: Vote, count: int) -> None:
        self._current = Announcement(vote[0], vote[1], count, self.window, self._latest[vote])
        self._absent = 0

    def _challenger(self, counts: Counter[Vote], current: Vote) -> tuple[Vote, int] | None:
        """The vote that replaces the current product or "unknown" announcement now, if any."""
        for vote, count in counts.most_common():
            if vote == current:
                continue
            if vote[0] == "product" and count >= self.switch_votes:
                return vote, count  # another product, clearly: the shopper swapped products
            if self._absent >= self.hold_frames and count >= self.min_votes:
                return vote, count  # the announced one has been gone for a while
        return None

    def push(self, recognition: Recognition) -> Announcement:
        vote: Vote = (recognition.decision, recognition.product_id if recognition.decision == "product" else None)
        self._votes.append(vote)
        self._latest[vote] = recognition
        counts = Counter(self._votes)
        current: Vote = (self._current.decision, self._current.product_id)
        self._absent = 0 if vote == current else self._absent + 1
        if self._current.decision in ("starting", "empty"):
            winner, count = counts.most_common(1)[0]
            if count >= self.min_votes and winner != current:
                self._announce(winner, count)
            elif self._current.decision == "empty":
                self._refresh(counts, current)
        else:
            challenger = self._challenger(counts, current)
            if challenger is not None:
                self._announce(*challenger)
            else:
                self._refresh(counts, current)
        # Forget recognitions that no longer have a vote in the window (the current one's stays for the page).
        keep = set(counts) | {current, (self._current.decision, self._current.product_id)}
        self._latest = {v: r for v, r in self._latest.items() if v in keep}
        return self._current

    def _refresh(self, counts: Counter[Vote], current: Vote) -> None:
        """Keep the announcement, with its vote count and its newest recognition."""
        self._current = Announcement(
            self._current.decision,
            self._current.product_id,
            counts.get(current, 0),
            self.window,
            self._latest.get(current, self._current.recognition),
        )

    def reset(self) -> None:
        self._votes.clear()
        self._latest.clear()
        self._current = Announcement("starting", None, 0, self.window, None)
        self._absent = 0

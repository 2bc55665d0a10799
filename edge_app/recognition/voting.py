"""Temporal voting: announce what the camera sees only once it is stable over a few frames.

Single frames flicker (motion blur, a product turned edge-on), so the kiosk
keeps the last `window` per-frame decisions and changes its announcement only
when `min_votes` of them agree. Until then the previous announcement stands.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

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


class TemporalVoter:
    def __init__(self, window: int = 5, min_votes: int = 3) -> None:
        if not 1 <= min_votes <= window:
            raise ValueError("need 1 <= min_votes <= window")
        self.window, self.min_votes = window, min_votes
        self._votes: deque[Vote] = deque(maxlen=window)
        self._latest: dict[Vote, Recognition] = {}
        self._current = Announcement("starting", None, 0, window, None)

    @property
    def current(self) -> Announcement:
        return self._current

    def push(self, recognition: Recognition) -> Announcement:
        vote: Vote = (recognition.decision, recognition.product_id if recognition.decision == "product" else None)
        self._votes.append(vote)
        self._latest[vote] = recognition
        counts = Counter(self._votes)
        winner, count = counts.most_common(1)[0]
        if count >= self.min_votes:
            self._current = Announcement(winner[0], winner[1], count, self.window, self._latest[winner])
        elif self._current.decision != "starting":
            current_vote: Vote = (self._current.decision, self._current.product_id)
            self._current = Announcement(
                self._current.decision,
                self._current.product_id,
                counts.get(current_vote, 0),
                self.window,
                self._current.recognition,
            )
        # Forget recognitions that no longer have a vote in the window.
        self._latest = {v: r for v, r in self._latest.items() if v in counts}
        return self._current

    def reset(self) -> None:
        self._votes.clear()
        self._latest.clear()
        self._current = Announcement("starting", None, 0, self.window, None)

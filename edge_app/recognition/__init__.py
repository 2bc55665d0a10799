"""Recognition: ROI -> embedding -> shortlist -> geometric verification -> decision, plus temporal voting."""

from shelfsight.edge_app.recognition.pipeline import (
    Candidate,
    Recognition,
    Recognizer,
    check_compatible,
)
from shelfsight.edge_app.recognition.voting import Announcement, TemporalVoter

__all__ = ["Announcement", "Candidate", "Recognition", "Recognizer", "TemporalVoter", "check_compatible"]

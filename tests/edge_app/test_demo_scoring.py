"""`shelfsight demo` scores each second: "unknown" is the right answer for a product not in the catalog."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shelfsight.edge_app.demo.run import play
from shelfsight.edge_app.demo.samples import Clip, ClipSegment


class ScriptedKiosk:
    """Announces a fixed answer per frame; its catalog holds only `known` (the rule under test, not recognition)."""

    def __init__(self, known: list[str], answers: list[tuple[str, str | None]]) -> None:
        self.recognizer = SimpleNamespace(catalog=SimpleNamespace(products=lambda: [{"id": k} for k in known]))
        self.answers = iter(answers)

    def process(self, frame: Any) -> Any:
        decision, product_id = next(self.answers)
        return SimpleNamespace(frame=None, announcement=SimpleNamespace(decision=decision, product_id=product_id))


def test_unknown_is_correct_for_a_product_not_in_the_catalog() -> None:
    truth = Clip(
        Path("clip.avi"),
        1.0,
        (8, 8),
        (ClipSegment(0, 1, None), ClipSegment(1, 2, "cola"), ClipSegment(2, 3, "jam"), ClipSegment(3, 4, "jam")),
    )
    kiosk = ScriptedKiosk(["cola"], [("empty", None), ("product", "cola"), ("unknown", None), ("product", "cola")])
    report = play(kiosk, [object()] * 4, 1.0, truth)  # type: ignore[arg-type]
    assert [s.correct for s in report.seconds] == [None, True, True, False]
    assert report.accuracy() == 2 / 3

"""The JSON the page and API clients get: one shape per thing, described in openapi.json.

A product is always a *card* (`product_card`: id, name, price, description, category,
thumbnail_url); a ranked product adds `confidence` (the decision's scale: 0.5 is the
announce threshold, see recognition.pipeline) and, from /search, `verified` and the raw
`evidence` behind it. Nothing internal (reference ids, row versions, exception reprs)
goes out.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from shelfsight.catalog.index import value_matches
from shelfsight.edge_app.core.errors import ShelfsightError
from shelfsight.edge_app.recognition import Recognition
from shelfsight.edge_app.recognition.events import product_card
from shelfsight.edge_app.recognition.pipeline import Candidate
from shelfsight.edge_app.recognition.state import KioskState
from shelfsight.edge_app.web.service import KioskService, ProblemLike

API_VERSION = "1.0"
MAX_ALTERNATIVES = 3  # cards the shopper's screen offers beside (or instead of) the answer


def card_of(kiosk: KioskService, product_id: str) -> dict[str, Any] | None:
    """The product's card, or None if it left the catalog since it was ranked (an undo, a sync delta)."""
    try:
        return product_card(kiosk.product_info(product_id))
    except ShelfsightError:
        return None


def ranked_cards(
    kiosk: KioskService, candidates: Iterable[Candidate], *, evidence: bool = False
) -> list[dict[str, Any]]:
    """Cards with their confidence (and, for /search, the evidence), best first; products gone meanwhile left out."""
    rows = []
    for candidate in candidates:
        card = card_of(kiosk, candidate.product_id)
        if card is not None:
            rows.append(ranked_card(card, candidate, evidence=evidence))
    return rows


def ranked_card(card: dict[str, Any], candidate: Candidate, *, evidence: bool = False) -> dict[str, Any]:
    card = {**card, "confidence": round(candidate.confidence, 4)}
    if evidence:
        card["verified"] = candidate.verified
        card["evidence"] = {"similarity": round(candidate.similarity, 4), "inliers": candidate.inliers}
    return card


def status_payload(problems: Sequence[ProblemLike]) -> dict[str, Any]:
    return {"ok": not any(p.down for p in problems), "problems": [p.to_dict() for p in problems]}


def state_payload(
    kiosk: KioskService, state: KioskState, problems: Sequence[ProblemLike], *, staff: bool = False
) -> dict[str, Any]:
    """What the shopper's screen shows; with `staff`, also the figures only staff see."""
    ann = state.announcement
    rec = ann.recognition
    payload: dict[str, Any] = {
        "decision": ann.decision,
        "product": None,
        "confidence": 0.0,
        "alternatives": [],
        "status": status_payload(problems),
    }
    if rec is not None and ann.decision in ("product", "unknown"):
        if ann.decision == "product" and rec.product_id is not None:
            payload["product"] = card_of(kiosk, rec.product_id)
            if payload["product"] is None:  # removed since it was announced: the next frames decide anew
                payload["decision"] = "starting"
                return payload
        payload["confidence"] = round(rec.confidence, 4)
        # Only products with some evidence: a card a full point below the threshold is noise to a shopper.
        plausible = [c for c in rec.alternatives if c.confidence > 0.0]
        payload["alternatives"] = ranked_cards(kiosk, plausible)[:MAX_ALTERNATIVES]
    if staff:
        payload["diagnostics"] = {
            "fps": round(kiosk.recognition_rate.rate, 2),
            "frame_index": state.frame_index,
            "votes": ann.votes,
            "window": ann.window,
            "frame_decision": state.frame.decision if state.frame is not None else None,
            "camera": kiosk.camera_status(),
        }
    return payload


def matching(kiosk: KioskService, candidates: Iterable[Candidate], filters: dict[str, Any]) -> list[Candidate]:
    """The candidates whose catalog fields (category, attributes) pass every filter (case-insensitive, numbers as numbers)."""
    if not filters:
        return list(candidates)
    kept = []
    for candidate in candidates:
        try:
            info = kiosk.product_info(candidate.product_id)
        except ShelfsightError:
            continue
        fields = {**(info.get("attributes") or {}), **{k: v for k, v in info.items() if k != "attributes"}}
        if all(value_matches(fields.get(key), wanted) for key, wanted in filters.items()):
            kept.append(candidate)
    return kept


def search_payload(kiosk: KioskService, result: Recognition, k: int, filters: dict[str, Any]) -> dict[str, Any]:
    ranked = matching(kiosk, result.candidates, filters)[:k]
    best = result.candidates[0].confidence if result.candidates and result.decision != "empty" else 0.0
    return {
        "decision": result.decision,
        "product": card_of(kiosk, result.product_id) if result.product_id is not None else None,
        "confidence": round(best, 4),
        "results": ranked_cards(kiosk, ranked, evidence=True),
        "timings_ms": {key: round(v, 3) for key, v in result.timings.items()},
    }

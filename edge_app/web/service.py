"""What the page and the HTTP API need from the kiosk: a port the kiosk app implements.

The web layer sits below the kiosk app: it names the calls it makes here and
never imports the app, so the app's construction (camera, sync, releases) can
change without touching the server, and the server is tested against the real
`Kiosk` or anything else with these methods.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from shelfsight.edge_app.recognition import Recognition
from shelfsight.edge_app.recognition.events import AnnouncementFeed
from shelfsight.edge_app.recognition.state import KioskState


class ProblemLike(Protocol):
    """Why part of the kiosk is not working (`down`: /health answers 503)."""

    @property
    def component(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def down(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


class Rate(Protocol):
    @property
    def rate(self) -> float: ...


class TaughtProduct(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class KioskService(Protocol):
    @property
    def recognition_rate(self) -> Rate: ...

    def state(self) -> KioskState: ...

    def frame_jpeg(self) -> bytes | None: ...

    def thumbnail(self, product_id: str) -> bytes | None: ...

    def product_info(self, product_id: str) -> dict[str, Any]: ...

    def camera_status(self) -> dict[str, Any] | None: ...

    @property
    def events(self) -> AnnouncementFeed: ...

    def add_listener(self, listener: Callable[[KioskState], None]) -> None: ...

    def problems(self) -> Sequence[ProblemLike]: ...

    def find_product(self, code: str) -> str | None: ...

    def search(self, rgb: np.ndarray, k: int | None = None) -> Recognition: ...

    def teach(self, product_id: str, name: str, **fields: Any) -> TaughtProduct:
        """Store the recent frames as `product_id`. Fields include `add_to_existing` (views for an id the
        catalog has) and `confirm_similar`: without it, views most of which are recognised as another
        product raise SimilarProductError (`.to_dict()`: that product's id, name, confidence); InputError
        for anything else wrong."""
        ...

    def undo_teach(self, product_id: str) -> dict[str, Any]:
        """Take back this kiosk's latest teach of `product_id`: {"product_id", "removed_product",
        "references_removed", "hq"} ("hq": what became of its enrollment, see openapi.json `Undone`);
        NothingToUndo (an InputError) when there is none."""
        ...

    def health(self) -> dict[str, Any]: ...

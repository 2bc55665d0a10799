"""What the page and the HTTP API need from the kiosk: a port the kiosk app implements.

The web layer sits below the kiosk app: it names the calls it makes here and
never imports the app, so the app's construction (camera, sync, releases) can
change without touching the server, and the server is tested against the real
`Kiosk` or anything else with these methods.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from shelfsight.edge_app.recognition import Recognition
from shelfsight.edge_app.recognition.state import KioskState


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

    def search(self, rgb: np.ndarray) -> Recognition: ...

    def teach(self, product_id: str, name: str, **fields: Any) -> TaughtProduct: ...

    def health(self) -> dict[str, Any]: ...

"""Domain exceptions shared by every part of shelfsight.

Each carries a message meant for a person: the CLI prints it as-is, without a
traceback. Code catches the specific class it can handle and lets the rest
propagate to the CLI boundary.
"""

from __future__ import annotations


class ShelfsightError(Exception):
    """Base class of every error shelfsight raises on purpose."""


class InputError(ShelfsightError):
    """Bad user input: a missing file, an unreadable image, an empty folder."""


class ImageError(InputError):
    """An image that cannot be decoded or is unusable (too small, too blurry)."""


class ModelError(ShelfsightError):
    """A model file that is missing, not TFLite, tampered with or incompatible."""


class ConfigError(ShelfsightError):
    """A configuration file or value that fails validation."""


class CatalogError(ShelfsightError):
    """A catalog that is missing, corrupt, or built with another model."""


class SyncError(ShelfsightError):
    """A sync message that is forged, replayed, malformed or cannot be applied."""


class ParityError(ShelfsightError):
    """A converted model that does not reproduce the float model closely enough."""


class CameraError(ShelfsightError):
    """A camera that cannot be opened or stopped delivering frames."""


class NothingToUndo(InputError):
    """An undo with nothing to take back: never taught here, already undone, or changed since."""


class SimilarProductError(InputError):
    """Views to teach that the kiosk would announce as another known product; teaching them needs a confirmation.

    `product_id`, `name`: the product they look like; `confidence`: the recognition's, in [0, 1].
    """

    def __init__(self, message: str, *, product_id: str, name: str, confidence: float) -> None:
        super().__init__(message)
        self.product_id = product_id
        self.name = name
        self.confidence = confidence

    def to_dict(self) -> dict[str, object]:
        """The product they look like, JSON-safe (what an HTTP answer carries)."""
        return {"product_id": self.product_id, "name": self.name, "confidence": round(self.confidence, 4)}

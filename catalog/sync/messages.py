"""What kiosks send upstream: status, enrollments and their withdrawals (JSON, size-limited, strictly validated).

Kiosks hold no signing key; the broker's ACL is what guarantees a kiosk can
only write its own `status/<id>`, `enroll/<id>` and `withdraw/<id>` topics, and
HQ checks the kiosk id in the payload against the topic.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shelfsight.catalog.sync.codec import validation_problems
from shelfsight.catalog.sync.limits import MAX_PACKET_BYTES, largest_payload
from shelfsight.catalog.sync.topics import check_name
from shelfsight.edge_app.core.errors import ConfigError, SyncError

MAX_STATUS_BYTES = 8 * 1024
# An enrollment travels in one packet, so one packet is its limit (kiosks check before sending).
MAX_ENROLL_BYTES = largest_payload(MAX_PACKET_BYTES)
MAX_ENROLL_FRAMES = 16
# What a clerk may type with a taught product (the kiosk's teach form has the same bounds).
MAX_ENROLL_PRICE = 1e9  # exclusive
MAX_ENROLL_DESCRIPTION_CHARS = 2000
# A withdrawal is two ids and two times: a few hundred bytes; anything near this limit is not one.
MAX_WITHDRAW_BYTES = 4 * 1024
# Unicode categories no typed text contains: controls, format characters, surrogates, private use, unassigned.
_UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn")


class KioskStatus(BaseModel):
    """Retained on `status/<kiosk-id>`; the broker's last will sets `state` to offline."""

    model_config = ConfigDict(extra="forbid")

    kiosk_id: str = Field(max_length=64)
    state: Literal["online", "offline"] = "online"
    catalog_version: int | None = None
    target_version: int | None = None
    model_fingerprint: str | None = Field(default=None, max_length=128)
    last_error: str | None = Field(default=None, max_length=1000)
    fps: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    uptime_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    pending_deltas: int = 0
    updated: float = 0.0


def _kiosk_id(value: str) -> str:
    try:
        return check_name(value, "kiosk id")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


class EnrolledFrame(BaseModel):
    """One camera frame of a product a clerk taught the kiosk."""

    model_config = ConfigDict(extra="forbid")

    embedding: list[float] = Field(min_length=2, max_length=4096)
    fingerprint: str = Field(min_length=1, max_length=128)
    phash: str = Field(default="", pattern=r"^([0-9a-f]{16})?$")
    image_jpeg: str | None = Field(default=None, max_length=400_000)  # base64

    @field_validator("embedding")
    @classmethod
    def _finite(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(x) for x in value):
            raise ValueError("embedding contains NaN or infinity")
        return value

    @field_validator("image_jpeg")
    @classmethod
    def _jpeg(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            head = base64.b64decode(value[:8], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("image_jpeg is not base64") from exc
        if not head.startswith(b"\xff\xd8"):
            raise ValueError("image_jpeg is not a JPEG")
        return value


class TypedFields(BaseModel):
    """What a clerk types with a new product, or the person approving it: the bounds every side checks."""

    model_config = ConfigDict(extra="forbid")

    # Optional, and left out of an enrollment's JSON when None (`Enrollment.to_json`): HQ releases
    # before these fields refuse an enrollment that carries them (`extra="forbid"`).
    price: float | None = Field(default=None, ge=0, lt=MAX_ENROLL_PRICE, allow_inf_nan=False)
    description: str | None = Field(default=None, max_length=MAX_ENROLL_DESCRIPTION_CHARS)

    @field_validator("description")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and any(unicodedata.category(ch) in _UNPRINTABLE for ch in value):
            raise ValueError("description may hold only printable characters")
        return value


# A catalog product id (`catalog.records.check_product_id`): no slash, no space at either end.
PRODUCT_ID_PATTERN = r"^[^/\s](?:[^/]*[^/\s])?$"


class Enrollment(TypedFields):
    """Sent on `enroll/<kiosk-id>`: a product taught locally, for HQ to approve into the master catalog.

    `price` and `description` (from `TypedFields`) are what the clerk typed with a new product;
    `hq approve` uses them unless the person approving gives others.
    """

    model_config = ConfigDict(extra="forbid")

    kiosk_id: str
    product_id: str = Field(min_length=1, max_length=200, pattern=PRODUCT_ID_PATTERN)
    name: str = Field(min_length=1, max_length=500)
    category: str = Field(default="", max_length=200)
    frames: list[EnrolledFrame] = Field(min_length=1, max_length=MAX_ENROLL_FRAMES)
    created: float = 0.0

    _check_kiosk = field_validator("kiosk_id")(_kiosk_id)

    def to_json(self) -> bytes:
        """The payload as kiosks send it: optional fields left out when unset, so older HQs can read it."""
        return self.model_dump_json(exclude_none=True).encode()

    @field_validator("frames")
    @classmethod
    def _same_model(cls, frames: list[EnrolledFrame]) -> list[EnrolledFrame]:
        if len({(f.fingerprint, len(f.embedding)) for f in frames}) != 1:
            raise ValueError("all frames must come from the same model and have the same dimension")
        return frames


class Withdrawal(BaseModel):
    """Sent on `withdraw/<kiosk-id>`: the clerk undid a teach whose enrollment may already be at HQ.

    It names the enrollment by what the kiosk stamped on it: its kiosk, product and `created`
    time (`Enrollment.created`; one kiosk's teaches of one product are at least milliseconds
    apart). HQ marks that enrollment withdrawn while it is pending, records the withdrawal either
    way, and stores the enrollment as withdrawn should it arrive after its withdrawal.
    """

    model_config = ConfigDict(extra="forbid")

    kiosk_id: str
    product_id: str = Field(min_length=1, max_length=200, pattern=PRODUCT_ID_PATTERN)
    enrollment_created: float = Field(ge=0, allow_inf_nan=False)
    created: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    _check_kiosk = field_validator("kiosk_id")(_kiosk_id)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def parse_upstream(model: type[BaseModel], payload: bytes, *, topic: str, max_bytes: int) -> BaseModel:
    """Validate a kiosk's message; SyncError names the topic and what is wrong."""
    if len(payload) > max_bytes:
        raise SyncError(f"{topic}: {len(payload)} bytes, over the {max_bytes}-byte limit")
    try:
        parsed = model.model_validate_json(payload)
    except ValidationError as exc:
        raise SyncError(f"{topic}: malformed {model.__name__} ({validation_problems(exc)})") from exc
    sender = topic.rsplit("/", 1)[-1]
    claimed = getattr(parsed, "kiosk_id", sender)
    if claimed != sender:
        raise SyncError(f"{topic}: payload claims kiosk {claimed!r}, topic says {sender!r}")
    return parsed


class ResyncRequest(BaseModel):
    """Sent on `resync/<kiosk-id>`: 'send me a delta from this version' or 'resend these chunks'."""

    model_config = ConfigDict(extra="forbid")

    kiosk_id: str
    from_version: int | None = Field(default=None, ge=0)
    blob_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{24}$")
    chunks: list[int] = Field(default_factory=list, max_length=256)

    _check_kiosk = field_validator("kiosk_id")(_kiosk_id)


def enrollment_created(payload: str | bytes) -> float | None:
    """A serialised enrollment's `created` stamp, by Python's exact float parsing (None if unreadable).

    Withdrawals name an enrollment by it, so the kiosk's outbox and HQ's inbox compare it the same way.
    """
    try:
        value = json.loads(payload).get("created", 0.0)  # the model's default
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None

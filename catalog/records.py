"""The JSON shapes of catalog changes and snapshots: encoding rows, validating records.

A change record is
    {"version": int, "op": "upsert_product"|"remove_product"|"upsert_reference"|"remove_reference",
     "product_id": str, "reference_id": str|None, "data": {...}}
`data` of an upsert_product: name, description, category, price, attributes, thumbnail (base64|None).
`data` of an upsert_reference: embedding (base64 of int8), scale, dim, fingerprint, phash, source,
keypoints (base64|None), image_jpeg (base64|None), and since record layout 2 words (base64 of the
sorted unique uint16 visual words of version-2 keypoints, or None) with vocabulary (the fingerprint
of the vocabulary they come from). Removals carry `data: {}`.

Records arrive from the network (sync), so decoding is strict: unknown keys,
wrong types, NaN, bad base64 and inconsistent sizes are all CatalogErrors.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shelfsight.catalog.word_index import decode_words
from shelfsight.edge_app.core.errors import CatalogError
from shelfsight.edge_app.core.features import deserialise_features
from shelfsight.edge_app.core.vocabulary import MAX_WORDS

Op = Literal["upsert_product", "remove_product", "upsert_reference", "remove_reference"]
PRODUCT_OPS = ("upsert_product", "remove_product")
REFERENCE_OPS = ("upsert_reference", "remove_reference")

# Product columns a caller may set; anything else passed to add_product is an attribute.
PRODUCT_COLUMNS = ("name", "description", "category", "price", "attributes", "thumbnail")
AttributeValue = str | int | float | bool | None
MAX_ID_LENGTH = 200
_PHASH = re.compile(r"^([0-9a-f]{16})?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ProductData(_Strict):
    name: str = Field(min_length=1, max_length=500)
    description: str = ""
    category: str = ""
    price: float | None = Field(default=None, allow_inf_nan=False)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    thumbnail: str | None = None


class ReferenceData(_Strict):
    embedding: str
    scale: float = Field(gt=0, allow_inf_nan=False)
    dim: int = Field(ge=2, le=4096)
    fingerprint: str = Field(min_length=1)
    phash: str = ""
    source: str = ""
    keypoints: str | None = None
    image_jpeg: str | None = None
    words: str | None = None
    vocabulary: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ChangeRecord(_Strict):
    version: int = Field(ge=1)
    op: Op
    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    reference_id: str | None = Field(default=None, max_length=2 * MAX_ID_LENGTH)
    data: dict[str, Any]


@dataclass(frozen=True)
class Change:
    """A validated change: `row` is the database row to write for upserts, None for removals."""

    version: int
    op: str
    product_id: str
    reference_id: str | None
    row: dict[str, Any] | None


def decode_base64(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise CatalogError(f"{what}: bad base64 ({exc})") from exc


def encode_base64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def quantize_many(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float -> (int8 (N, D), float32 scales (N,)) with float ~= int8 * scale, per row.

    The scale keeps each vector's norm (not its peak), so a unit vector dequantises to a unit
    vector and scores stay true cosines, never above 1.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if not np.all(np.isfinite(vectors)):
        raise CatalogError("embedding contains NaN or infinity")
    peaks = np.abs(vectors).max(axis=1, keepdims=True) if vectors.shape[1] else np.zeros((len(vectors), 1), np.float32)
    safe = np.where(peaks > 0, peaks, 1.0)
    codes = np.clip(np.round(vectors * (127.0 / safe)), -127, 127).astype(np.int8)
    code_norms = np.linalg.norm(codes.astype(np.float32), axis=1)
    scales = np.where(code_norms > 0, np.linalg.norm(vectors, axis=1) / np.maximum(code_norms, 1e-12), 1.0)
    return codes, scales.astype(np.float32)


def quantize(embedding: np.ndarray) -> tuple[bytes, float]:
    """One float vector -> (int8 bytes, scale); see `quantize_many`."""
    codes, scales = quantize_many(np.asarray(embedding, dtype=np.float32).reshape(1, -1))
    return codes[0].tobytes(), float(scales[0])


def check_attributes(attributes: Any, what: str = "attributes") -> dict[str, AttributeValue]:
    """Attributes must be a flat JSON object of scalars (they are filterable and shown to shoppers)."""
    if not isinstance(attributes, dict):
        raise CatalogError(f"{what}: must be a mapping, got {type(attributes).__name__}")
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise CatalogError(f"{what}: keys must be non-empty strings, got {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise CatalogError(f"{what}: value of {key!r} must be a string, number, bool or null")
        if isinstance(value, float) and not math.isfinite(value):
            raise CatalogError(f"{what}: value of {key!r} is not finite")
    return dict(attributes)


def check_product_id(product_id: Any) -> str:
    if not isinstance(product_id, str) or not product_id.strip() or len(product_id) > MAX_ID_LENGTH:
        raise CatalogError(f"invalid product id {product_id!r} (non-empty string up to {MAX_ID_LENGTH} chars)")
    if "/" in product_id or product_id != product_id.strip():
        raise CatalogError(f"invalid product id {product_id!r}: no '/' and no surrounding spaces")
    return product_id


# ---- rows -> records ------------------------------------------------------------------------


def product_record(row: dict[str, Any], op_version: int | None = None) -> dict[str, Any]:
    return {
        "version": int(op_version if op_version is not None else row["version"]),
        "op": "upsert_product",
        "product_id": row["id"],
        "reference_id": None,
        "data": {
            "name": row["name"],
            "description": row["description"],
            "category": row["category"],
            "price": row["price"],
            "attributes": json.loads(row["attributes"]),
            "thumbnail": encode_base64(row["thumbnail"]),
        },
    }


def reference_record(row: dict[str, Any], vocabulary: str | None = None) -> dict[str, Any]:
    """A reference row (with its `words`, if any) as a record; `vocabulary`: the words' vocabulary."""
    words = row.get("words")
    return {
        "version": int(row["version"]),
        "op": "upsert_reference",
        "product_id": row["product_id"],
        "reference_id": row["id"],
        "data": {
            "embedding": encode_base64(row["embedding"]),
            "scale": float(row["scale"]),
            "dim": int(row["dim"]),
            "fingerprint": row["fingerprint"],
            "phash": row["phash"],
            "source": row["source"],
            "keypoints": encode_base64(row["keypoints"]),
            "image_jpeg": encode_base64(row["image_jpeg"]),
            "words": encode_base64(words) if words else None,
            "vocabulary": vocabulary if words else None,
        },
    }


def removal_record(version: int, op: str, product_id: str, reference_id: str | None) -> dict[str, Any]:
    return {"version": int(version), "op": op, "product_id": product_id, "reference_id": reference_id, "data": {}}


# ---- records -> validated rows --------------------------------------------------------------


def _product_row(record: ChangeRecord, what: str) -> dict[str, Any]:
    data = ProductData.model_validate(record.data)
    return {
        "id": check_product_id(record.product_id),
        "name": data.name,
        "description": data.description,
        "category": data.category,
        "price": data.price,
        "attributes": json.dumps(check_attributes(data.attributes, f"{what} attributes"), sort_keys=True),
        "thumbnail": decode_base64(data.thumbnail, f"{what} thumbnail"),
        "version": record.version,
    }


def _reference_row(record: ChangeRecord, what: str) -> dict[str, Any]:
    data = ReferenceData.model_validate(record.data)
    embedding = decode_base64(data.embedding, f"{what} embedding")
    assert embedding is not None
    if len(embedding) != data.dim:
        raise CatalogError(f"{what}: embedding has {len(embedding)} values but dim says {data.dim}")
    if not _PHASH.match(data.phash):
        raise CatalogError(f"{what}: phash must be 16 lowercase hex digits")
    keypoints = decode_base64(data.keypoints, f"{what} keypoints")
    features = deserialise_features(keypoints, f"{what} keypoints") if keypoints is not None else None
    words = decode_base64(data.words, f"{what} words")
    if words is not None:
        if data.vocabulary is None or features is None or features.version != 2:
            raise CatalogError(f"{what}: words need version-2 keypoints and the vocabulary they come from")
        decode_words(words, MAX_WORDS, f"{what} words")
    image = decode_base64(data.image_jpeg, f"{what} image_jpeg")
    if image is not None and not image.startswith(b"\xff\xd8"):
        raise CatalogError(f"{what}: image_jpeg is not a JPEG")
    return {
        "id": record.reference_id,
        "product_id": record.product_id,
        "source": data.source,
        "phash": data.phash,
        "embedding": embedding,
        "scale": float(data.scale),
        "dim": data.dim,
        "fingerprint": data.fingerprint,
        "image_jpeg": image,
        "keypoints": keypoints,
        "local": 0,
        "version": record.version,
        "words": words,
        "words_vocabulary": data.vocabulary if words is not None else None,
    }


def decode_change(raw: Any, position: int) -> Change:
    """Validate one record from the wire; CatalogError names its position and what is wrong."""
    what = f"change #{position}"
    if isinstance(raw, dict) and isinstance(raw.get("version"), int):
        what += f" (version {raw['version']})"
    try:
        record = ChangeRecord.model_validate(raw)
        if record.op in PRODUCT_OPS:
            if record.reference_id is not None:
                raise CatalogError(f"{what}: {record.op} must not carry a reference_id")
        elif not record.reference_id or not record.reference_id.startswith(record.product_id + "/"):
            raise CatalogError(f"{what}: reference_id must be '<product_id>/<hash>', got {record.reference_id!r}")
        if record.op.startswith("remove_"):
            if record.data:
                raise CatalogError(f"{what}: {record.op} must carry empty data")
            row = None
        elif record.op == "upsert_product":
            row = _product_row(record, what)
        else:
            row = _reference_row(record, what)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()[:5])
        raise CatalogError(f"{what}: malformed ({problems})") from exc
    except CatalogError as exc:
        if str(exc).startswith(what):
            raise
        raise CatalogError(f"{what}: {exc}") from exc
    return Change(record.version, record.op, record.product_id, record.reference_id, row)

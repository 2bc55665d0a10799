"""Payload shapes inside signed envelopes and chunked blobs.

- manifest (retained, signed): `LatestManifest` as JSON.
- delta (signed): zlib(JSON {"changes": [...]}) with base/target in the header.
- snapshot blob: zlib(JSON of `Catalog.export_snapshot()`).
- release blob: b"SSR1" | u32 header length | header JSON {spec, model_size} | model bytes | snapshot blob.

Everything here runs only after the signature (or the manifest's hash) was
checked, and still assumes nothing: decompression is bounded, JSON must be an
object of the expected shape, and the catalog validates every record again.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shelfsight.catalog.sync.chunks import BlobManifest
from shelfsight.edge_app.core.errors import SyncError

# Protects against zip bombs: a payload may not inflate beyond this many times its size.
MAX_INFLATION = 64
_RELEASE_PREFIX = struct.Struct(">4sI")
_RELEASE_MAGIC = b"SSR1"


class LatestManifest(BaseModel):
    """Where every kiosk of the fleet should be: the catalog version and how to get there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=0)
    model_fingerprint: str = Field(min_length=1, max_length=128)
    snapshot: BlobManifest
    release: BlobManifest | None = None
    # Oldest base version from which HQ still publishes deltas; older kiosks go straight to the snapshot.
    delta_floor: int = Field(ge=0)
    # `catalog.sync.digest.row_digest` of the master at `version` (ids and row versions; what older kiosks check).
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # `catalog.sync.digest.content_digest` at `version`: same version must mean same content. Left out of the
    # JSON when None (HQ's `content_digest=False`), so kiosks that predate it can still read the manifest.
    content_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


def validation_problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:3])


def parse_manifest(payload: bytes) -> LatestManifest:
    try:
        return LatestManifest.model_validate_json(payload)
    except ValidationError as exc:
        raise SyncError(f"manifest: malformed ({validation_problems(exc)})") from exc


def compress_json(obj: Any) -> bytes:
    return zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 6)


def inflate_json(data: bytes, *, what: str, max_bytes: int) -> Any:
    limit = min(max_bytes, max(len(data), 1) * MAX_INFLATION)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise SyncError(f"{what}: not valid compressed data ({exc})") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise SyncError(f"{what}: inflates beyond {limit} bytes or is truncated")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SyncError(f"{what}: invalid JSON ({exc})") from exc


def encode_delta(changes: list[dict[str, Any]]) -> bytes:
    return compress_json({"changes": changes})


def decode_delta(payload: bytes, *, what: str, max_bytes: int) -> list[dict[str, Any]]:
    obj = inflate_json(payload, what=what, max_bytes=max_bytes)
    if not isinstance(obj, dict) or set(obj) != {"changes"} or not isinstance(obj["changes"], list):
        raise SyncError(f"{what}: expected an object with a 'changes' list")
    changes: list[dict[str, Any]] = obj["changes"]
    return changes


def decode_snapshot(data: bytes, *, what: str, max_bytes: int) -> dict[str, Any]:
    obj = inflate_json(data, what=what, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise SyncError(f"{what}: expected a JSON object")
    return obj


@dataclass(frozen=True)
class ReleaseContent:
    spec: dict[str, Any]
    model: bytes
    snapshot: bytes  # a compressed snapshot blob, decoded by the caller


def encode_release(spec: dict[str, Any], model: bytes, snapshot_blob: bytes) -> bytes:
    head = json.dumps({"spec": spec, "model_size": len(model)}, separators=(",", ":")).encode()
    return _RELEASE_PREFIX.pack(_RELEASE_MAGIC, len(head)) + head + model + snapshot_blob


def decode_release(data: bytes, *, what: str) -> ReleaseContent:
    if len(data) < _RELEASE_PREFIX.size:
        raise SyncError(f"{what}: too short")
    magic, head_len = _RELEASE_PREFIX.unpack_from(data)
    if magic != _RELEASE_MAGIC or head_len > 65536 or _RELEASE_PREFIX.size + head_len > len(data):
        raise SyncError(f"{what}: not a release container")
    try:
        head = json.loads(data[_RELEASE_PREFIX.size : _RELEASE_PREFIX.size + head_len])
    except (ValueError, RecursionError) as exc:  # a header of nested brackets overflows the parser's stack
        raise SyncError(f"{what}: invalid release header ({exc})") from exc
    if not isinstance(head, dict) or set(head) != {"spec", "model_size"} or not isinstance(head["spec"], dict):
        raise SyncError(f"{what}: release header must have exactly 'spec' and 'model_size'")
    model_size = head["model_size"]
    start = _RELEASE_PREFIX.size + head_len
    if not isinstance(model_size, int) or not 0 < model_size <= len(data) - start:
        raise SyncError(f"{what}: model size {model_size!r} out of range")
    model = data[start : start + model_size]
    fingerprint = head["spec"].get("fingerprint")
    if hashlib.sha256(model).hexdigest() != fingerprint:
        raise SyncError(f"{what}: model bytes do not match the fingerprint in their spec")
    return ReleaseContent(spec=head["spec"], model=model, snapshot=data[start + model_size :])

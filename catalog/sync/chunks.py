"""Large objects (snapshots, model releases) as hashed chunks under a signed manifest.

HQ splits a blob into chunks no larger than the broker accepts and publishes
them retained; the signed manifest lists every chunk's SHA-256. Chunks carry
no signature of their own: a chunk is trusted only if its hash is the one the
signed manifest names, so a corrupted, truncated or injected chunk is detected
and fetched again.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shelfsight.catalog.sync.limits import PACKET_OVERHEAD
from shelfsight.edge_app.core.errors import SyncError

_HEX64 = r"^[0-9a-f]{64}$"


class BlobManifest(BaseModel):
    """One chunked object. `blob_id` is a prefix of its hash, so it is also its topic name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["snapshot", "release"]
    version: int = Field(ge=0)
    model_fingerprint: str = Field(min_length=1, max_length=128)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=_HEX64)
    chunk_size: int = Field(ge=1)
    chunks: tuple[str, ...] = Field(max_length=1_000_000)

    @model_validator(mode="after")
    def _consistent(self) -> "BlobManifest":
        expected = max(1, -(-self.size // self.chunk_size))
        if len(self.chunks) != expected:
            raise ValueError(f"{len(self.chunks)} chunk hashes for {self.size} bytes in {self.chunk_size}-byte chunks")
        if any(len(h) != 64 or not all(c in "0123456789abcdef" for c in h) for h in self.chunks):
            raise ValueError("chunk hashes must be 64 lowercase hex digits")
        return self

    @property
    def blob_id(self) -> str:
        return self.sha256[:24]

    def chunk_length(self, index: int) -> int:
        if index == len(self.chunks) - 1:
            return self.size - index * self.chunk_size
        return self.chunk_size

    def check_fits(self, broker_limit: int | None, receive_limit: int | None = None) -> None:
        """Raise if the broker or this client cannot carry these chunks (they would never arrive)."""
        for limit, whose in ((receive_limit, "this client's receive limit"), (broker_limit, "the broker's limit")):
            if limit is not None and self.chunk_size + PACKET_OVERHEAD > limit:
                raise SyncError(
                    f"{self.kind} v{self.version}: chunks of {self.chunk_size} bytes do not fit {whose} of "
                    f"{limit} bytes per packet; HQ must republish with a smaller chunk size"
                )


def split(
    data: bytes, *, kind: Literal["snapshot", "release"], version: int, model_fingerprint: str, chunk_size: int
) -> tuple[BlobManifest, list[bytes]]:
    if chunk_size < 1:
        raise SyncError(f"chunk size must be positive, got {chunk_size}")
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    manifest = BlobManifest(
        kind=kind,
        version=version,
        model_fingerprint=model_fingerprint,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=chunk_size,
        chunks=tuple(hashlib.sha256(p).hexdigest() for p in pieces),
    )
    return manifest, pieces


class Assembler:
    """Collects the chunks of one blob, keeping only those whose hash matches the manifest."""

    def __init__(self, manifest: BlobManifest, *, max_bytes: int) -> None:
        if manifest.size > max_bytes:
            raise SyncError(
                f"{manifest.kind} v{manifest.version}: {manifest.size} bytes, over the {max_bytes}-byte limit"
            )
        self.manifest = manifest
        self._chunks: dict[int, bytes] = {}

    def add(self, index: int, data: bytes) -> None:
        """Store a chunk, or raise SyncError naming it if it is out of range or its hash is wrong."""
        name = f"{self.manifest.kind} v{self.manifest.version} chunk {index}"
        if not 0 <= index < len(self.manifest.chunks):
            raise SyncError(f"{name}: no such chunk (manifest has {len(self.manifest.chunks)})")
        if len(data) != self.manifest.chunk_length(index):
            raise SyncError(f"{name}: {len(data)} bytes, expected {self.manifest.chunk_length(index)} (truncated?)")
        if hashlib.sha256(data).hexdigest() != self.manifest.chunks[index]:
            raise SyncError(f"{name}: hash mismatch (corrupted or injected)")
        self._chunks[index] = data

    def missing(self) -> list[int]:
        return [i for i in range(len(self.manifest.chunks)) if i not in self._chunks]

    @property
    def complete(self) -> bool:
        return len(self._chunks) == len(self.manifest.chunks)

    def result(self) -> bytes:
        if not self.complete:
            raise SyncError(f"{self.manifest.kind} v{self.manifest.version}: chunks {self.missing()[:10]} missing")
        data = b"".join(self._chunks[i] for i in range(len(self.manifest.chunks)))
        if hashlib.sha256(data).hexdigest() != self.manifest.sha256:
            raise SyncError(f"{self.manifest.kind} v{self.manifest.version}: whole-blob hash mismatch")
        return data

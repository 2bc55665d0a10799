"""Signed envelopes: every update HQ publishes travels in one.

Wire format (all integers big-endian)::

    b"SSE1" | u32 header length | header (UTF-8 JSON) | payload | Ed25519 signature (64 bytes)

The signature covers everything before it. A kiosk checks the total size, then
the signature over the raw bytes, and only then parses the header JSON, so a
forged or tampered message never reaches a parser. The header is small and
typed (`EnvelopeHeader` rejects unknown keys); the payload is opaque bytes
whose meaning depends on `kind`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shelfsight.edge_app.core.errors import ConfigError, SyncError

MAGIC = b"SSE1"
SIGNATURE_BYTES = 64
MAX_HEADER_BYTES = 4096
_PREFIX = struct.Struct(">4sI")

Kind = Literal["manifest", "delta"]


class EnvelopeHeader(BaseModel):
    """What a signed message claims to be. `seq` grows with every HQ publication."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    kind: Kind
    fleet: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    base: int | None = Field(default=None, ge=0)
    target: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class Envelope:
    header: EnvelopeHeader
    payload: bytes


class Signer:
    """HQ's private Ed25519 key. It never leaves HQ."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def public_key(self) -> "Verifier":
        return Verifier(self._key.public_key())

    def seal(self, header: EnvelopeHeader, payload: bytes) -> bytes:
        head = json.dumps(header.model_dump(exclude_none=True), separators=(",", ":"), sort_keys=True).encode()
        body = _PREFIX.pack(MAGIC, len(head)) + head + payload
        return body + self._key.sign(body)


class Verifier:
    """A kiosk's copy of HQ's public key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def open(self, data: bytes, *, max_bytes: int, what: str = "message") -> Envelope:
        """Check size, signature, then header, in that order. SyncError names what failed."""
        if len(data) > max_bytes:
            raise SyncError(f"{what}: {len(data)} bytes, over the {max_bytes}-byte limit")
        if len(data) < _PREFIX.size + SIGNATURE_BYTES:
            raise SyncError(f"{what}: too short to be a signed envelope ({len(data)} bytes)")
        magic, head_len = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise SyncError(f"{what}: not a shelfsight envelope")
        body, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
        try:
            self._key.verify(signature, body)
        except InvalidSignature as exc:
            raise SyncError(f"{what}: bad signature (forged, tampered, or signed with another key)") from exc
        if head_len > MAX_HEADER_BYTES or _PREFIX.size + head_len > len(body):
            raise SyncError(f"{what}: header length {head_len} out of range")
        head = body[_PREFIX.size : _PREFIX.size + head_len]
        try:
            header = EnvelopeHeader.model_validate_json(head)
        except ValidationError as exc:
            raise SyncError(f"{what}: invalid header ({exc.error_count()} problems)") from exc
        return Envelope(header=header, payload=body[_PREFIX.size + head_len :])


def generate_keys(directory: str | Path, *, name: str = "hq_signing", overwrite: bool = False) -> tuple[Path, Path]:
    """Write `<name>.key` (private, mode 0600) and `<name>.pub` (for kiosks) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise ConfigError(f"{private_path}: a signing key already exists; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _read_key_file(path: str | Path) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror})") from exc


def load_signer(path: str | Path) -> Signer:
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return Signer(key)


def load_verifier(path: str | Path) -> Verifier:
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key")
    return Verifier(key)

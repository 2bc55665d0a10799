"""The pieces without a broker: envelopes, keys, chunks, payload decoding, config, releases, upstream messages."""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from shelfsight.catalog.sync.chunks import Assembler, split
from shelfsight.catalog.sync.codec import (
    decode_delta,
    decode_release,
    encode_release,
    inflate_json,
)
from shelfsight.catalog.sync.envelope import (
    MAGIC,
    EnvelopeHeader,
    Signer,
    Verifier,
    generate_keys,
    load_signer,
    load_verifier,
)
from shelfsight.catalog.sync.limits import PACKET_OVERHEAD
from shelfsight.catalog.sync.messages import (
    MAX_STATUS_BYTES,
    Enrollment,
    KioskStatus,
    parse_upstream,
)
from shelfsight.catalog.sync.topics import Topics
from shelfsight.edge_app.core.errors import CatalogError, ConfigError, SyncError
from shelfsight.edge_app.kiosk.updates.config import SyncConfig
from shelfsight.edge_app.kiosk.updates.releases import current_release, rollback
from tests.support.sync import make_model


def header(**kw: object) -> EnvelopeHeader:
    return EnvelopeHeader(**{"kind": "delta", "fleet": "f", "seq": 1, "base": 1, "target": 2, **kw})  # type: ignore[arg-type]


def test_envelope_round_trip_and_every_kind_of_tampering(hq_keys: tuple[Signer, Verifier, Path]) -> None:
    signer, verifier, _ = hq_keys
    sealed = signer.seal(header(), b"payload")
    opened = verifier.open(sealed, max_bytes=1024)
    assert opened.payload == b"payload" and opened.header.target == 2
    with pytest.raises(SyncError, match="over the 100-byte limit"):
        verifier.open(sealed + b"x" * 100, max_bytes=100)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad in (sealed[:-1], flipped, b"XXXX" + sealed[4:], sealed[:10]):
        with pytest.raises(SyncError):
            verifier.open(bad, max_bytes=1024)


def test_signed_but_malformed_header_is_refused(hq_keys: tuple[Signer, Verifier, Path]) -> None:
    signer, verifier, _ = hq_keys
    # Sign a header with an unknown key by going around EnvelopeHeader: the signature is fine, the header is not.
    import json
    import struct

    head = json.dumps({"v": 1, "kind": "delta", "fleet": "f", "seq": 1, "evil": True}).encode()
    body = struct.pack(">4sI", MAGIC, len(head)) + head + b"p"
    sealed = body + signer._key.sign(body)  # noqa: SLF001 - crafting a hostile message
    with pytest.raises(SyncError, match="invalid header"):
        verifier.open(sealed, max_bytes=1024)


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    private, public = generate_keys(tmp_path)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    load_signer(private), load_verifier(public)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keys(tmp_path)
    with pytest.raises(ConfigError, match="private key"):
        load_signer(public)
    with pytest.raises(ConfigError, match="cannot read"):
        load_verifier(tmp_path / "missing.pub")


def test_chunks_reassemble_in_any_order_and_bad_chunks_are_named() -> None:
    data = os.urandom(10_000)
    manifest, pieces = split(data, kind="snapshot", version=3, model_fingerprint="m", chunk_size=1000)
    assembler = Assembler(manifest, max_bytes=1 << 20)
    with pytest.raises(SyncError, match="chunk 4: hash mismatch"):
        assembler.add(4, bytes(1000))
    with pytest.raises(SyncError, match="truncated"):
        assembler.add(2, pieces[2][:10])
    with pytest.raises(SyncError, match="no such chunk"):
        assembler.add(99, b"x")
    for index in reversed(range(len(pieces))):
        assembler.add(index, pieces[index])
    assert assembler.result() == data
    with pytest.raises(SyncError, match="over the"):
        Assembler(manifest, max_bytes=100)
    with pytest.raises(SyncError, match="do not fit the broker's limit"):
        manifest.check_fits(1200)
    with pytest.raises(SyncError, match="do not fit this client's receive limit"):
        manifest.check_fits(None, 1200)
    manifest.check_fits(1000 + PACKET_OVERHEAD, 1000 + PACKET_OVERHEAD)
    with pytest.raises(ValidationError):
        manifest.model_validate({**manifest.model_dump(), "chunks": manifest.chunks[:3]})


def test_payload_decoding_is_bounded() -> None:
    with pytest.raises(SyncError, match="inflates beyond"):
        inflate_json(zlib.compress(b" " * 5_000_000), what="x", max_bytes=10**9)
    with pytest.raises(SyncError, match="truncated"):
        inflate_json(zlib.compress(b"[1, 2, 3]" * 100)[:-5], what="x", max_bytes=10**6)
    with pytest.raises(SyncError, match="not valid compressed"):
        inflate_json(b"plain text", what="x", max_bytes=10**6)
    with pytest.raises(SyncError, match="'changes' list"):
        decode_delta(zlib.compress(b'{"changes": 5}'), what="x", max_bytes=10**6)


def test_release_container_checks_the_model_hash(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    spec = {"fingerprint": hashlib.sha256(model.read_bytes()).hexdigest(), "input_size": 64, "embedding_dim": 16}
    blob = encode_release(spec, model.read_bytes(), b"snapshot")
    assert decode_release(blob, what="r").snapshot == b"snapshot"
    with pytest.raises(SyncError, match="do not match"):
        decode_release(encode_release(spec, model.read_bytes()[:-1] + b"!", b"s"), what="r")
    with pytest.raises(SyncError):
        decode_release(blob[:20], what="r")


def test_config_rejects_unknown_keys_bad_names_and_missing_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        SyncConfig(fleet="north", colour="red")  # type: ignore[call-arg]
    for bad in ("a/b", "#", "../x", ""):
        with pytest.raises(ValidationError):
            SyncConfig(fleet=bad)
    monkeypatch.delenv("SHELFSIGHT_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="SHELFSIGHT_TEST_PW"):
        SyncConfig(password_env="SHELFSIGHT_TEST_PW").password()
    monkeypatch.setenv("SHELFSIGHT_TEST_PW", "s3cret")
    assert SyncConfig(password_env="SHELFSIGHT_TEST_PW").password() == "s3cret"
    topics = Topics("shelfsight", "north")
    assert topics.parse_blob_chunk(topics.blob_chunk("ab" * 12, 7)) == ("ab" * 12, 7)
    assert topics.parse_blob_chunk("shelfsight/north/catalog/blob/x/../1") is None


def test_no_release_yet_and_nothing_to_roll_back(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no release"):
        current_release(tmp_path)
    with pytest.raises(SyncError, match="no previous release"):
        rollback(tmp_path)


def test_upstream_messages_are_validated_against_their_topic() -> None:
    status = KioskStatus(kiosk_id="k1", catalog_version=3).model_dump_json().encode()
    assert parse_upstream(KioskStatus, status, topic="s/f/status/k1", max_bytes=MAX_STATUS_BYTES)
    with pytest.raises(SyncError, match="claims kiosk"):
        parse_upstream(KioskStatus, status, topic="s/f/status/k2", max_bytes=MAX_STATUS_BYTES)
    with pytest.raises(SyncError, match="over the"):
        parse_upstream(KioskStatus, b"{" * 10_000, topic="s/f/status/k1", max_bytes=MAX_STATUS_BYTES)
    frame = {"embedding": [0.1, float("nan")], "fingerprint": "m"}
    for bad in (
        {"kiosk_id": "k1", "product_id": "a", "name": "A", "frames": [frame]},
        {"kiosk_id": "k1", "product_id": "../etc", "name": "A", "frames": [{**frame, "embedding": [0.1, 0.2]}]},
        {"kiosk_id": "k1", "product_id": "a", "name": "A", "frames": []},
    ):
        with pytest.raises(ValidationError):
            Enrollment.model_validate(bad)

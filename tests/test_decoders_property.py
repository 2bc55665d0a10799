"""Property-based tests of every decoder of untrusted bytes: any input gives the module's domain error.

Kiosks decode what the broker hands them (signed envelopes, compressed deltas and snapshots,
manifests, chunks, releases), HQ decodes what kiosks send (status, enrollments, resync requests),
the catalog decodes its own blobs (keypoints, visual words, the vocabulary, synced records) and
the kiosk decodes uploads. For each, hypothesis feeds arbitrary and near-valid bytes: the result is
a value or the module's `ShelfsightError` subclass, never another exception (a traceback, a
thread that dies, a message that stalls the queue). Where an encoder exists, decode(encode(x)) == x.

Examples are few per test and there is no deadline, so the whole file stays within seconds.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import Any, Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from shelfsight.catalog import records
from shelfsight.catalog.sync import codec, envelope
from shelfsight.catalog.sync.chunks import Assembler, split
from shelfsight.catalog.sync.messages import Enrollment, KioskStatus, ResyncRequest, parse_upstream
from shelfsight.catalog.word_index import decode_words, encode_words
from shelfsight.edge_app.core.errors import CatalogError, ImageError, ModelError, SyncError
from shelfsight.edge_app.core.features import LocalFeatures, deserialise_features, serialise_features
from shelfsight.edge_app.core.images import decode_rgb
from shelfsight.edge_app.core.vocabulary import vocabulary_from_bytes

PROPERTY = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
MAX = 1 << 20

# JSON values: what `json.loads` can hand a validator.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def decodes_or_raises(decode: Callable[[], Any], error: type[Exception]) -> Any:
    """The decoder's value, or None after it raised `error`; any other exception fails the test."""
    try:
        return decode()
    except error:
        return None


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """`valid` truncated, extended, or with a few bytes overwritten: input that gets past the first checks."""

    def overwrite(data: bytes, edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for position, value in edits:
            if out:
                out[position % len(out)] = value
        return bytes(out)

    edits = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), min_size=1, max_size=4)
    return st.one_of(
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.binary(max_size=64).map(lambda tail: valid + tail),
        edits.map(lambda e: overwrite(valid, e)),
    )


# ---- sync envelope ------------------------------------------------------------------------------

SIGNER = envelope.Signer(Ed25519PrivateKey.generate())
VERIFIER = SIGNER.public_key()
headers = st.builds(
    envelope.EnvelopeHeader,
    kind=st.sampled_from(["manifest", "delta"]),
    fleet=st.text(min_size=1, max_size=64),
    seq=st.integers(0, 1 << 62),
    base=st.none() | st.integers(0, 1 << 40),
    target=st.none() | st.integers(0, 1 << 40),
)


@PROPERTY
@given(st.binary(max_size=512))
def test_envelope_rejects_arbitrary_bytes(data: bytes) -> None:
    decodes_or_raises(lambda: VERIFIER.open(data, max_bytes=MAX), SyncError)


@PROPERTY
@given(st.binary(max_size=256), st.binary(max_size=64))
def test_envelope_with_a_valid_signature_over_any_header(head: bytes, payload: bytes) -> None:
    """What a leaked key or a bug at HQ could sign: the header is still checked, never trusted."""
    body = envelope._PREFIX.pack(envelope.MAGIC, len(head)) + head + payload
    signed = body + SIGNER._key.sign(body)
    decodes_or_raises(lambda: VERIFIER.open(signed, max_bytes=MAX), SyncError)


@PROPERTY
@given(headers, st.binary(max_size=256), st.data())
def test_envelope_round_trip_and_any_change_is_refused(header: Any, payload: bytes, data: st.DataObject) -> None:
    sealed = SIGNER.seal(header, payload)
    opened = VERIFIER.open(sealed, max_bytes=MAX)
    assert opened.header == header and opened.payload == payload
    changed = data.draw(mutations(sealed).filter(lambda m: m != sealed))
    with pytest.raises(SyncError):
        VERIFIER.open(changed, max_bytes=MAX)


# ---- codec: compressed JSON, deltas, snapshots, releases ---------------------------------------


def _compressed(data: bytes) -> bytes:
    return zlib.compress(data)


compressed_or_raw = st.one_of(st.binary(max_size=256), st.binary(max_size=256).map(_compressed))


@PROPERTY
@given(compressed_or_raw)
def test_codec_decoders_reject_arbitrary_bytes(data: bytes) -> None:
    decodes_or_raises(lambda: codec.decode_delta(data, what="delta", max_bytes=MAX), SyncError)
    decodes_or_raises(lambda: codec.decode_snapshot(data, what="snapshot", max_bytes=MAX), SyncError)
    decodes_or_raises(lambda: codec.decode_release(data, what="release"), SyncError)


@PROPERTY
@given(st.integers(1, 100_000).map(lambda depth: b"[" * depth + b"]" * depth))
@example(b"[" * 5000 + b"]" * 5000)  # found by hypothesis: decode_release raised RecursionError
def test_codec_survives_deep_nesting(nested: bytes) -> None:
    decodes_or_raises(lambda: codec.decode_delta(zlib.compress(nested), what="delta", max_bytes=MAX), SyncError)
    release = codec._RELEASE_PREFIX.pack(codec._RELEASE_MAGIC, len(nested[:65536])) + nested[:65536]
    decodes_or_raises(lambda: codec.decode_release(release, what="release"), SyncError)


@PROPERTY
@given(st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=5))
def test_delta_round_trip(changes: list[dict[str, Any]]) -> None:
    assert codec.decode_delta(codec.encode_delta(changes), what="delta", max_bytes=MAX) == changes


@PROPERTY
@given(st.binary(min_size=1, max_size=256), st.binary(max_size=256), st.data())
def test_release_round_trip_and_changes(model: bytes, snapshot: bytes, data: st.DataObject) -> None:
    import hashlib

    spec = {"fingerprint": hashlib.sha256(model).hexdigest(), "dim": 32}
    packed = codec.encode_release(spec, model, snapshot)
    content = codec.decode_release(packed, what="release")
    assert (content.spec, content.model, content.snapshot) == (spec, model, snapshot)
    decodes_or_raises(lambda: codec.decode_release(data.draw(mutations(packed)), what="release"), SyncError)


# ---- manifests and chunks ------------------------------------------------------------------------


def _manifest_json(blob: bytes, chunk_size: int) -> bytes:
    manifest, _ = split(blob, kind="snapshot", version=3, model_fingerprint="m" * 64, chunk_size=chunk_size)
    latest = codec.LatestManifest(version=3, model_fingerprint="m" * 64, snapshot=manifest, delta_floor=1)
    return latest.model_dump_json().encode()


@PROPERTY
@given(st.one_of(st.binary(max_size=256), json_values.map(lambda v: json.dumps(v).encode())))
def test_manifest_rejects_arbitrary_bytes(data: bytes) -> None:
    decodes_or_raises(lambda: codec.parse_manifest(data), SyncError)


@PROPERTY
@given(st.binary(max_size=300), st.integers(1, 64), st.data())
def test_manifest_round_trip_and_changes(blob: bytes, chunk_size: int, data: st.DataObject) -> None:
    payload = _manifest_json(blob, chunk_size)
    assert codec.parse_manifest(payload).model_dump_json().encode() == payload
    decodes_or_raises(lambda: codec.parse_manifest(data.draw(mutations(payload))), SyncError)


@PROPERTY
@given(st.binary(max_size=300), st.integers(1, 64), st.lists(st.tuples(st.integers(-2, 40), st.binary(max_size=70))))
def test_chunks_reassemble_and_refuse_anything_else(
    blob: bytes, chunk_size: int, junk: list[tuple[int, bytes]]
) -> None:
    manifest, pieces = split(blob, kind="snapshot", version=1, model_fingerprint="m", chunk_size=chunk_size)
    assembler = Assembler(manifest, max_bytes=MAX)
    for index, piece in junk:  # injected chunks are refused or, if they are the real bytes, kept
        decodes_or_raises(lambda: assembler.add(index, piece), SyncError)  # noqa: B023 (called at once)
    for index, piece in enumerate(pieces):
        assembler.add(index, piece)
    assert assembler.result() == blob


# ---- upstream messages (kiosk -> HQ) ---------------------------------------------------------------


@PROPERTY
@given(
    st.sampled_from([KioskStatus, Enrollment, ResyncRequest]),
    st.one_of(st.binary(max_size=256), json_values.map(lambda v: json.dumps(v).encode())),
)
def test_upstream_messages_reject_arbitrary_bytes(model: Any, payload: bytes) -> None:
    decodes_or_raises(lambda: parse_upstream(model, payload, topic="x/resync/k1", max_bytes=MAX), SyncError)


@PROPERTY
@given(st.none() | st.integers(0, 1 << 40), st.lists(st.integers(0, 1 << 20), max_size=20), st.data())
def test_resync_request_round_trip(from_version: int | None, chunks: list[int], data: st.DataObject) -> None:
    request = ResyncRequest(kiosk_id="k1", from_version=from_version, blob_id="a" * 24, chunks=chunks)
    payload = request.model_dump_json().encode()
    assert parse_upstream(ResyncRequest, payload, topic="x/resync/k1", max_bytes=MAX) == request
    changed = data.draw(mutations(payload))
    decodes_or_raises(lambda: parse_upstream(ResyncRequest, changed, topic="x/resync/k1", max_bytes=MAX), SyncError)


# ---- keypoint and word blobs ------------------------------------------------------------------------

MAGICS = [b"ORB1", b"ORB2"]


@PROPERTY
@given(st.one_of(st.binary(max_size=256), st.tuples(st.sampled_from(MAGICS), st.binary(max_size=256)).map(b"".join)))
def test_keypoints_reject_arbitrary_bytes(data: bytes) -> None:
    decodes_or_raises(lambda: deserialise_features(data), CatalogError)


def _features(seed: int, count: int, version: int) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    width, height = (320, 240) if version == 2 else (256, 256)
    from shelfsight.edge_app.core.features import WORK_SIZE

    if version == 1:
        width = height = WORK_SIZE
    points = (rng.random((count, 2)) * [width, height]).astype(np.float32)
    descriptors = rng.integers(0, 256, (count, 32), dtype=np.uint8)
    return LocalFeatures(points, descriptors, (width, height), version)


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(0, 50), st.sampled_from([1, 2]), st.data())
def test_keypoints_round_trip_and_changes(seed: int, count: int, version: int, data: st.DataObject) -> None:
    features = _features(seed, count, version)
    blob = serialise_features(features)
    back = deserialise_features(blob)
    assert back.version == version and back.frame == features.frame and serialise_features(back) == blob
    # Points are stored in fixed point (1/16 px).
    assert np.allclose(back.points, features.points, atol=1 / 32) and np.array_equal(
        back.descriptors, features.descriptors
    )
    changed = decodes_or_raises(lambda: deserialise_features(data.draw(mutations(blob))), CatalogError)
    if changed is not None and len(changed) and changed.version == 2:
        # Whatever is accepted is usable: finite points inside the work frame it names.
        assert np.isfinite(changed.points).all() and (changed.points >= 0).all()
        assert (changed.points <= changed.frame).all()


@PROPERTY
@given(st.binary(max_size=600), st.integers(1, 1 << 16))
def test_words_reject_arbitrary_bytes(data: bytes, n_words: int) -> None:
    decodes_or_raises(lambda: decode_words(data, n_words), CatalogError)


@PROPERTY
@given(st.lists(st.integers(0, 9999), max_size=300))
def test_words_round_trip(words: list[int]) -> None:
    assert decode_words(encode_words(np.array(words, np.uint16)), 10_000).tolist() == sorted(set(words))


# ---- the vocabulary ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocabulary_bytes() -> bytes:
    from shelfsight.catalog.references import bundled_vocabulary

    return bundled_vocabulary().to_bytes()


@PROPERTY
@given(st.binary(max_size=256))
def test_vocabulary_rejects_arbitrary_bytes(data: bytes) -> None:
    decodes_or_raises(lambda: vocabulary_from_bytes(data), ModelError)


@settings(PROPERTY, max_examples=25)
@given(st.data())
def test_vocabulary_round_trip_and_changes(vocabulary_bytes: bytes, data: st.DataObject) -> None:
    assert vocabulary_from_bytes(vocabulary_bytes).to_bytes() == vocabulary_bytes
    decodes_or_raises(lambda: vocabulary_from_bytes(data.draw(mutations(vocabulary_bytes))), ModelError)


def test_vocabulary_with_a_damaged_deflate_stream(vocabulary_bytes: bytes) -> None:
    """Found by hypothesis: one zeroed byte inside a member's deflate data raised zlib.error."""
    damaged = bytearray(vocabulary_bytes)
    damaged[61] = 0
    with pytest.raises(ModelError, match="not a readable vocabulary file"):
        vocabulary_from_bytes(bytes(damaged))


# ---- synced records ---------------------------------------------------------------------------------

record_fields = st.fixed_dictionaries(
    {
        "version": st.integers(-1, 1 << 40) | json_values,
        "op": st.sampled_from(["upsert_product", "upsert_reference", "remove_product", "remove_reference"])
        | json_values,
        "product_id": st.text(max_size=12) | json_values,
        "reference_id": st.none() | st.text(max_size=20) | json_values,
        "data": st.dictionaries(
            st.sampled_from(
                ["name", "price", "attributes", "thumbnail", "embedding", "dim", "keypoints", "words", "vocabulary"]
            ),
            json_values,
            max_size=6,
        )
        | json_values,
    }
)


@PROPERTY
@given(st.one_of(json_values, record_fields))
def test_records_reject_arbitrary_values(raw: Any) -> None:
    decodes_or_raises(lambda: records.decode_change(raw, 0), CatalogError)


@PROPERTY
@given(
    st.text(min_size=1, max_size=30),
    st.none() | st.floats(0, 1e6),
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8) | st.integers(-1000, 1000), max_size=3),
)
def test_product_record_round_trip(name: str, price: float | None, attributes: dict[str, Any]) -> None:
    row = {
        "id": "p-1",
        "name": name,
        "description": "",
        "category": "c",
        "price": price,
        "attributes": json.dumps(attributes, sort_keys=True),
        "thumbnail": None,
        "version": 4,
    }
    decoded = decodes_or_raises(lambda: records.decode_change(records.product_record(row), 0), CatalogError)
    if decoded is not None:
        assert decoded.row == row


# ---- uploads ----------------------------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}


@PROPERTY
@given(st.one_of(st.binary(max_size=256), st.sampled_from(sorted(IMAGES)).flatmap(lambda f: mutations(IMAGES[f]))))
def test_uploads_reject_arbitrary_bytes(data: bytes) -> None:
    rgb = decodes_or_raises(lambda: decode_rgb(data), ImageError)
    if rgb is not None:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def test_upload_round_trip() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    assert np.array_equal(decode_rgb(buffer.getvalue()), rgb)

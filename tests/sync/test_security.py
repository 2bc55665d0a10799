"""Broker ACL (the example config in deploy/mosquitto), TLS, and hostile payloads against a running kiosk."""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shelfsight.catalog.hq.acl import render_acl
from shelfsight.catalog.sync.chunks import BlobManifest
from shelfsight.catalog.sync.codec import LatestManifest, encode_delta
from shelfsight.catalog.sync.envelope import EnvelopeHeader, Signer, Verifier
from shelfsight.catalog.sync.transport.config import BrokerConfig
from shelfsight.catalog.sync.transport.factory import open_bus
from shelfsight.edge_app.core.errors import SyncError
from tests.support.broker import Broker, add_password
from tests.support.sync import WAIT, Hq, Tap

ACL = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "shelfsight.acl"


# The example ACL's kiosks: kiosk-0042 and kiosk-0043 in fleet north, kiosk-0101 in fleet south.
K1, K2, SOUTH = "kiosk-0042", "kiosk-0043", "kiosk-0101"


@pytest.fixture
def secured(broker_factory, tmp_path: Path) -> Broker:
    passwords = tmp_path / "passwd"
    for user in ("hq", K1, K2, SOUTH):
        add_password(passwords, user, f"{user}-secret")
    return broker_factory(anonymous=False, extra=[f"password_file {passwords}", f"acl_file {ACL}"])


def _tap(broker: Broker, user: str, topic_filter: str | None) -> Tap:
    secret = broker.workdir.parent / f"{user}.pw"
    secret.write_text(f"{user}-secret\n")
    return Tap(broker, topic_filter, client_id=f"{user}-client", username=user, password_file=secret)


def test_anonymous_and_wrong_password_are_refused(secured: Broker, tmp_path: Path) -> None:
    bus = open_bus(BrokerConfig(host="127.0.0.1", port=secured.port), client_id="nobody", on_message=lambda m: None)
    with pytest.raises(SyncError, match="refused"):
        bus.connect(timeout=10)
    bus.close()
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("guess\n")
    config = BrokerConfig(host="127.0.0.1", port=secured.port, username=K1, password_file=wrong)
    bus = open_bus(config, client_id=K1, on_message=lambda m: None)
    with pytest.raises(SyncError, match="refused"):
        bus.connect(timeout=10)
    bus.close()


def test_kiosk_cannot_publish_catalog_or_foreign_status(secured: Broker) -> None:
    hq = _tap(secured, "hq", "shelfsight/#")
    kiosk = _tap(secured, K1, None)
    try:
        forbidden = [
            ("shelfsight/north/catalog/delta", b"forged delta"),
            ("shelfsight/north/catalog/manifest", b"forged manifest"),
            (f"shelfsight/north/status/{K2}", b"impersonation"),
            (f"shelfsight/north/reply/{K2}/delta", b"forged reply"),
            (f"shelfsight/north/withdraw/{K2}", b"withdrawing another kiosk's enrollment"),
        ]
        for topic, payload in forbidden:
            try:
                kiosk.inject(topic, payload)
            except SyncError as exc:  # MQTT 5 brokers may say so in the PUBACK
                assert "refused" in str(exc)
        kiosk.inject(f"shelfsight/north/status/{K1}", b"own status")  # allowed
        kiosk.inject(f"shelfsight/north/withdraw/{K1}", b"own withdrawal")  # allowed: a teach undone there
        hq.inject("shelfsight/north/catalog/delta", b"marker")  # HQ may write catalog topics
        assert hq.wait(lambda ms: {m.payload for m in ms} >= {b"own status", b"own withdrawal", b"marker"})
        seen = {m.payload for m in hq.messages}
        assert not seen & {payload for _, payload in forbidden}
    finally:
        hq.close()
        kiosk.close()


def test_a_kiosk_can_neither_write_nor_read_another_fleets_topics(secured: Broker) -> None:
    hq = _tap(secured, "hq", "shelfsight/#")
    kiosk = _tap(secured, K1, "shelfsight/south/#")  # fleet north; tries to listen to south as well
    try:
        forbidden = [
            (f"shelfsight/south/status/{K1}", b"status into south"),
            (f"shelfsight/south/enroll/{K1}", b"enrollment into south"),
            (f"shelfsight/south/withdraw/{K1}", b"withdrawal into south"),
            (f"shelfsight/south/resync/{K1}", b"resync into south"),
        ]
        for topic, payload in forbidden:
            try:
                kiosk.inject(topic, payload)
            except SyncError as exc:
                assert "refused" in str(exc)
        kiosk.inject(f"shelfsight/north/status/{K1}", b"own fleet")
        hq.inject("shelfsight/south/catalog/manifest", b"south's manifest", retain=True)
        assert hq.wait(lambda ms: {m.payload for m in ms} >= {b"own fleet", b"south's manifest"})
        assert not {m.payload for m in hq.messages} & {payload for _, payload in forbidden}
        marker = _tap(secured, SOUTH, "shelfsight/south/catalog/#")  # south's own kiosk does see it
        assert marker.wait(lambda ms: any(m.payload == b"south's manifest" for m in ms))
        marker.close()
        assert not kiosk.messages  # nothing of south's reached the north kiosk
    finally:
        hq.close()
        kiosk.close()


def test_only_the_asking_kiosk_reads_hqs_reply(secured: Broker) -> None:
    hq = _tap(secured, "hq", None)
    asker = _tap(secured, K1, f"shelfsight/north/reply/{K1}/#")
    other = _tap(secured, K2, "shelfsight/north/reply/#")  # another kiosk of the fleet tries to listen in
    try:
        hq.inject(f"shelfsight/north/reply/{K1}/delta", b"for the asker")
        assert asker.wait(lambda ms: any(m.payload == b"for the asker" for m in ms))
        hq.inject(f"shelfsight/north/reply/{K2}/delta", b"for the other")
        assert other.wait(lambda ms: any(m.payload == b"for the other" for m in ms))  # its own: yes
        assert [m.payload for m in other.messages] == [b"for the other"]
    finally:
        for tap in (hq, asker, other):
            tap.close()


def test_the_example_acl_is_what_hq_acl_generates() -> None:
    expected = render_acl("shelfsight", {"north": [K1, K2], "south": [SOUTH]})
    assert ACL.read_text() == expected
    assert "pattern" not in expected and "/+/" not in expected  # no line may span fleets


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_listener(broker_factory, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    broker = broker_factory(extra=[f"certfile {cert}", f"keyfile {key}"])
    got: list[bytes] = []
    config = BrokerConfig(host="127.0.0.1", port=broker.port, tls_ca=cert)
    bus = open_bus(config, client_id="tls-client", on_message=lambda m: got.append(m.payload), persistent=False)
    bus.connect(timeout=10)
    bus.publish("shelfsight/t/status/x", b"over tls")
    bus.close()
    plain = open_bus(BrokerConfig(host="127.0.0.1", port=broker.port), client_id="plain", on_message=lambda m: None)
    with pytest.raises(SyncError):
        plain.connect(timeout=5)
    plain.close()


def _delta(signer: Signer, fleet: str, base: int, target: int, body: bytes) -> bytes:
    return signer.seal(EnvelopeHeader(kind="delta", fleet=fleet, seq=1, base=base, target=target), body)


def test_hostile_payloads_are_refused_and_the_kiosk_keeps_working(
    hq: Hq, broker: Broker, kiosk_factory, hq_keys: tuple[Signer, Verifier, Path]
) -> None:
    signer = hq_keys[0]
    hq.add(range(3))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq)
    assert kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, WAIT)
    base = hq.catalog.version
    good = hq.catalog.changes_since(base - 1)
    reference = next(c for c in good if c["op"] == "upsert_reference")

    def variant(**data: object) -> list[dict]:
        return [{**reference, "version": base + 1, "data": {**reference["data"], **data}}]

    fleet = hq.topics.fleet
    hostile = [
        _delta(
            signer, fleet, base, base + 1, encode_delta(variant(dim=8, embedding="AAAAAAAAAAA="))
        ),  # wrong dimension
        _delta(signer, fleet, base, base + 1, encode_delta(variant(scale=math.nan))),  # NaN
        _delta(signer, fleet, base, base + 1, zlib.compress(b"{not json")),  # invalid JSON
        _delta(signer, fleet, base, base + 1, zlib.compress(b"\0" * 30_000_000)),  # zip bomb
        _delta(
            signer, fleet, base, base + 1, encode_delta([{**c, "product_id": "../../etc/passwd"} for c in good[:1]])
        ),
        _delta(signer, fleet, base, base + 1, b"\x00" * (kiosk.config.max_message_bytes + 1)),  # oversized
    ]
    huge = BlobManifest.model_construct(
        kind="snapshot",
        version=base + 9,
        model_fingerprint=hq.fingerprint,
        size=10**12,
        sha256="0" * 64,
        chunk_size=10**6,
        chunks=("0" * 64,) * 3,
    )
    manifest = {
        "version": base + 9,
        "model_fingerprint": hq.fingerprint,
        "snapshot": huge.model_dump(),
        "delta_floor": base + 9,
    }
    hostile_manifests = [
        signer.seal(
            EnvelopeHeader(kind="manifest", fleet=fleet, seq=10**13), json.dumps(manifest).encode()
        ),  # huge counts
        signer.seal(EnvelopeHeader(kind="manifest", fleet=fleet, seq=10**13), b"[]"),
    ]
    attacker = Tap(broker, client_id="attacker")
    for payload in hostile:
        attacker.inject(hq.topics.delta, payload)
    for payload in hostile_manifests:
        attacker.inject(hq.topics.manifest, payload)
    assert kiosk.wait_for(lambda k: k.counters["refused"] >= len(hostile) + len(hostile_manifests), WAIT)
    assert kiosk.version == base
    # A genuine update still goes through afterwards.
    hq.add(range(3, 4))
    attacker.close()
    manifest_obj = hq.publisher.publish(force=True)
    assert isinstance(manifest_obj, LatestManifest)
    assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT), kiosk.last_error

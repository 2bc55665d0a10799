"""The HQ side of sync: publish the master catalog (and model) as signed deltas, snapshots and releases.

One `publish()`:
1. a delta from the last published version to the current one (from the
   catalog's change log), if the log reaches back and it fits in one message;
2. the snapshot of the current version, chunked and retained;
3. the release (model + snapshot) when a model is given and its fingerprint
   has not been released yet, chunked and retained;
4. the retained, signed manifest naming all of the above.

HQ's own bookkeeping (last published version, sequence number) lives in a
sidecar `<master>.sync.json`, not in the catalog, so it never travels in a
snapshot. `serve()` repeats this whenever the master changes and answers
kiosks' resync requests: on the requester's own `reply/<kiosk-id>/` topics,
duplicate chunk indices collapsed, within a per-kiosk budget (`ResyncLimits`),
so no request makes HQ send more than a bounded amount, and to one kiosk only.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.chunks import BlobManifest, split
from shelfsight.catalog.sync.codec import (
    LatestManifest,
    compress_json,
    encode_delta,
    encode_release,
)
from shelfsight.catalog.sync.digest import content_digest, row_digest
from shelfsight.catalog.sync.envelope import EnvelopeHeader, Signer
from shelfsight.catalog.sync.limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_PACKET_BYTES, check_payload_limit
from shelfsight.catalog.sync.messages import (
    MAX_ENROLL_BYTES,
    MAX_STATUS_BYTES,
    MAX_WITHDRAW_BYTES,
    Enrollment,
    ResyncRequest,
    Withdrawal,
    parse_upstream,
)
from shelfsight.catalog.sync.topics import Topics
from shelfsight.catalog.sync.transport.base import Message, MessageBus
from shelfsight.edge_app.core.errors import (
    CatalogError,
    ConfigError,
    ShelfsightError,
    SyncError,
)
from shelfsight.edge_app.core.files import atomic_write
from shelfsight.edge_app.core.spec import load_spec

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 192 * 1024


@dataclass(frozen=True)
class ResyncLimits:
    """What one kiosk may make HQ send in answers to its resync requests, per `window_s`.

    A kiosk legitimately needs a missing delta or some chunks of one blob; the defaults leave room
    for a whole 100k-product snapshot (17.5 MB) per window, and nothing a kiosk asks for goes to
    any other kiosk.
    """

    window_s: float = 60.0
    requests: int = 30
    bytes: int = 32 * 1024 * 1024
    # Delta answers: a kiosk is at one version at a time, and each applied delta moves it on.
    deltas: int = 6
    # Chunks resent per request (after duplicates are collapsed); the kiosk asks again for the rest.
    chunks_per_answer: int = 64


@dataclass
class _Allowance:
    """One kiosk's use of its `ResyncLimits` in the current window."""

    since: float
    requests: int = 0
    bytes: int = 0
    deltas: int = 0


class PublishedState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    seq: int
    delta_floor: int
    model_fingerprint: str
    snapshot: BlobManifest | None = None
    release: BlobManifest | None = None


@dataclass
class _Blob:
    manifest: BlobManifest
    pieces: list[bytes] = field(repr=False)


class HqPublisher:
    def __init__(
        self,
        master: str | Path,
        signer: Signer,
        bus: MessageBus,
        topics: Topics,
        *,
        model: str | Path | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_packet_bytes: int = MAX_PACKET_BYTES,
        resync_limits: ResyncLimits = ResyncLimits(),
        content_digest: bool = True,
    ) -> None:
        """`max_packet_bytes` is the fleet's packet limit (every kiosk receives that much, `BrokerConfig`).

        `content_digest` False publishes only the row digest, for a fleet that still has kiosks older
        than the content digest (they refuse a manifest with a field they do not know).
        """
        # Refused before anything is published: chunks or deltas over the limit would never reach a kiosk.
        check_payload_limit(chunk_bytes, max_packet_bytes, "chunk size")
        check_payload_limit(max_message_bytes, max_packet_bytes, "message limit")
        self.master = Path(master)
        if not self.master.is_file():
            raise CatalogError(f"{self.master}: no such master catalog")
        self.model = Path(model) if model is not None else None
        self._signer = signer
        self._bus = bus
        self.topics = topics
        self.chunk_bytes = chunk_bytes
        self.max_message_bytes = max_message_bytes
        self.max_packet_bytes = max_packet_bytes
        self.resync_limits = resync_limits
        self.content_digest = content_digest
        self.state_path = self.master.with_name(self.master.name + ".sync.json")
        self._blobs: dict[str, _Blob] = {}
        self._allowances: dict[str, _Allowance] = {}
        # Delta envelopes by base version, for the master version they lead to: one computation serves many kiosks.
        self._deltas: tuple[int, dict[int, bytes | None]] = (-1, {})

    # -- state -------------------------------------------------------------------
    def load_state(self) -> PublishedState | None:
        if not self.state_path.exists():
            return None
        try:
            return PublishedState.model_validate_json(self.state_path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise SyncError(f"{self.state_path}: unreadable publisher state ({exc})") from exc

    def _next_seq(self, state: PublishedState | None) -> int:
        # Monotonic even if the sidecar is restored from an old backup (clock) or the clock jumps back (counter).
        return max((state.seq + 1) if state else 0, int(time.time() * 1000))

    # -- publishing ----------------------------------------------------------------
    def publish(self, *, force: bool = False) -> LatestManifest | None:
        """Publish the master's current version. Returns the manifest, or None if nothing changed."""
        state = self.load_state()
        with Catalog(self.master, create=False) as catalog:
            version, fingerprint = catalog.version, catalog.model_fingerprint
            if fingerprint is None:
                raise CatalogError(f"{self.master}: no embeddings yet, nothing to publish")
            if not force and state is not None and state.version == version and state.model_fingerprint == fingerprint:
                return None
            exported = catalog.export_snapshot()
            digest_version, digest = row_digest(catalog)
            content_version, content = content_digest(catalog) if self.content_digest else (version, None)
            if exported["version"] != version or digest_version != version or content_version != version:
                log.info("master changed while publishing v%d; publishing again next round", version)
                return None
            delta_sent = False
            if state is not None and state.version < version and state.model_fingerprint == fingerprint:
                delta_sent = self._publish_delta(catalog, state.version, version)
            snapshot_blob = compress_json(exported)
        snapshot = self._publish_blob("snapshot", version, fingerprint, snapshot_blob)
        release = self._release(state, version, fingerprint, snapshot_blob)
        if delta_sent and state is not None:
            floor = state.delta_floor
        elif state is not None and state.version == version and state.model_fingerprint == fingerprint:
            floor = state.delta_floor
        else:
            floor = version
        manifest = LatestManifest(
            version=version,
            model_fingerprint=fingerprint,
            snapshot=snapshot,
            release=release,
            delta_floor=floor,
            digest=digest,
            content_digest=content,
        )
        seq = self._next_seq(state)
        # Fields left unset are left out, so kiosks of earlier releases (which refuse unknown keys) can read it.
        envelope = self._signer.seal(
            EnvelopeHeader(kind="manifest", fleet=self.topics.fleet, seq=seq),
            manifest.model_dump_json(exclude_none=True).encode(),
        )
        self._bus.publish(self.topics.manifest, envelope, retain=True)
        new_state = PublishedState(
            version=version,
            seq=seq,
            delta_floor=floor,
            model_fingerprint=fingerprint,
            snapshot=snapshot,
            release=release,
        )
        atomic_write(self.state_path, new_state.model_dump_json(indent=2).encode())
        old = [b.manifest for b in self._blobs.values()]
        if state is not None:
            old += [m for m in (state.snapshot, state.release) if m is not None]
        self._clear_blobs(old, keep={snapshot.blob_id} | ({release.blob_id} if release else set()))
        log.info("published v%d (snapshot %d bytes, delta floor %d)", version, snapshot.size, floor)
        return manifest

    def _delta_envelope(self, catalog: Catalog, base: int, target: int) -> bytes | None:
        """A signed delta from `base` to `target` (the version being published), or None if the log or size says no."""
        try:
            changes = catalog.changes_since(base)
        except CatalogError as exc:
            log.info("no delta from v%d: %s", base, exc)
            return None
        if not changes or changes[-1]["version"] != target:
            return None
        header = EnvelopeHeader(
            kind="delta", fleet=self.topics.fleet, seq=self._next_seq(None), base=base, target=target
        )
        envelope = self._signer.seal(header, encode_delta(changes))
        if len(envelope) > self.max_message_bytes:
            log.info(
                "delta v%d->v%d is %d bytes, over the message limit; kiosks take the snapshot",
                base,
                target,
                len(envelope),
            )
            return None
        return envelope

    def _publish_delta(self, catalog: Catalog, base: int, target: int) -> bool:
        envelope = self._delta_envelope(catalog, base, target)
        if envelope is None:
            return False
        self._bus.publish(self.topics.delta, envelope)
        return True

    def _publish_blob(
        self, kind: Literal["snapshot", "release"], version: int, fingerprint: str, data: bytes
    ) -> BlobManifest:
        manifest, pieces = split(
            data,
            kind=kind,
            version=version,
            model_fingerprint=fingerprint,
            chunk_size=self.chunk_bytes,  # type: ignore[arg-type]
        )
        manifest.check_fits(self._bus.max_packet_bytes, self.max_packet_bytes)
        self._blobs[manifest.blob_id] = _Blob(manifest, pieces)
        for index, piece in enumerate(pieces):
            self._bus.publish(self.topics.blob_chunk(manifest.blob_id, index), piece, retain=True)
        return manifest

    def _release(
        self, state: PublishedState | None, version: int, fingerprint: str, snapshot_blob: bytes
    ) -> BlobManifest | None:
        if self.model is None:
            if state is not None and state.release is not None and state.release.model_fingerprint == fingerprint:
                return state.release  # still retained on the broker from an earlier publish
            return None
        spec = load_spec(self.model)
        if spec.fingerprint != fingerprint:
            raise ConfigError(
                f"{self.model}: model {spec.fingerprint[:12]} does not match the master catalog's model "
                f"{fingerprint[:12]}; re-embed the master with this model first"
            )
        if state is not None and state.release is not None and state.release.model_fingerprint == fingerprint:
            if state.release.blob_id in self._blobs:
                return state.release
        data = encode_release(json.loads(spec.to_json()), self.model.read_bytes(), snapshot_blob)
        return self._publish_blob("release", version, fingerprint, data)

    def _clear_blobs(self, manifests: list[BlobManifest], keep: set[str]) -> None:
        for manifest in manifests:
            if manifest.blob_id in keep:
                continue
            self._blobs.pop(manifest.blob_id, None)
            # An empty retained message deletes the retained chunk on the broker.
            for index in range(len(manifest.chunks)):
                self._bus.publish(self.topics.blob_chunk(manifest.blob_id, index), b"", retain=True, timeout=None)
            keep = keep | {manifest.blob_id}

    # -- answering kiosks ----------------------------------------------------------
    def answer(self, request: ResyncRequest) -> int:
        """Answer one kiosk's resync request on its own reply topics; returns the payload bytes sent.

        Within the kiosk's `ResyncLimits`: a request over its window's count or bytes gets nothing (the
        kiosk asks again later, and converges from the retained snapshot meanwhile).
        """
        allowance = self._allowance(request.kiosk_id)
        limits = self.resync_limits
        if allowance.requests >= limits.requests:
            log.info(
                "resync from %s: over %d requests in %.0fs, ignored", request.kiosk_id, limits.requests, limits.window_s
            )
            return 0
        allowance.requests += 1
        if request.blob_id is not None:
            blob = self._blobs.get(request.blob_id)
            if blob is None:
                return 0
            # Each index once, in range, at most chunks_per_answer of them, within the byte budget.
            wanted = sorted({i for i in request.chunks if 0 <= i < len(blob.pieces)})[: limits.chunks_per_answer]
            sent = 0
            for index in wanted:
                piece = blob.pieces[index]
                if allowance.bytes + len(piece) > limits.bytes:
                    log.info("resync from %s: byte budget spent, %d chunks not resent", request.kiosk_id, len(wanted))
                    break
                self._bus.publish(self.topics.reply_chunk(request.kiosk_id, request.blob_id, index), piece)
                allowance.bytes += len(piece)
                sent += len(piece)
            log.info("resent %d bytes of %s to %s", sent, request.blob_id, request.kiosk_id)
            return sent
        if request.from_version is None:
            return 0
        if allowance.deltas >= limits.deltas:
            log.info("resync from %s: over %d delta answers in %.0fs", request.kiosk_id, limits.deltas, limits.window_s)
            return 0
        envelope = self._delta_from(request.from_version)
        if envelope is None or allowance.bytes + len(envelope) > limits.bytes:
            return 0
        self._bus.publish(self.topics.reply_delta(request.kiosk_id), envelope)
        allowance.bytes += len(envelope)
        allowance.deltas += 1
        return len(envelope)

    def _allowance(self, kiosk_id: str) -> _Allowance:
        now = time.monotonic()
        allowance = self._allowances.get(kiosk_id)
        if allowance is None or now - allowance.since >= self.resync_limits.window_s:
            if len(self._allowances) > 10_000:  # forget kiosks whose window is over
                self._allowances = {
                    k: a for k, a in self._allowances.items() if now - a.since < self.resync_limits.window_s
                }
            allowance = self._allowances[kiosk_id] = _Allowance(since=now)
        return allowance

    def _delta_from(self, base: int) -> bytes | None:
        """The signed delta from `base` to the master's current version (cached per version), or None."""
        with Catalog(self.master, create=False) as catalog:
            version = catalog.version
            if base >= version:
                return None
            if self._deltas[0] != version:
                self._deltas = (version, {})
            cache = self._deltas[1]
            if base not in cache:
                if len(cache) >= 256:
                    cache.clear()
                cache[base] = self._delta_envelope(catalog, base, version)
            return cache[base]


EnrollmentSink = Callable[[Enrollment], object]
WithdrawalSink = Callable[[Withdrawal], object]


class HqServer:
    """`shelfsight hq serve`: publish on every master change, answer resyncs, collect enrollments.

    Create it first, hand `on_message`/`on_connect` to `open_bus`, then `run` with the publisher.
    `on_enrollment` and `on_withdrawal` (`EnrollmentInbox.add` and `.withdraw`) get each kiosk's
    message once it has been checked: size, strict model, the payload's kiosk id against the topic's.
    """

    def __init__(
        self,
        *,
        on_enrollment: EnrollmentSink | None = None,
        on_withdrawal: WithdrawalSink | None = None,
        poll_s: float = 2.0,
        share_group: str | None = None,
    ) -> None:
        self._on_enrollment = on_enrollment
        self._on_withdrawal = on_withdrawal
        self.poll_s = poll_s
        self._share_group = share_group
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stop_event = threading.Event()
        self.published = threading.Event()

    def on_message(self, message: Message) -> None:
        self._queue.put(("message", message))

    def on_connect(self, session_present: bool) -> None:
        self._queue.put(("connected", session_present))

    def run(self, publisher: HqPublisher, bus: MessageBus) -> None:
        """Serve until `stop_event` is set."""
        for leaf in ("resync", "enroll", "withdraw"):
            topic = publisher.topics.all_of(leaf)
            # A shared subscription spreads requests over several HQ workers (see docs/sync.md).
            bus.subscribe(f"$share/{self._share_group}/{topic}" if self._share_group else topic)
        next_poll = 0.0
        while not self.stop_event.is_set():
            try:
                kind, item = self._queue.get(timeout=0.2)
            except queue.Empty:
                kind, item = "tick", None
            try:
                if kind == "message":
                    try:
                        self._handle(publisher, item)
                    finally:
                        bus.ack(item)
                elif kind == "connected":
                    # The broker may have lost retained chunks (killed before saving): publish everything again.
                    publisher.publish(force=True)
                    self.published.set()
                if bus.connected and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_s
                    if publisher.publish() is not None:
                        self.published.set()
            except ShelfsightError as exc:
                log.warning("hq: %s", exc)

    def _handle(self, publisher: HqPublisher, message: Message) -> None:
        topics = publisher.topics
        topic = message.topic
        if topic.startswith(f"{topics.root}/resync/"):
            request = parse_upstream(ResyncRequest, message.payload, topic=topic, max_bytes=MAX_STATUS_BYTES)
            assert isinstance(request, ResyncRequest)
            publisher.answer(request)
        elif topic.startswith(f"{topics.root}/enroll/") and self._on_enrollment is not None:
            enrollment = parse_upstream(Enrollment, message.payload, topic=topic, max_bytes=MAX_ENROLL_BYTES)
            assert isinstance(enrollment, Enrollment)
            self._on_enrollment(enrollment)
        elif topic.startswith(f"{topics.root}/withdraw/") and self._on_withdrawal is not None:
            withdrawal = parse_upstream(Withdrawal, message.payload, topic=topic, max_bytes=MAX_WITHDRAW_BYTES)
            assert isinstance(withdrawal, Withdrawal)
            self._on_withdrawal(withdrawal)

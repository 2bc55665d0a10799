"""The kiosk side of sync: follow HQ's signed manifest, apply deltas, snapshots and releases.

`KioskSync` runs one worker thread next to the kiosk. The bus thread only
queues messages; the worker verifies, applies and then acknowledges them, so
a message is acknowledged to the broker only after its effect is committed
(or after it was refused for good). A manifest or delta that could not be
written (a full disk: OSError, SQLite's "database or disk is full") is not
acknowledged: it is kept and tried again, with a growing pause, until a write
succeeds, and the status shows the error until then. Rules, in every phase:

- every envelope: size, then signature, then header; other fleets are refused;
- manifest: a lower sequence number than one already accepted is a replay;
- delta: applied only on exactly the version it names; later ones are held
  (persisted) for `hold_s`; a target at or below our version is a no-op;
- behind for longer than `hold_s`, or below the manifest's `delta_floor`,
  or a delta that does not fit: fetch the snapshot named by the manifest;
- model change: fetch the release (model + catalog) and switch both at once.

What the worker is doing is its `Phase`, with the data that phase needs in
`Progress`; `_pursue` decides the phase from the facts (our version and
model, HQ's latest manifest, held deltas) after every message and every tick,
and `_enter` is the only place it changes (checked against `TRANSITIONS`,
logged). The facts live apart from the phase on purpose: the catalog's own
version and the persisted sync state are the truth after a restart or a kill,
the phase is only the plan for getting from them to HQ's manifest.

    phase       doing                                         leaves for
    stopped     not started, or stopped                       waiting (start)
    waiting     started, nothing to pursue: no manifest yet   any phase below (first manifest or tick)
    current     at (or past) the manifest's version, model    behind (newer manifest), holding (a delta
                and content                                   ahead of its base), fetching (other model
                                                              or digest mismatch), stalled
    behind      behind the manifest: asked HQ for a delta     current (delta applied), holding, fetching
                (resync), waits up to `hold_s`                (`hold_s` over, or below `delta_floor`), stalled
    holding     out-of-order deltas held for their missing    current/behind (the gap filled), fetching
                base, at most `hold_s`                        (it did not), waiting (no manifest yet)
    fetching    collecting the chunks of a snapshot or        installing (all chunks), fetching (another
                release; asks for missing ones again          blob), current/behind/holding (deltas
                                                              caught up or the manifest moved on), stalled
    installing  checking and writing a complete blob          current/behind/holding/fetching (done:
                                                              `_pursue` decides), stalled (install failed)
    stalled     cannot progress on its own: chunks too big    current/behind/holding/fetching (a new
                for the broker, an install that failed        manifest, a retry after 30 s, a delta
                (retried after 30 s), a model without release that catches up)

Every phase may go to `stopped`. Deltas are applied in every phase (a delta
that catches up while fetching ends the fetch), and a complete blob is
installed only from `fetching`.

The kiosk's own search `Catalog` is a separate object on the same file; it
learns about new versions through `on_applied(version)` and `on_release(model,
catalog)` and swaps its index itself.
"""

from __future__ import annotations

import errno
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.chunks import Assembler, BlobManifest
from shelfsight.catalog.sync.codec import (
    LatestManifest,
    decode_delta,
    decode_release,
    decode_snapshot,
    parse_manifest,
)
from shelfsight.catalog.sync.digest import content_digest, row_digest
from shelfsight.catalog.sync.envelope import Envelope, Verifier, load_verifier
from shelfsight.catalog.sync.limits import broker_limit_problem
from shelfsight.catalog.sync.messages import (
    MAX_ENROLL_BYTES,
    MAX_WITHDRAW_BYTES,
    Enrollment,
    KioskStatus,
    ResyncRequest,
    Withdrawal,
    enrollment_created,
)
from shelfsight.catalog.sync.transport.base import Message, MessageBus, Will
from shelfsight.catalog.sync.transport.factory import open_bus
from shelfsight.edge_app.core.errors import ShelfsightError, SyncError
from shelfsight.edge_app.kiosk.updates.config import SyncConfig
from shelfsight.edge_app.kiosk.updates.releases import (
    current_fingerprint,
    current_release,
    install_release,
)
from shelfsight.edge_app.kiosk.updates.state import SyncState

log = logging.getLogger(__name__)

CatalogOpener = Callable[[Path], Catalog]
StateOpener = Callable[[Path], SyncState]
BusFactory = Callable[..., MessageBus]
STATE_NAME = "sync_state.db"
_TICK_S = 0.2
_EVENT_BUFFER = 32  # announcement events waiting for the next tick; older ones are dropped
_STATUS_EVERY_S = 30.0
# A snapshot or release that failed to install (e.g. disk full) is fetched again only after this long.
_RETRY_FAILED_S = 30.0
# `Progress.behind_since` once deltas are given up on: "behind for ever", so the snapshot is due at once.
_GAVE_UP = -math.inf
# Messages that could not be written are tried again after this pause, doubled up to _RETRY_WRITE_MAX_S.
_RETRY_WRITE_S = 0.5
_RETRY_WRITE_MAX_S = 30.0
# Unwritten messages kept for a retry; the broker's in-flight window (20 in the example config) bounds them first.
_MAX_UNWRITTEN = 1000
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
# How long `withdraw_enrollment` waits for the worker to decide (it may be installing a snapshot meanwhile).
_WITHDRAW_WAIT_S = 10.0
# What `withdraw_enrollment` did: HQ will never see the enrollment, or HQ is told to withdraw it.
REMOVED_FROM_OUTBOX = "removed from outbox"
WITHDRAWAL_QUEUED = "withdrawal queued"


def is_write_failure(exc: BaseException) -> bool:
    """A failure to persist (full disk, I/O error) rather than a bad message: worth trying again later."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            return True
        if isinstance(seen, sqlite3.OperationalError):
            text = str(seen).lower()
            if "full" in text or "disk i/o" in text or "readonly" in text or "locked" in text:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


class Phase(str, Enum):
    """What the sync worker is doing; the module docstring has the table of transitions."""

    STOPPED = "stopped"
    WAITING = "waiting"
    CURRENT = "current"
    BEHIND = "behind"
    HOLDING = "holding"
    FETCHING = "fetching"
    INSTALLING = "installing"
    STALLED = "stalled"


# Allowed changes, as in the module docstring's table (a phase may always stay as it is); `_enter` refuses others.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    phase: frozenset(later) | {Phase.STOPPED} if phase is not Phase.STOPPED else frozenset(later)
    for phase, later in {
        Phase.STOPPED: {Phase.WAITING},
        Phase.WAITING: {Phase.CURRENT, Phase.BEHIND, Phase.HOLDING, Phase.FETCHING, Phase.STALLED},
        Phase.CURRENT: {Phase.BEHIND, Phase.HOLDING, Phase.FETCHING, Phase.STALLED},
        Phase.BEHIND: {Phase.CURRENT, Phase.HOLDING, Phase.FETCHING, Phase.STALLED},
        Phase.HOLDING: {Phase.WAITING, Phase.CURRENT, Phase.BEHIND, Phase.FETCHING, Phase.STALLED},
        Phase.FETCHING: {Phase.INSTALLING, Phase.CURRENT, Phase.BEHIND, Phase.HOLDING, Phase.STALLED},
        Phase.INSTALLING: {Phase.CURRENT, Phase.BEHIND, Phase.HOLDING, Phase.FETCHING, Phase.STALLED},
        Phase.STALLED: {Phase.CURRENT, Phase.BEHIND, Phase.HOLDING, Phase.FETCHING},
    }.items()
}
# Phases in which the worker is (or may still be) behind HQ: they keep `behind_since` and `resync_sent`.
_BEHIND_PHASES = {Phase.BEHIND, Phase.HOLDING, Phase.FETCHING, Phase.INSTALLING, Phase.STALLED}


@dataclass
class Progress:
    """The data of the current phase. A field is used by the phases named; others leave it at its default."""

    # behind, holding, fetching, installing, stalled: when (monotonic) we first saw we were behind the manifest;
    # `_GAVE_UP` after a gap that did not fill or a delta that did not fit (the snapshot is due at once).
    behind_since: float | None = None
    # Same phases: when we asked HQ for the delta from our version; once per manifest, connection and version.
    resync_sent: float | None = None
    # fetching: the chunks collected so far, and when the last one came (to ask again for the missing ones).
    assembly: Assembler | None = None
    last_chunk: float = 0.0
    # stalled: why (the status's last_error says it in the words of the error itself).
    reason: str | None = None


class KioskSync:
    def __init__(
        self,
        config: SyncConfig,
        data_dir: str | Path,
        *,
        verifier: Verifier | None = None,
        on_applied: Callable[[int], None] | None = None,
        on_release: Callable[[Path, Path], None] | None = None,
        metrics: Callable[[], dict[str, float]] | None = None,
        on_phase: Callable[[Phase, Phase], None] | None = None,
        open_catalog: CatalogOpener = Catalog,
        bus_factory: BusFactory = open_bus,
        open_state: StateOpener = SyncState,
    ) -> None:
        self.config = config
        self.topics = config.topics
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._verifier = verifier if verifier is not None else load_verifier(config.public_key)
        self._on_applied = on_applied
        self._on_release = on_release
        self._metrics = metrics
        self._on_phase = on_phase  # (old, new) on every change, on the worker thread: e.g. "updating..." on the page
        self._open_catalog = open_catalog
        self._bus_factory = bus_factory
        self._open_state = open_state
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._bus: MessageBus | None = None
        self._started_at = time.monotonic()
        # Worker-thread state below. Facts: what is installed and what HQ asks for.
        self._state: SyncState | None = None
        self._catalog: Catalog | None = None
        self._version = 0
        self._model_fp: str | None = None
        self._target: LatestManifest | None = None
        # The plan: see `Phase`.
        self._phase = Phase.STOPPED
        self._progress = Progress()
        # What we learnt on the way. Blobs (by id and chunk size) not to fetch before a time (inf: never), with why:
        self._blocked: dict[tuple[str, int], tuple[float, str]] = {}
        # (version, HQ's digest, whether ours matched): the digest is computed once per manifest.
        self._checked: tuple[int, str, bool] | None = None
        # Manifests and deltas received but not written (disk full), unacknowledged, and when to try again.
        self._unwritten: list[Message] = []
        self._retry_at = 0.0
        self._retry_pause = _RETRY_WRITE_S
        # Why the broker's packet limit could stall us (checked on every connect); shown while nothing else is.
        self._limit_problem: str | None = None
        self._last_error: str | None = None
        self._last_status = 0.0
        self._offline_since: float | None = time.monotonic()  # until the first connect
        self._events: deque[bytes] = deque(maxlen=_EVENT_BUFFER)
        # Outbox rows handed to the bus without an acknowledgement: the client may still deliver them
        # (paho keeps a timed-out QoS 1 message in flight), so taking one back must also tell HQ.
        self._attempted: set[int] = set()
        self.counters = {"applied": 0, "duplicates": 0, "refused": 0, "held": 0, "snapshots": 0, "releases": 0}

    # -- lifecycle (any thread) ------------------------------------------------
    def start(self) -> None:
        """Open state, connect in the background (the kiosk serves even while the broker is away), start the worker."""
        self._open_local()
        self._enter(Phase.WAITING)
        offline = KioskStatus(kiosk_id=self.config.kiosk_id, state="offline").model_dump_json().encode()
        self._bus = self._bus_factory(
            self.config,
            client_id=self.config.kiosk_id,
            on_message=lambda message: self._queue.put(("message", message)),
            on_connect=lambda session_present: self._queue.put(("connected", session_present)),
            will=Will(self.topics.status(self.config.kiosk_id), offline),
        )
        self._bus.subscribe(self.topics.manifest)
        self._bus.subscribe(self.topics.delta)
        self._bus.subscribe(self.topics.replies(self.config.kiosk_id))  # HQ's answers to our resync requests
        self._bus.connect(timeout=None)
        self._thread = threading.Thread(target=self._run, name=f"sync-{self.config.kiosk_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            if not self._thread.is_alive():
                self._drain_commands()
            self._thread = None
        if self._bus is not None:
            if self._bus.connected:
                try:
                    status = self._status(state="offline").model_dump_json().encode()
                    self._bus.publish(self.topics.status(self.config.kiosk_id), status, retain=True, timeout=2)
                except SyncError as exc:
                    log.info("could not publish offline status: %s", exc)
            self._bus.close()
            self._bus = None
        self._enter(Phase.STOPPED)
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        if self._state is not None:
            self._state.close()
            self._state = None

    def __enter__(self) -> "KioskSync":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def version(self) -> int:
        return self._version

    @property
    def model_fingerprint(self) -> str | None:
        return self._model_fp

    @property
    def target_version(self) -> int | None:
        """The version HQ's latest accepted manifest names (None before the first one)."""
        target = self._target
        return None if target is None else target.version

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def progress(self) -> Progress:
        """The current phase's data (read-only for callers)."""
        return self._progress

    @property
    def fetching(self) -> tuple[str, int, int] | None:
        """(kind, chunks received, chunks total) of the snapshot or release being fetched, if any."""
        assembly = self._progress.assembly
        if assembly is None:
            return None
        total = len(assembly.manifest.chunks)
        return assembly.manifest.kind, total - len(assembly.missing()), total

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def health_problem(self, grace_s: float) -> str | None:
        """Why sync is down, or None: the broker unreachable for more than `grace_s` (updates have stopped)."""
        since = self._offline_since
        if self._thread is None:
            return "sync is not running"
        if since is None or time.monotonic() - since <= grace_s:
            return None
        broker = f"{self.config.host}:{self.config.port}"
        return f"broker {broker} unreachable for {time.monotonic() - since:.0f} s" + (
            f" ({self._last_error})" if self._last_error else ""
        )

    def publish_event(self, payload: bytes) -> None:
        """Publish a recognition event on `events/<kiosk-id>` if connected (QoS 0): live news, dropped offline.

        Kept apart from the worker's queue, in a short buffer its next tick (at most 0.2 s away) sends:
        a stalled broker drops the oldest events instead of growing a queue that enrollments wait behind.
        """
        self._events.append(payload)

    def wait_for(self, predicate: Callable[["KioskSync"], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (checked after every change) or `timeout` passes."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def send_enrollment(self, enrollment: Enrollment) -> None:
        """Queue a locally taught product for HQ; it survives restarts until the broker has it."""
        if enrollment.kiosk_id != self.config.kiosk_id:
            raise SyncError(f"enrollment names kiosk {enrollment.kiosk_id!r}, we are {self.config.kiosk_id!r}")
        payload = enrollment.to_json()
        # Checked here, not at sending: one that can never be delivered would block the outbox behind it.
        if len(payload) > MAX_ENROLL_BYTES:
            raise SyncError(f"enrollment: {len(payload)} bytes, over the {MAX_ENROLL_BYTES}-byte message limit")
        self._queue.put(("enroll", payload))

    def withdraw_enrollment(self, product_id: str, created: float) -> str:
        """Take back the enrollment of `product_id` stamped `created` (`Enrollment.created`): its teach was undone.

        Returns "removed from outbox" when the broker never had it (HQ will never see it), or
        "withdrawal queued" when it may have: a `Withdrawal` then goes to HQ on `withdraw/<kiosk-id>`,
        queued like enrollments (it survives restarts until the broker has it), and HQ marks the
        enrollment withdrawn. The worker thread decides, since it alone sends the queue: no send
        slips in between looking and answering. SyncError when sync is not running.
        """
        withdrawal = Withdrawal(
            kiosk_id=self.config.kiosk_id, product_id=product_id, enrollment_created=created, created=time.time()
        )
        thread = self._thread
        if thread is None or not thread.is_alive():
            raise SyncError(f"sync is not running: the enrollment of {product_id} cannot be withdrawn now")
        answer: Future[str] = Future()
        self._queue.put(("withdraw", (withdrawal, answer)))
        try:
            return answer.result(timeout=_WITHDRAW_WAIT_S)
        except FutureTimeout:
            if answer.done():  # answered just now
                return answer.result()
            thread = self._thread
            if thread is None or not thread.is_alive():
                raise SyncError(f"sync stopped: the enrollment of {product_id} was not withdrawn") from None
            # Still in the worker's queue behind its current work (an install, a retry): it is carried out next.
            log.info("sync is busy; the withdrawal of %s's enrollment waits in its queue", product_id)
            return WITHDRAWAL_QUEUED

    # -- worker ------------------------------------------------------------------
    def _open_local(self) -> None:
        self._state = self._open_state(self.data_dir / STATE_NAME)
        saved = self._state.get("manifest")
        if saved is not None:
            self._target = LatestManifest.model_validate(saved)
        self._load_current()

    def _load_current(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        fingerprint = current_fingerprint(self.data_dir)
        if fingerprint is None:
            self._version, self._model_fp = 0, None
            return
        _, catalog_path = current_release(self.data_dir)
        self._catalog = self._open_catalog(catalog_path)
        self._version, self._model_fp = int(self._catalog.version), fingerprint

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, item = self._queue.get(timeout=_TICK_S)
            except queue.Empty:
                kind, item = "tick", None
            try:
                if kind == "message":
                    self._handle(item)
                elif kind == "connected":
                    self._progress.resync_sent = None
                    self._check_limits()
                    self._publish_status()
                elif kind == "enroll":
                    self._require_state().queue(self.topics.enroll(self.config.kiosk_id), item)
                elif kind == "withdraw":
                    self._answer(*item)
                self._tick()
            except Exception as exc:  # the worker must outlive any bug; the kiosk keeps serving
                log.exception("sync worker error")
                self._note_error(f"internal error: {exc}")

    def _answer(self, withdrawal: Withdrawal, answer: "Future[str]") -> None:
        try:
            answer.set_result(self._withdraw(withdrawal))
        except Exception as exc:
            answer.set_exception(exc)
            raise

    def _drain_commands(self) -> None:
        """After the worker stopped: what it had not taken yet still goes into the outbox (enrollments and
        withdrawals survive a stop); the thread is gone, so this one may use the state."""
        while True:
            try:
                kind, item = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "enroll":
                    self._require_state().queue(self.topics.enroll(self.config.kiosk_id), item)
                elif kind == "withdraw":
                    self._answer(*item)
            except Exception:
                log.exception("sync: could not keep a queued %s at stop", kind)

    def _check_limits(self) -> None:
        """After a connect: can the broker hand us a packet we would refuse? (It would stall our session.)"""
        if self._bus is None:
            return
        receive = self._bus.receive_limit
        problem = None if receive is None else broker_limit_problem(self._bus.max_packet_bytes, receive)
        if problem != self._limit_problem and problem is not None:
            log.error("sync: %s", problem)
        self._limit_problem = problem

    def _handle(self, message: Message, *, retry: bool = False) -> bool:
        """Act on one message; False if it could not be written (kept unacknowledged, tried again later)."""
        delta_topics = (self.topics.delta, self.topics.reply_delta(self.config.kiosk_id))
        written = True
        try:
            if message.topic == self.topics.manifest:
                if message.payload:
                    self._on_manifest(message.payload)
            elif message.topic in delta_topics:
                self._on_delta(message.payload)
            else:
                parsed = self.topics.parse_blob_chunk(message.topic, self.config.kiosk_id)
                if parsed is not None and message.payload:
                    self._on_chunk(parsed[0], parsed[1], message.payload)
            self._drain_held()
        except (ShelfsightError, sqlite3.Error, OSError) as exc:
            # Only a manifest or delta is kept: a chunk's install failure has its own retry (`_block`).
            written = not (
                is_write_failure(exc) and (message.topic == self.topics.manifest or message.topic in delta_topics)
            )
            if written:
                self.counters["refused"] += 1
                log.warning("refused %s: %s", message.topic, exc)
            else:
                log.warning("could not write %s (%s); keeping it to try again", message.topic, exc)
                self._keep_unwritten(message, retry=retry)
            self._note_error(str(exc))
        finally:
            # Acknowledge only now: after the commit, or after deciding the message is useless.
            if written and self._bus is not None:
                self._bus.ack(message)
            with self._changed:
                self._changed.notify_all()
        return written

    def _keep_unwritten(self, message: Message, *, retry: bool) -> None:
        now = time.monotonic()
        if retry:
            self._retry_pause = min(self._retry_pause * 2, _RETRY_WRITE_MAX_S)
        else:
            self._unwritten.append(message)
            if len(self._unwritten) > _MAX_UNWRITTEN:
                # Not acknowledged either: the broker sends it again after a reconnect, and the manifest is retained.
                self._unwritten.pop(0)
        self._retry_at = now + self._retry_pause

    def _retry_unwritten(self) -> None:
        """Try the kept messages again, oldest first, until one still cannot be written."""
        if not self._unwritten or time.monotonic() < self._retry_at:
            return
        while self._unwritten:
            if not self._handle(self._unwritten[0], retry=True):
                return
            self._unwritten.pop(0)
        self._retry_pause = _RETRY_WRITE_S
        log.info("writes succeed again; caught up with what was kept")

    def _open(self, payload: bytes, what: str) -> Envelope:
        envelope = self._verifier.open(payload, max_bytes=self.config.max_message_bytes, what=what)
        if envelope.header.fleet != self.config.fleet:
            raise SyncError(f"{what}: addressed to fleet {envelope.header.fleet!r}, we are {self.config.fleet!r}")
        if envelope.header.kind != what:
            raise SyncError(f"{what}: envelope of kind {envelope.header.kind!r} on the {what} topic")
        return envelope

    def _on_manifest(self, payload: bytes) -> None:
        envelope = self._open(payload, "manifest")
        state = self._require_state()
        accepted_seq = int(state.get("manifest_seq", -1))
        if envelope.header.seq < accepted_seq:
            raise SyncError(f"manifest: sequence {envelope.header.seq} is older than {accepted_seq} (replay)")
        manifest = parse_manifest(envelope.payload)
        if manifest.model_fingerprint == self._model_fp and manifest.version < self._version:
            raise SyncError(f"manifest: version {manifest.version} is older than ours ({self._version}) (replay)")
        state.set("manifest_seq", envelope.header.seq)
        state.set("manifest", manifest.model_dump(mode="json"))
        if self._target is None or manifest != self._target:
            self._progress.resync_sent = None
        self._target = manifest
        self._pursue()

    def _on_delta(self, payload: bytes) -> None:
        """A delta, broadcast on `catalog/delta` or answering our resync on `reply/<id>/delta`."""
        envelope = self._open(payload, "delta")
        base, target = envelope.header.base, envelope.header.target
        what = f"delta v{base}->v{target}"
        if base is None or target is None or target <= base:
            raise SyncError(f"{what}: must name a base and a later target")
        if self._model_fp is None:
            return  # no release yet; the release brings its own catalog
        if target <= self._version:
            self.counters["duplicates"] += 1
            log.info("%s: already at v%d, ignored", what, self._version)
            return
        state = self._require_state()
        if base > self._version:
            if state.hold(base, target, payload):
                self.counters["held"] += 1
                log.info("%s: waiting for v%d first", what, base)
            else:
                self._fetch(self._target.snapshot if self._target else None)
            return
        if base < self._version:
            log.info("%s: does not start at our v%d; will use the snapshot", what, self._version)
            self._progress.behind_since = _GAVE_UP  # a doubt: go for the snapshot without waiting
            return
        changes = decode_delta(envelope.payload, what=what, max_bytes=self.config.max_blob_bytes)
        for change in changes:
            data = change.get("data") if isinstance(change, dict) else None
            if isinstance(data, dict) and "fingerprint" in data and data["fingerprint"] != self._model_fp:
                raise SyncError(f"{what}: carries embeddings of model {str(data['fingerprint'])[:12]}, not ours")
        self._require_catalog().apply_changes(base, changes, target)
        self._applied(target)

    def _drain_held(self) -> None:
        """Apply held deltas that now start at our version, in order."""
        state = self._require_state()
        while (following := state.take(self._version)) is not None:
            try:
                self._on_delta(following)
            except (ShelfsightError, sqlite3.Error, OSError) as exc:
                self.counters["refused"] += 1
                self._note_error(f"held delta: {exc}")
                return

    def _on_chunk(self, blob_id: str, index: int, payload: bytes) -> None:
        assembly = self._progress.assembly
        if assembly is None or assembly.manifest.blob_id != blob_id:
            return
        try:
            assembly.add(index, payload)
        except SyncError as exc:
            log.warning("%s; asking HQ to resend it", exc)
            self._note_error(str(exc))
            self._request(ResyncRequest(kiosk_id=self.config.kiosk_id, blob_id=blob_id, chunks=[index]))
            return
        self._progress.last_chunk = time.monotonic()
        if assembly.complete:
            data = assembly.result()
            blob = assembly.manifest
            self._enter(Phase.INSTALLING)
            try:
                self._install(blob, data)
            except Exception as exc:
                reason = f"{blob.kind} v{blob.version} failed to install ({exc}); retrying in {_RETRY_FAILED_S:.0f}s"
                self._block(blob, _RETRY_FAILED_S, reason)
                self._enter(Phase.STALLED, reason=reason)
                raise

    def _install(self, blob: BlobManifest, data: bytes) -> None:
        what = f"{blob.kind} v{blob.version}"
        if blob.kind == "release":
            content = decode_release(data, what=what)
            snapshot = decode_snapshot(content.snapshot, what=what, max_bytes=self.config.max_blob_bytes)
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None
            try:
                model_path, catalog_path = install_release(
                    self.data_dir, content.spec, content.model, snapshot, self._write_catalog
                )
            finally:
                self._load_current()
            self.counters["releases"] += 1
            log.info("%s: switched to model %s", what, str(self._model_fp)[:12])
            if self._on_release is not None:
                self._callback(self._on_release, model_path, catalog_path)
            self._applied(self._version)
            return
        if blob.model_fingerprint != self._model_fp:
            raise SyncError(
                f"{what}: built for model {blob.model_fingerprint[:12]}, ours is {str(self._model_fp)[:12]}"
            )
        diverged = self._checked is not None and not self._checked[2]
        if blob.version < self._version or (blob.version == self._version and not diverged):
            return
        snapshot = decode_snapshot(data, what=what, max_bytes=self.config.max_blob_bytes)
        self._require_catalog().replace_with_snapshot(snapshot)
        self.counters["snapshots"] += 1
        self._applied(int(self._require_catalog().version))

    def _write_catalog(self, path: Path, snapshot: dict[str, Any]) -> None:
        catalog = self._open_catalog(path)
        try:
            catalog.replace_with_snapshot(snapshot)
        finally:
            catalog.close()

    def _applied(self, version: int) -> None:
        state = self._require_state()
        self._version = version
        state.set("highest_version", max(version, int(state.get("highest_version", 0))))
        state.drop_pending(below=version)
        self.counters["applied"] += 1
        # A new version: being behind starts over (a resync from it is a new question), the digest is unchecked.
        self._progress.behind_since = None
        self._progress.resync_sent = None
        self._last_error = None
        self._checked = None
        log.info("catalog now at v%d", version)
        if self._on_applied is not None:
            self._callback(self._on_applied, version)
        self._publish_status()
        with self._changed:
            self._changed.notify_all()

    def _callback(self, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except Exception:
            log.exception("sync callback %s failed", getattr(func, "__name__", func))

    # -- pursuing the manifest ---------------------------------------------------
    def _tick(self) -> None:
        connected = self._bus is not None and self._bus.connected
        if connected:
            self._offline_since = None
        elif self._offline_since is None:
            self._offline_since = time.monotonic()
        self._publish_events()
        self._retry_unwritten()
        state = self._require_state()
        oldest = state.oldest_pending()
        if oldest is not None and time.time() - oldest > self.config.hold_s:
            log.info("held deltas waited %.1fs for a missing one; fetching the snapshot", self.config.hold_s)
            state.drop_pending()
            self._progress.behind_since = _GAVE_UP
        self._pursue()
        self._flush_outbox()
        if time.monotonic() - self._last_status > _STATUS_EVERY_S:
            self._publish_status()

    def _pursue(self) -> None:
        """Decide the phase from the facts; runs after every message and every tick."""
        target = self._target
        holding = self._require_state().pending_count() > 0
        if target is None:
            self._enter(Phase.HOLDING if holding else Phase.WAITING)
            return
        if target.model_fingerprint != self._model_fp:
            if target.release is None:
                reason = f"HQ moved to model {target.model_fingerprint[:12]} but published no release"
                self._note_error(reason)
                self._enter(Phase.STALLED, reason=reason)
            else:
                self._fetch(target.release)
            return
        if target.version <= self._version:
            self._progress.behind_since = None
            if target.version == self._version and not self._same_content(target):
                self._fetch(target.snapshot)
            else:
                self._enter(Phase.HOLDING if holding else Phase.CURRENT)
            return
        now = time.monotonic()
        progress = self._progress
        if progress.behind_since is None:
            progress.behind_since = now
        if self._version < target.delta_floor or now - progress.behind_since >= self.config.hold_s:
            self._fetch(target.snapshot)
            return
        # Still worth waiting for a delta: ask HQ for it (a snapshot already coming keeps coming meanwhile).
        if progress.resync_sent is None:
            progress.resync_sent = now
            self._request(ResyncRequest(kiosk_id=self.config.kiosk_id, from_version=self._version))
        if progress.assembly is None or progress.assembly.manifest != target.snapshot:
            self._enter(Phase.HOLDING if holding else Phase.BEHIND)

    def _same_content(self, target: LatestManifest) -> bool:
        """Does our catalog hold exactly HQ's rows at this version? Checked once per manifest."""
        # The content digest when HQ sends it; the row digest (ids and row versions) from an older HQ.
        theirs, digest = (
            (target.content_digest, content_digest)
            if target.content_digest is not None
            else (target.digest, row_digest)
        )
        if theirs is None or self._catalog is None:
            return True
        if self._checked is None or self._checked[:2] != (target.version, theirs):
            _, ours = digest(self._catalog)
            self._checked = (target.version, theirs, ours == theirs)
            if ours != theirs:
                log.error(
                    "catalog v%d differs from HQ's v%d (changed outside sync?); fetching the snapshot",
                    self._version,
                    target.version,
                )
                self._note_error(f"catalog v{self._version} diverged from HQ's; re-fetching the snapshot")
        return self._checked[2]

    def _fetch(self, blob: BlobManifest | None) -> None:
        """Fetch `blob` (or keep fetching it, asking again for chunks that do not come)."""
        if blob is None or self._bus is None:
            return
        now = time.monotonic()
        progress = self._progress
        if progress.assembly is not None and progress.assembly.manifest == blob:
            if now - progress.last_chunk > max(self.config.hold_s, 1.0):
                missing = progress.assembly.missing()
                log.info("%s v%d: %d chunks missing; asking HQ", blob.kind, blob.version, len(missing))
                self._request(ResyncRequest(kiosk_id=self.config.kiosk_id, blob_id=blob.blob_id, chunks=missing[:256]))
                progress.last_chunk = now
            return
        # By id and chunk size: HQ republishing the same content in smaller chunks is a new chance.
        blocked = self._blocked.get((blob.blob_id, blob.chunk_size))
        if blocked is not None and now < blocked[0]:
            self._enter(Phase.STALLED, reason=blocked[1])
            return
        try:
            # Our own receive limit too: the broker would drop chunks we refuse, and they would never come.
            blob.check_fits(self._bus.max_packet_bytes, self._bus.receive_limit)
            assembly = Assembler(blob, max_bytes=self.config.max_blob_bytes)
        except SyncError as exc:
            self._block(blob, math.inf, str(exc))  # HQ must publish another blob; this one can never arrive
            log.error("%s", exc)
            self._note_error(str(exc))
            self._enter(Phase.STALLED, reason=str(exc))
            return
        self._enter(Phase.FETCHING, assembly=assembly)
        log.info("fetching %s v%d (%d bytes, %d chunks)", blob.kind, blob.version, blob.size, len(blob.chunks))
        self._bus.subscribe(self.topics.blob_chunks(blob.blob_id))

    def _block(self, blob: BlobManifest, for_s: float, reason: str) -> None:
        now = time.monotonic()
        self._blocked = {k: v for k, v in self._blocked.items() if v[0] > now}  # forget what may be retried
        self._blocked[(blob.blob_id, blob.chunk_size)] = (now + for_s, reason)

    def _enter(self, phase: Phase, *, assembly: Assembler | None = None, reason: str | None = None) -> None:
        """Change phase (or the phase's blob or reason): the only place that does; checked and logged."""
        old, before = self._phase, self._progress
        if phase is not old and phase not in TRANSITIONS[old]:
            raise RuntimeError(f"sync worker: no transition from {old.value} to {phase.value}")
        if phase is old and before.assembly is assembly and before.reason == reason:
            return
        if before.assembly is not None and before.assembly is not assembly and self._bus is not None:
            self._bus.unsubscribe(self.topics.blob_chunks(before.assembly.manifest.blob_id))
        keep = phase in _BEHIND_PHASES
        self._progress = Progress(
            behind_since=before.behind_since if keep else None,
            resync_sent=before.resync_sent if keep else None,
            assembly=assembly,
            last_chunk=time.monotonic() if assembly is not None else 0.0,
            reason=reason,
        )
        self._phase = phase
        detail = reason or (f"{assembly.manifest.kind} v{assembly.manifest.version}" if assembly else "")
        target = self._target.version if self._target is not None else None
        log.info("sync %s -> %s at v%d (HQ: v%s) %s", old.value, phase.value, self._version, target, detail)
        if self._on_phase is not None and phase is not old:
            self._callback(self._on_phase, old, phase)
        with self._changed:
            self._changed.notify_all()

    def _request(self, request: ResyncRequest) -> None:
        if self._bus is None or not self._bus.connected:
            return
        payload = request.model_dump_json(exclude_defaults=True).encode()
        try:
            self._bus.publish(self.topics.resync(self.config.kiosk_id), payload, timeout=None)
        except SyncError as exc:
            log.info("resync request not sent: %s", exc)

    # -- upstream ----------------------------------------------------------------
    def _publish_events(self) -> None:
        while self._events:
            payload = self._events.popleft()
            if self._bus is None or not self._bus.connected:
                continue  # live news: not kept for later
            self._publish_event(payload)

    def _publish_event(self, payload: bytes) -> None:
        assert self._bus is not None
        try:
            self._bus.publish(self.topics.events(self.config.kiosk_id), payload, qos=0, timeout=None)
        except SyncError as exc:
            log.debug("event not published: %s", exc)

    def _flush_outbox(self) -> None:
        if self._bus is None or not self._bus.connected:
            return
        state = self._require_state()
        for item_id, topic, payload in state.outbox():
            self._attempted.add(item_id)
            try:
                self._bus.publish(topic, payload, timeout=5)
            except SyncError as exc:
                log.info("upstream message not delivered yet: %s", exc)
                return
            state.sent(item_id)
            self._attempted.discard(item_id)

    def _withdraw(self, withdrawal: Withdrawal) -> str:
        """On the worker thread: drop the enrollment from the outbox if it is there, else queue the withdrawal."""
        state = self._require_state()
        kiosk_id, product_id = self.config.kiosk_id, withdrawal.product_id
        for item_id, payload in reversed(state.queued_for(self.topics.enroll(kiosk_id), product_id)):
            if enrollment_created(payload) != withdrawal.enrollment_created:
                continue  # another teach of the same product
            state.unqueue(item_id)
            if item_id not in self._attempted:
                log.info("the enrollment of %s was taken back before it reached the broker", product_id)
                return REMOVED_FROM_OUTBOX
            # Handed to the bus once without an acknowledgement: it may still arrive, so HQ is told too.
            self._attempted.discard(item_id)
            break
        payload = withdrawal.to_json()
        if len(payload) > MAX_WITHDRAW_BYTES:  # ids are bounded far below this; checked as every sender checks
            raise SyncError(f"withdrawal: {len(payload)} bytes, over the {MAX_WITHDRAW_BYTES}-byte message limit")
        state.queue(self.topics.withdraw(kiosk_id), payload)
        log.info("withdrawal of the enrollment of %s queued for HQ", product_id)
        return WITHDRAWAL_QUEUED

    def _status(self, state: str = "online") -> KioskStatus:
        metrics = {}
        if self._metrics is not None:
            try:
                metrics = self._metrics()
            except Exception:
                log.exception("metrics callback failed")
        return KioskStatus(
            kiosk_id=self.config.kiosk_id,
            state=state,  # type: ignore[arg-type]
            catalog_version=self._version,
            target_version=self._target.version if self._target else None,
            model_fingerprint=self._model_fp,
            last_error=self._last_error or self._limit_problem,
            fps=metrics.get("fps"),
            uptime_s=round(time.monotonic() - self._started_at, 1),
            pending_deltas=self._state.pending_count() if self._state else 0,
            updated=time.time(),
        )

    def _publish_status(self) -> None:
        self._last_status = time.monotonic()
        if self._bus is None or not self._bus.connected:
            return
        payload = self._status().model_dump_json().encode()
        try:
            self._bus.publish(self.topics.status(self.config.kiosk_id), payload, retain=True, timeout=None)
        except SyncError as exc:
            log.info("status not published: %s", exc)

    def _note_error(self, message: str) -> None:
        message = message[:1000]
        if message == self._last_error:
            return  # the same problem seen again (e.g. on every tick): no new status message
        self._last_error = message
        self._publish_status()
        with self._changed:
            self._changed.notify_all()

    def _require_state(self) -> SyncState:
        if self._state is None:
            raise SyncError("sync is not started")
        return self._state

    def _require_catalog(self) -> Catalog:
        if self._catalog is None:
            raise SyncError("no catalog installed yet")
        return self._catalog

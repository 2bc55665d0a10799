"""The kiosk application: capture thread, recognition worker, and the state the web page reads.

Capture and recognition run in separate threads joined by a latest-frame slot:
the camera never waits for the model, and the model always works on the newest
frame (older ones are dropped, not queued, so the answer never lags behind the
shopper). The web server only reads the latest frame and the latest result.

Teaching: the recognition worker keeps the ROI crops of the last few frames
that showed something (a small ring buffer, the only per-frame copy), so a
clerk can teach an unknown product from what the camera just saw: `teach`
stores it as a local product with local references (one transaction), swaps the
search index, and, when sync is connected, sends it to HQ as an enrollment.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import cv2
import numpy as np

from shelfsight.edge_app.camera import (
    Frame,
    FrameSource,
    ReconnectingSource,
)
from shelfsight.edge_app.core.errors import (
    CatalogError,
    ImageError,
    InputError,
    NothingToUndo,
    ShelfsightError,
    SimilarProductError,
)
from shelfsight.edge_app.kiosk.config import KioskConfig
from shelfsight.edge_app.kiosk.priority import PipelineLock
from shelfsight.edge_app.kiosk.slots import LatestSlot, RateMeter
from shelfsight.edge_app.kiosk.sources import open_recognizer
from shelfsight.edge_app.kiosk.teaching import Taught, TeachRecord, UndoLog, encode_jpeg, lookalike
from shelfsight.edge_app.recognition import (
    Recognition,
    Recognizer,
    TemporalVoter,
)
from shelfsight.edge_app.recognition.background import BackgroundModel
from shelfsight.edge_app.recognition.config import RoiConfig
from shelfsight.edge_app.recognition.events import AnnouncementFeed
from shelfsight.edge_app.recognition.pipeline import crop_roi
from shelfsight.edge_app.recognition.state import KioskState

if TYPE_CHECKING:
    from shelfsight.catalog.store import Catalog
    from shelfsight.edge_app.kiosk.updates.worker import KioskSync

log = logging.getLogger(__name__)

TEACH_FRAMES = 5  # recent ROI crops kept for teaching: a second or two of camera at kiosk rates
# A camera that has sent nothing for this long is reported as down: well past a frame interval even at
# 2 fps, and short enough that the shopper's screen (polling at 4 Hz) says "out of order" within 2 s.
CAMERA_STALL_S = 1.5
STARTUP_GRACE_S = 10.0  # a camera may take this long to deliver its first frame (a Pi camera's sensor start)
SYNC_OFFLINE_GRACE_S = 60.0  # broker away this long: updates and enrollments have stopped, so sync is down


class SyncView(Protocol):
    """What the kiosk reads from its sync worker (KioskSync) for health and metrics."""

    @property
    def version(self) -> int: ...

    @property
    def target_version(self) -> int | None: ...

    @property
    def phase(self) -> Any: ...

    def health_problem(self, grace_s: float) -> str | None: ...


@dataclass(frozen=True)
class Problem:
    """Why a part of the kiosk is not working; `down` ones make /health 503."""

    component: str  # "camera" | "catalog" | "recognition" | "sync"
    reason: str
    down: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "reason": self.reason, "down": self.down}


@dataclass
class KioskStats:
    started: float = field(default_factory=time.monotonic)
    frames_captured: int = 0
    frames_recognised: int = 0
    errors: int = 0


def draw_roi(rgb: np.ndarray, roi: RoiConfig) -> np.ndarray:
    """A copy of the frame with the region of interest outlined, for the live view."""
    h, w = rgb.shape[:2]
    out = rgb.copy()
    p0 = (int(roi.x * w), int(roi.y * h))
    p1 = (int((roi.x + roi.width) * w) - 1, int((roi.y + roi.height) * h) - 1)
    cv2.rectangle(out, p0, p1, (255, 255, 255), 2)
    return out


class Kiosk:
    """Ties a frame source, the recognizer and the temporal voter together. `source` may be None (API only)."""

    def __init__(
        self,
        recognizer: Recognizer[Catalog],
        source: FrameSource | None = None,
        voter: TemporalVoter | None = None,
        *,
        jpeg_quality: int = 80,
        on_update: Callable[[KioskState], None] | None = None,
        camera_first: bool = True,
    ) -> None:
        self.recognizer = recognizer
        self.source = source
        cfg = recognizer.config
        self.voter = voter or TemporalVoter.from_config(cfg)
        self.background = BackgroundModel.from_config(cfg)
        self.jpeg_quality = jpeg_quality
        self.stats = KioskStats()
        self.capture_rate, self.recognition_rate = RateMeter(), RateMeter()
        self._frames: LatestSlot[Frame] = LatestSlot()
        self._state = KioskState(self.voter.current, None, 0, time.monotonic())
        self._state_lock = threading.Lock()
        # One pipeline user at a time: the camera worker and HTTP /search share the interpreter and caches.
        # A waiting frame goes first (camera_first=False: a plain lock, only for the benchmark's "before").
        self._pipeline_lock = PipelineLock(camera_first)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.source_ended = threading.Event()
        self._last_error = ""
        self._recent: deque[np.ndarray] = deque(maxlen=TEACH_FRAMES)
        self._recent_lock = threading.Lock()
        # Sync's seams (connect_sync): queue a teach's enrollment, returning its `created` stamp; take one back.
        self._send_enrollment: Callable[[Taught], float] | None = None
        self._withdraw_enrollment: Callable[[str, float], str] | None = None
        self._undo = UndoLog()  # what each teach stored, for undo_teach (pipeline lock)
        self._listeners: list[Callable[[KioskState], object]] = [on_update] if on_update is not None else []
        self._last_frame_at: float | None = None  # monotonic time of the latest captured frame
        self._last_result_at: float | None = None  # ... and of the latest frame recognised without an error
        self._catalog_error: str | None = None  # the latest catalog update that could not be loaded
        self._sync: SyncView | None = None
        # What is announced, as events for the page's stream and the store's MQTT (one per change, not per frame).
        self.events = AnnouncementFeed(self.product_info)
        self._listeners.append(self.events.observe)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Kiosk":
        if self.source is None:
            return self
        self._stop.clear()
        self.source.open()
        self._threads = [
            threading.Thread(target=self._capture_loop, name="kiosk-capture", daemon=True),
            threading.Thread(target=self._recognition_loop, name="kiosk-recognition", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._frames.wake()
        if self.source is not None:
            self.source.interrupt()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        if self.source is not None:
            self.source.close()  # only now: the capture thread is out of read()

    def __enter__(self) -> "Kiosk":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ threads

    def _capture_loop(self) -> None:
        assert self.source is not None
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except Exception:  # a camera fault must not kill the kiosk; the source logs what happened
                log.exception("frame source failed")
                self.stats.errors += 1
                if self._stop.wait(0.5):
                    break
                continue
            if frame is None:
                log.info("%s: end of stream", self.source.name)
                self.source_ended.set()
                break
            self.stats.frames_captured += 1
            self._last_frame_at = time.monotonic()
            self.capture_rate.tick()
            self._frames.put(frame)
        self._frames.wake()

    def _recognition_loop(self) -> None:
        seen = 0
        while not self._stop.is_set():
            frame, seq = self._frames.wait_newer(seen, timeout=0.5)
            if frame is None or seq == seen:
                if self.source_ended.is_set():
                    break
                continue
            seen = seq
            self.process(frame)

    def process(self, frame: Frame) -> KioskState:
        """Recognise one frame, vote, publish the new state (used by the worker and by `shelfsight demo`)."""
        try:
            # The vote and the published state change under the pipeline lock too: teach, undo and
            # catalog reloads reset the voter under it, and must not interleave with a push.
            with self._pipeline_lock.first():
                result = self._recognize_frame(frame.rgb)
                result.timings["capture"] = frame.capture_ms
                state = KioskState(self.voter.push(result), result, frame.index, time.monotonic())
                with self._state_lock:
                    self._state = state
        except Exception as exc:  # one bad frame (or a catalog being swapped) must not stop the kiosk
            self.stats.errors += 1
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:  # a persistent fault is logged once, not at the frame rate
                log.exception("recognition failed on frame %d", frame.index)
            self._last_error = message
            return self.state()
        self._last_error = ""
        self._last_result_at = time.monotonic()
        self.stats.frames_recognised += 1
        self.recognition_rate.tick()
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:  # an observer (metrics, events) must never stop recognition
                log.exception("state listener %s failed", getattr(listener, "__name__", listener))
        return state

    def add_listener(self, listener: Callable[[KioskState], object]) -> None:
        """Call `listener` with every new state, on the recognition thread: keep it short and non-blocking."""
        self._listeners.append(listener)

    def _recognize_frame(self, rgb: np.ndarray) -> Recognition:
        """The pipeline, unless the region of interest shows the learned empty background."""
        start = time.perf_counter()
        crop = crop_roi(rgb, self.recognizer.roi)
        is_background, thumb = self.background.matches(crop)
        result: Recognition | None = None
        if is_background and self.background.recheck_due():
            # Now and then the pipeline looks at the background too: a catalog product there (taught while
            # it was held still, or synced since) means it was never the empty view.
            checked = self.recognizer.recognize(rgb)
            if checked.decision == "product":
                self.background.forget()
                result = checked
        if result is None:
            result = (
                Recognition("empty", None, 0.0, (), {"preprocess": (time.perf_counter() - start) * 1000})
                if is_background
                else self.recognizer.recognize(rgb)
            )
        self.background.observe(thumb, recognised=result.decision == "product")
        if result.decision != "empty":
            with self._recent_lock:
                self._recent.append(crop.copy())  # the frame buffer may be reused by the camera
        return result

    def recent_crops(self) -> list[np.ndarray]:
        """The ROI crops of the last few frames that showed something, oldest first."""
        with self._recent_lock:
            return list(self._recent)

    # ------------------------------------------------------------------ teaching (local enrollment)

    def connect_sync(self, sync: "KioskSync") -> None:
        """Work with HQ through `sync`: what is taught here goes to HQ (queued; delivered when the broker is
        reachable) and is taken back from HQ when the teach is undone, announcements go out on the kiosk's `events/<id>` topic, and sync's health and lag are
        reported in `problems` and `health`."""
        kiosk_id = sync.config.kiosk_id

        def send(taught: Taught) -> float:
            enrollment = taught.enrollment(kiosk_id)
            sync.send_enrollment(enrollment)
            return enrollment.created

        self._send_enrollment = send
        self._withdraw_enrollment = lambda product_id, created: sync.withdraw_enrollment(product_id, created)
        self.events.subscribe(lambda event: sync.publish_event(json.dumps(event).encode()))
        self.watch_sync(sync)

    def teach(
        self,
        product_id: str,
        name: str,
        frames: Sequence[np.ndarray] | None = None,
        *,
        add_to_existing: bool = False,
        confirm_similar: bool = False,
        **fields: Any,
    ) -> Taught:
        """Teach the kiosk a product from `frames` (default: the recent ROI crops); recognised at once.

        A new id becomes a local product (fields: description, category, price, attributes);
        for an id the catalog has, the frames become extra local views of it, only with
        `add_to_existing` (a mistyped id would otherwise teach another product's looks). Frames that fail
        the reference quality check are skipped; InputError if none is usable or the id is invalid.
        Before anything is stored the usable frames are recognised: if most of them would be announced
        as another known product, SimilarProductError unless `confirm_similar` (two products that
        look alike would be confused at the counter). `undo_teach` takes the teach back.
        """
        from shelfsight.catalog import records
        from shelfsight.catalog.references import prepare_reference

        try:
            records.check_product_id(product_id)
        except CatalogError as exc:
            raise InputError(str(exc)) from exc
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"product {product_id}: a name is required")
        images = list(frames) if frames is not None else self.recent_crops()
        if not images:
            raise InputError("no frames to teach from: show the product to the camera first")
        with self._pipeline_lock:
            recognizer = self.recognizer
            catalog = recognizer.catalog
            prepared, usable, skipped = [], [], []
            for i, rgb in enumerate(images, 1):
                try:
                    prepared.append(prepare_reference(rgb, recognizer.embedder, f"taught frame {i}"))
                except (ImageError, InputError) as exc:
                    skipped.append(str(exc))
                else:
                    usable.append(rgb)
            if not prepared:
                raise InputError(f"no usable frame to teach {product_id} from: {'; '.join(skipped)}")
            if not add_to_existing and self._stored(product_id) is not None:
                raise InputError(
                    f"product {product_id} already exists; confirm with add_to_existing to add these views to it"
                )
            if not confirm_similar:
                self._refuse_lookalike(product_id, usable)
            with catalog.batch():
                existing = self._stored(product_id)
                if existing is not None and not add_to_existing:
                    raise InputError(
                        f"product {product_id} already exists; confirm with add_to_existing to add these views to it"
                    )
                if existing is None:
                    catalog.add_product(product_id, name.strip(), local=True, **fields)
                for reference in prepared:
                    catalog.add_prepared(product_id, reference, local=True)
                if existing is None:  # a synced product's row (and its thumbnail) is HQ's to change
                    catalog.fill_thumbnails([product_id])
                stored = catalog.product(product_id)
            before = None if existing is None else (int(existing["version"]), frozenset(existing["references"]))
            after = frozenset(stored["references"])
            record = TeachRecord(
                product_id,
                existing is None,
                tuple(sorted(after - (before[1] if before is not None else frozenset()))),
                int(stored["version"]),
                after,
            )
            self._undo.push(record, before)
            self._catalog_changed()  # rebuilt now, so the very next frame can match it
        typed = existing is None  # only a new product's row holds what the clerk typed
        taught = Taught(
            product_id,
            stored["name"],
            stored["category"],
            existing is None,
            tuple(prepared),
            tuple(skipped),
            price=stored["price"] if typed else None,
            description=stored["description"] if typed else None,
            reference_ids=record.added,
        )
        log.info(
            "taught %s (%s): %d views, %d frames skipped",
            product_id,
            "new" if existing is None else "existing",
            len(prepared),
            len(skipped),
        )
        taught = self._send_upstream(taught)
        record.enrollment_created = taught.enrollment_created
        return taught

    def _stored(self, product_id: str) -> dict[str, Any] | None:
        try:
            return self.recognizer.catalog.product(product_id)
        except CatalogError:
            return None

    def _refuse_lookalike(self, product_id: str, frames: Sequence[np.ndarray]) -> None:
        """SimilarProductError if most `frames` would be announced as a known product other than `product_id`."""
        if not len(self.recognizer.catalog.index()):
            return  # a store's first product: nothing to look like (and an empty index has no dimension yet)
        results = [self.recognizer.recognize(rgb, roi=RoiConfig.full_frame()) for rgb in frames]
        found = lookalike(results, product_id)
        if found is None:
            return
        log.info(
            "teach %s refused: %d of %d views look like %s", product_id, found.frames, len(results), found.product_id
        )
        raise SimilarProductError(
            f"these views look like {found.name} ({found.product_id}): {found.frames} of {len(results)} "
            "are recognised as it; confirm to teach them anyway",
            product_id=found.product_id,
            name=found.name,
            confidence=found.confidence,
        )

    def undo_teach(self, product_id: str) -> dict[str, Any]:
        """Take back the most recent teach of `product_id` made by this kiosk process.

        A product the teach created is removed with its views; views it added to an existing product
        are removed from it. NothingToUndo when there is nothing to take back: not taught here since the
        kiosk started, already undone, or changed since (HQ synced it, the CLI changed its views), whose
        change is kept. The teach's enrollment is taken back from HQ too (`KioskSync.withdraw_enrollment`).
        Returns {"product_id", "removed_product", "references_removed", "hq"}, where "hq" is what became of
        the enrollment: "not sent" (none was queued), "removed from outbox" (HQ never sees it),
        "withdrawal queued" (HQ is told to withdraw it; once approved there it stays, HQ's catalog is HQ's)
        or "not withdrawn" (sync could not take it back: HQ may still list it, reject it there).
        """
        with self._pipeline_lock:
            recognizer = self.recognizer
            catalog = recognizer.catalog
            with catalog.reading():  # checked and written under the catalog's lock: no other thread in between
                record = self._undo.latest(product_id)
                if record is None:
                    raise NothingToUndo(
                        f"nothing to undo for {product_id}: it was not taught on this kiosk since it started, "
                        "or that teach was already undone"
                    )
                why = record.changed(self._stored(product_id))
                if why is not None:
                    self._undo.forget(product_id)  # every earlier teach of it is built on what changed
                    raise NothingToUndo(f"nothing to undo for {product_id}: {why} since it was taught here")
                with catalog.batch():
                    if record.new_product:
                        catalog.remove_product(product_id)
                    else:
                        for reference_id in record.added:
                            catalog.remove_reference(reference_id)
                self._undo.pop(product_id)
            self._catalog_changed()  # rebuilt now, so the next frame no longer matches what was undone
        removed = len(record.references) if record.new_product else len(record.added)
        what = "the product and its" if record.new_product else "the"
        log.info("undid the teach of %s (%s %d views)", product_id, what, removed)
        # After the locks: the sync worker may take a moment to answer, and frames must not wait for it.
        hq = self._withdraw_upstream(product_id, record.enrollment_created)
        return {
            "product_id": product_id,
            "removed_product": record.new_product,
            "references_removed": removed,
            "hq": hq,
        }

    def _withdraw_upstream(self, product_id: str, created: float | None) -> str:
        """Take the undone teach's enrollment back from HQ; the undo stands whatever happens here."""
        if created is None:
            return "not sent"
        withdraw = self._withdraw_enrollment
        try:
            if withdraw is None:  # only a kiosk that queued the enrollment gets here, and it keeps its seams
                raise ShelfsightError("sync is not connected")
            return withdraw(product_id, created)
        except (ShelfsightError, ValueError) as exc:  # ValueError: pydantic's, for a withdrawal it cannot build
            log.error(
                "undid the teach of %s here, but its enrollment could not be withdrawn from HQ (%s): reject it there "
                "(`shelfsight hq enrollments`, `shelfsight hq reject`)",
                product_id,
                exc,
            )
            return "not withdrawn"

    def _send_upstream(self, taught: Taught) -> Taught:
        """Queue the enrollment for HQ; the product stays taught locally whatever happens here."""
        if self._send_enrollment is None:
            return taught
        from pydantic import ValidationError

        try:
            created = self._send_enrollment(taught)
        except (ShelfsightError, ValidationError) as exc:
            log.error("%s is taught here but could not be queued for HQ: %s", taught.product_id, exc)
            return taught
        return replace(taught, sent_to_hq=True, enrollment_created=created)

    # ------------------------------------------------------------------ what the web server reads

    def state(self) -> KioskState:
        with self._state_lock:
            return self._state

    def latest_frame(self) -> Frame | None:
        return self._frames.get()[0]

    def frame_jpeg(self) -> bytes | None:
        frame = self.latest_frame()
        if frame is None:
            return None
        return encode_jpeg(draw_roi(frame.rgb, self.recognizer.roi), self.jpeg_quality)

    def search(self, rgb: np.ndarray, k: int | None = None) -> Recognition:
        """One uploaded photo through the same pipeline (whole image, no ROI, no voting); `k` best candidates."""
        with self._pipeline_lock:
            return self.recognizer.recognize(rgb, roi=RoiConfig.full_frame(), k=k)

    def find_product(self, code: str) -> str | None:
        """The product whose id, or barcode attribute, is `code` (what a barcode scanner types)."""
        return self.recognizer.catalog.find_code(code)

    # ------------------------------------------------------------------ catalog and model updates (sync)

    def reload_catalog(self, version: int | None = None) -> None:
        """Pick up catalog changes written to the file by sync; on failure keep serving the current index."""
        try:
            self.recognizer.catalog.reload()
        except ShelfsightError as exc:
            log.error("catalog update %s could not be loaded; still serving the previous one: %s", version, exc)
            self.stats.errors += 1
            self._catalog_error = f"update {version} could not be loaded: {exc}"
        else:
            self._catalog_error = None
            self._catalog_reloaded()
            log.info("catalog now at version %s", self.recognizer.catalog.version)

    def _catalog_changed(self) -> None:
        """After a local write (teach, undo), under the pipeline lock: index, caches and announcement follow it."""
        self.recognizer.catalog.index()
        self.recognizer.forget_products()
        self._reset_announcement()

    def _reset_announcement(self) -> None:
        """Start the vote afresh and publish that, so no reader is shown a product the catalog may no longer hold."""
        self.voter.reset()
        with self._state_lock:
            self._state = replace(self._state, announcement=self.voter.current, frame=None)

    def _catalog_reloaded(self) -> None:
        """After a re-read: no cached row of a product removed elsewhere, and no announcement of one."""
        with self._pipeline_lock:
            recognizer = self.recognizer
            # A local product's removal leaves the catalog version as it was, so the recognizer's
            # version check would keep its cached rows: dropped here whatever changed.
            recognizer.forget_products()
            announced = self.voter.current.product_id
            if announced is not None and announced not in recognizer.catalog.index().product_ids:
                self._reset_announcement()  # the vote's hold would keep naming it for a while

    def reopen_catalog(self) -> bool:
        """Open the catalog file anew after it was replaced (`catalog build` renames a new file over it).

        The open connection keeps reading the replaced file, so a reload cannot see the new one. The
        new file is opened and indexed while the current one serves, then swapped in between two
        frames; if it cannot serve (not a catalog, another model), the current one keeps serving and
        this is logged. True if the kiosk switched to it.
        """
        from shelfsight.edge_app.kiosk.sources import open_catalog

        old = self.recognizer
        path = old.catalog.path
        if path is None:
            return False
        catalog = None
        try:
            catalog = open_catalog(path)
            recognizer = Recognizer(old.embedder, catalog, old.config, old.roi)
            catalog.index()
        except (ShelfsightError, ValueError, TypeError, KeyError) as exc:
            if catalog is not None:
                catalog.close()
            log.error("%s was replaced, but the new file cannot serve; still serving the previous one: %s", path, exc)
            self.stats.errors += 1
            return False
        with self._pipeline_lock:
            switched = self.recognizer is old  # not if a model release was switched in meanwhile
            if switched:
                self.recognizer = recognizer
                self._reset_announcement()
        (old.catalog if switched else catalog).close()  # the embedder is shared: left open
        if switched:
            log.info("%s was replaced; now serving its catalog version %s", path, catalog.version)
        return switched

    def replace_recognizer(self, recognizer: Recognizer[Catalog]) -> None:
        """Switch to another model + catalog between two frames, then release the old ones."""
        with self._pipeline_lock:
            old, self.recognizer = self.recognizer, recognizer
            self._reset_announcement()
        old.catalog.close()
        old.embedder.close()

    def switch_release(self, model_path: Path, catalog_path: Path, config: KioskConfig) -> None:
        """A new model release from HQ; if it cannot be opened, keep serving the current one."""
        try:
            recognizer = open_recognizer(model_path, catalog_path, config)
        except ShelfsightError as exc:
            log.error(
                "release %s could not be opened; still serving the previous model: %s", model_path.parent.name, exc
            )
            self.stats.errors += 1
            return
        self.replace_recognizer(recognizer)
        log.info("switched to model %s", recognizer.embedder.fingerprint[:12])

    def product_info(self, product_id: str) -> dict[str, Any]:
        with self._pipeline_lock:
            return self.recognizer.product_info(product_id)

    def thumbnail(self, product_id: str) -> bytes | None:
        return self.recognizer.catalog.thumbnail(product_id)

    def camera_status(self) -> dict[str, Any] | None:
        """None without a camera; else its name, whether frames are coming, and the last error."""
        source = self.source
        if source is None:
            return None
        if isinstance(source, ReconnectingSource):
            return {
                "name": source.name,
                "connected": source.connected,
                "error": None if source.connected else source.last_error,
            }
        return {"name": source.name, "connected": not self.source_ended.is_set(), "error": None}

    def watch_sync(self, sync: "SyncView") -> None:
        """Report `sync` in `problems` (down when its broker is away too long) and its lag in `health`."""
        self._sync = sync

    def problems(self, now: float | None = None) -> list[Problem]:
        """What is not working now, for /health, the shopper's screen and /metrics."""
        now = time.monotonic() if now is None else now
        found: list[Problem] = []
        camera = self.camera_status()
        if camera is not None:
            seen = self._last_frame_at
            if not camera["connected"]:
                found.append(Problem("camera", f"{camera['name']}: {camera['error'] or 'end of stream'}"))
            elif seen is None and now - self.stats.started > STARTUP_GRACE_S:
                found.append(Problem("camera", f"{camera['name']}: no frame since the kiosk started"))
            elif seen is not None and now - seen > CAMERA_STALL_S:
                found.append(Problem("camera", f"{camera['name']}: no frame for {now - seen:.0f} s"))
        if self._last_error and (self._last_result_at is None or now - self._last_result_at > CAMERA_STALL_S):
            found.append(Problem("recognition", f"every frame fails: {self._last_error}"))
        elif any(not t.is_alive() for t in self._threads) and not self.source_ended.is_set():
            found.append(Problem("recognition", "a kiosk thread has stopped; restart the kiosk"))
        try:
            products = self.recognizer.catalog.product_count()
        except ShelfsightError as exc:
            found.append(Problem("catalog", f"unreadable: {exc}"))
        else:
            if products == 0:
                found.append(Problem("catalog", "the catalog has no products"))
        if self._catalog_error is not None:  # still serving the previous catalog: degraded, not down
            found.append(Problem("catalog", self._catalog_error, down=False))
        if self._sync is not None:
            reason = self._sync.health_problem(SYNC_OFFLINE_GRACE_S)
            if reason is not None:
                found.append(Problem("sync", reason))
        return found

    def health(self) -> dict[str, Any]:
        embedder = self.recognizer.embedder
        problems = self.problems()
        return {
            "status": "down" if any(p.down for p in problems) else "degraded" if problems else "ok",
            "problems": [p.to_dict() for p in problems],
            "model_fingerprint": embedder.fingerprint,
            "catalog_version": self._catalog_version(),
            "uptime_s": round(time.monotonic() - self.stats.started, 1),
            "fps": round(self.recognition_rate.rate, 2),
            "capture_fps": round(self.capture_rate.rate, 2),
            "camera": self.camera_status(),
            "frames_captured": self.stats.frames_captured,
            "frames_recognised": self.stats.frames_recognised,
            "errors": self.stats.errors,
            "last_error": self._last_error or None,
            "sync": None if self._sync is None else self.sync_status(),
        }

    def _catalog_version(self) -> int | None:
        try:
            return self.recognizer.catalog.version
        except ShelfsightError:  # unreadable: `problems` says so, and /health must still answer 503
            return None

    def sync_status(self) -> dict[str, Any] | None:
        """The installed and the wanted catalog version (None without sync), for /health and /metrics."""
        sync = self._sync
        if sync is None:
            return None
        target = sync.target_version
        return {
            "version": sync.version,
            "target_version": target,
            "behind": max(0, target - sync.version) if target is not None else 0,
            "phase": str(getattr(sync.phase, "value", sync.phase)),
        }

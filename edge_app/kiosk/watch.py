"""The running kiosk follows catalog changes another process makes (`shelfsight catalog remove`, `add`, `build`).

What is polled, and why:

- `Catalog.data_version` (SQLite's `PRAGMA data_version` on the kiosk's own connection, ~7 us):
  it changes when another connection commits to the file and never for the kiosk's own
  writes, so teaching at the kiosk does not wake the watcher, let alone in a loop. The file's
  mtime and size would: the kiosk's own commits and WAL checkpoints change them too. When the
  catalog has already re-read that change (sync's worker writes through its own connection and
  then reloads the kiosk), `Catalog.loaded_data_version` equals it and nothing is done twice.
- The file's identity (device, inode; one `stat`, ~3 us): `catalog build` writes a new file
  and renames it over the old one, which the open connection keeps reading unchanged, so only a
  new inode shows it; the kiosk then opens the new file (`Kiosk.reopen_catalog`).

Each change is acted on once: a re-read that fails (a row no index can hold, a file that is
no longer a catalog) is logged by the kiosk, which keeps serving what it had, and is retried
at the next change, not at every poll.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from shelfsight.edge_app.core.errors import ShelfsightError

if TYPE_CHECKING:
    from shelfsight.catalog.store import Catalog
    from shelfsight.edge_app.kiosk.app import Kiosk

log = logging.getLogger(__name__)

FileIdentity = tuple[int, int]  # (st_dev, st_ino)


def file_identity(path: Path | None) -> FileIdentity | None:
    """Which file `path` names now (None: there is none)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class CatalogWatcher:
    """Polls the kiosk's catalog every `interval_s` in a thread; `check()` is one poll (tests call it directly)."""

    def __init__(self, kiosk: "Kiosk", interval_s: float) -> None:
        self.kiosk = kiosk
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._catalog: Catalog | None = None
        self._identity: FileIdentity | None = None  # the file the kiosk's catalog has open
        self._tried_identity: FileIdentity | None = None  # a replacement already tried
        self._tried_version: int | None = None  # a data_version already re-read (or tried)
        self._problem = ""  # the last poll failure, logged once
        self._follow(kiosk.recognizer.catalog)

    def _follow(self, catalog: "Catalog") -> None:
        """Start following `catalog` (at start, and after a release switch or a reopen swapped it)."""
        self._catalog = catalog
        self._identity = file_identity(catalog.path)
        self._tried_identity = self._tried_version = None

    def check(self) -> str | None:
        """Act on what changed since the last poll.

        Returns "reopened" (the replaced file now serves), "kept" (it could not, the open one still
        does), "reloaded" (a change re-read, or tried: the kiosk logs a failure), or None.
        """
        catalog = self.kiosk.recognizer.catalog
        if catalog is not self._catalog:
            self._follow(catalog)
        problem = ""
        identity = file_identity(catalog.path)
        if identity is None and self._identity is not None:
            problem = f"{catalog.path} is gone; still serving the catalog that is open"
        elif identity != self._identity and identity != self._tried_identity:
            self._tried_identity = identity
            log.info("%s was replaced by another file; opening it", catalog.path)
            if not self.kiosk.reopen_catalog():
                return "kept"
            self._follow(self.kiosk.recognizer.catalog)
            return "reopened"
        try:
            version = catalog.data_version
        except ShelfsightError as exc:
            self._report(f"cannot check {catalog.name} for changes: {exc}")
            return None
        self._report(problem)
        if version == catalog.loaded_data_version or version == self._tried_version:
            return None
        self._tried_version = version
        log.info("%s was changed by another process; re-reading it", catalog.name)
        self.kiosk.reload_catalog()
        return "reloaded"

    def _report(self, problem: str) -> None:
        if problem and problem != self._problem:  # a lasting fault is logged once, not at every poll
            log.warning("%s", problem)
        self._problem = problem

    # ------------------------------------------------------------------ thread

    def start(self) -> "CatalogWatcher":
        """Poll in a thread (not when `interval_s` is 0)."""
        if self.interval_s <= 0 or self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="catalog-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the kiosk keeps serving whatever one poll ran into; the next one tries again
                log.exception("catalog watch failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "CatalogWatcher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

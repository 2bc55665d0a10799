"""The topic tree, in one place (documented in docs/sync.md).

Everything lives under `<prefix>/<fleet>/`. HQ alone writes `catalog/#` and
`reply/#`; each kiosk writes only `status/<id>`, `enroll/<id>`, `withdraw/<id>`
(an enrollment taken back: the clerk undid the teach), `resync/<id>` and
`events/<id>` (what it announces, for the store's own systems; HQ ignores
them) and reads `catalog/#` and its own `reply/<id>/#` (HQ's answers to its
resync requests, which no other kiosk receives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shelfsight.edge_app.core.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# The defaults of both sides (a kiosk's [sync] section, `shelfsight hq --prefix/--fleet`): they must agree.
DEFAULT_PREFIX = "shelfsight"
DEFAULT_FLEET = "default"


def check_name(value: str, what: str) -> str:
    """Names become topic levels and file names: no wildcards, slashes or dots."""
    if not _NAME.match(value):
        raise ConfigError(f"{what} {value!r}: use 1-64 letters, digits, '-' or '_'")
    return value


@dataclass(frozen=True)
class Topics:
    prefix: str
    fleet: str

    def __post_init__(self) -> None:
        check_name(self.prefix, "topic prefix")
        check_name(self.fleet, "fleet")

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.fleet}"

    @property
    def manifest(self) -> str:
        """Retained: the latest version, its snapshot and its release."""
        return f"{self.root}/catalog/manifest"

    @property
    def delta(self) -> str:
        return f"{self.root}/catalog/delta"

    def blob_chunks(self, blob_id: str) -> str:
        return f"{self.root}/catalog/blob/{blob_id}/+"

    def blob_chunk(self, blob_id: str, index: int) -> str:
        return f"{self.root}/catalog/blob/{blob_id}/{index}"

    def status(self, kiosk_id: str) -> str:
        return f"{self.root}/status/{kiosk_id}"

    def enroll(self, kiosk_id: str) -> str:
        return f"{self.root}/enroll/{kiosk_id}"

    def withdraw(self, kiosk_id: str) -> str:
        """A teach undone at the kiosk after its enrollment reached the broker: HQ marks it withdrawn.

        A topic of its own, not a new key on `enroll/`: an HQ of an earlier release does not
        subscribe to it and never sees it, where it would refuse an enrollment with an unknown key.
        """
        return f"{self.root}/withdraw/{kiosk_id}"

    def resync(self, kiosk_id: str) -> str:
        return f"{self.root}/resync/{kiosk_id}"

    def events(self, kiosk_id: str) -> str:
        """What the kiosk announces, as it happens (QoS 0, not retained): for POS screens and dashboards."""
        return f"{self.root}/events/{kiosk_id}"

    def replies(self, kiosk_id: str) -> str:
        """What HQ sends one kiosk alone: `reply/<id>/delta` and `reply/<id>/blob/<blob-id>/<i>`."""
        return f"{self.root}/reply/{kiosk_id}/#"

    def reply_delta(self, kiosk_id: str) -> str:
        return f"{self.root}/reply/{kiosk_id}/delta"

    def reply_chunk(self, kiosk_id: str, blob_id: str, index: int) -> str:
        return f"{self.root}/reply/{kiosk_id}/blob/{blob_id}/{index}"

    def all_of(self, leaf: str) -> str:
        """`status`, `enroll`, `withdraw`, `resync` -> a filter for every kiosk's topic of that kind."""
        return f"{self.root}/{leaf}/+"

    def parse_blob_chunk(self, topic: str, kiosk_id: str | None = None) -> tuple[str, int] | None:
        """(blob id, index) of a retained chunk, or of a chunk resent to `kiosk_id` alone; else None."""
        head = f"{self.root}/catalog/blob/"
        if kiosk_id is not None and topic.startswith(f"{self.root}/reply/{kiosk_id}/blob/"):
            head = f"{self.root}/reply/{kiosk_id}/blob/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        return parts[0], int(parts[1])

    def kiosk_of(self, topic: str) -> str:
        return topic.rsplit("/", 1)[-1]

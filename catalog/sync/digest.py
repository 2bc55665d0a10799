"""Fingerprints of a catalog's synced content, so a kiosk can prove it holds exactly HQ's version.

The same version number must mean the same rows. If a kiosk's catalog was
changed behind sync's back (a versioned local edit, a row edited in place, a
restored backup), its version can match HQ's while its content does not;
comparing a digest with the one in HQ's manifest turns that silent divergence
into a snapshot fetch.

Two digests, both of the synced (non-local) rows only (what a clerk taught one
store is not HQ's), each read in one consistent read:

- `content_digest` (manifest field `content_digest`): the rows' content, as the
  records that travel (`catalog.replication.content_digest`). A direct edit of
  a row, at the same row version, is detected.
- `row_digest` (manifest field `digest`, the first digest): (id, row version)
  of every row. Kept in the manifest because kiosks of earlier releases compare
  it; it misses an edit that keeps the row version.

A kiosk checks `content_digest` when the manifest has it, else `digest`.
"""

from __future__ import annotations

import hashlib

from shelfsight.catalog import replication
from shelfsight.catalog.store import LOCAL_VERSION, Catalog

_QUERY = (
    f"SELECT 'P', id, version FROM products WHERE version > {LOCAL_VERSION} "
    "UNION ALL SELECT 'R', id, version FROM reference_images WHERE local = 0 "
    "UNION ALL SELECT 'V', '', value FROM meta WHERE key = 'version' "
    "ORDER BY 1, 2"
)


def row_digest(catalog: Catalog) -> tuple[int, str]:
    """(catalog version, SHA-256 hex of its synced rows' ids and row versions), read consistently."""
    digest = hashlib.sha256()
    version = 0
    for kind, row_id, row_version in catalog.db.execute(_QUERY):
        if kind == "V":
            version = int(row_version)
        else:
            digest.update(f"{kind}\t{row_id}\t{row_version}\n".encode())
    return version, digest.hexdigest()


def content_digest(catalog: Catalog) -> tuple[int, str]:
    """(catalog version, SHA-256 hex of its synced rows' content), read consistently."""
    return replication.content_digest(catalog)

"""A cheap fingerprint of a catalog's synced content, so a kiosk can prove it holds exactly HQ's version.

The same version number must mean the same rows. If a kiosk's catalog was
changed behind sync's back (a versioned local edit, a restored backup), its
version can match HQ's while its content does not; comparing this digest with
the one in HQ's manifest turns that silent divergence into a snapshot fetch.

Computed from (id, row version) of every non-local product and reference
(what a clerk taught one store is not HQ's), in one SQL statement (one
consistent read), not from the blobs.
"""

from __future__ import annotations

import hashlib

from shelfsight.catalog.store import LOCAL_VERSION, Catalog

_QUERY = (
    f"SELECT 'P', id, version FROM products WHERE version > {LOCAL_VERSION} "
    "UNION ALL SELECT 'R', id, version FROM reference_images WHERE local = 0 "
    "UNION ALL SELECT 'V', '', value FROM meta WHERE key = 'version' "
    "ORDER BY 1, 2"
)


def content_digest(catalog: Catalog) -> tuple[int, str]:
    """(catalog version, SHA-256 hex of its synced rows), read consistently."""
    digest = hashlib.sha256()
    version = 0
    for kind, row_id, row_version in catalog.db.execute(_QUERY):
        if kind == "V":
            version = int(row_version)
        else:
            digest.update(f"{kind}\t{row_id}\t{row_version}\n".encode())
    return version, digest.hexdigest()

"""shelfsight catalog: the SQLite product catalog, its search index and HQ->store sync."""

from shelfsight.catalog.index import SearchHit, SearchIndex
from shelfsight.catalog.store import Catalog

__all__ = ["Catalog", "SearchHit", "SearchIndex"]

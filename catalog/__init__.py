"""shelfsight catalog: the SQLite product catalog, its search index and HQ->store sync."""

from catalog.index import SearchHit, SearchIndex
from catalog.store import Catalog

__all__ = ["Catalog", "SearchHit", "SearchIndex"]

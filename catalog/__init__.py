"""shelfsight catalog: the SQLite product catalog, its search index and HQ->store sync."""

"""Search index over the catalog: one document per series, kept in step through the outbox.

Backends: ``embedded`` (SQLite FTS5, the default) and ``elasticsearch``. The
catalog stays the source of truth; the index can always be rebuilt from it.
"""

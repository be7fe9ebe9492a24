"""The dataset tables, in the catalog's database: a numbered catalog migration
(archive/catalog/schema.py), so every node's catalog has them once it is opened.

ISO-8601 UTC text for times, JSON as TEXT, natural keys.
"""
from __future__ import annotations

from datetime import datetime, timezone


def reader(catalog):
    """A connection for reads (the catalog's per-thread connection)."""
    return catalog._db()


def now() -> str:
    """UTC now as ISO 8601 with seconds, the one time format of these tables."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

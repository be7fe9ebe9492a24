"""Which series a dataset holds now: its saved search, its collection and its list, less what was taken out.

Resolved at release time (a saved search and a collection keep growing; a
release freezes what they chose then), and only ever within what the curator
may curate: the catalog's ``scope`` with the role ``curator``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator
from urllib.parse import parse_qsl

from archive.auth.access import Principal
from archive.catalog import scope
from archive.errors import Busy, InvalidRequest

from .model import Dataset, listed_series
from .schema import reader

PAGE = 1000
CHUNK = 500


@dataclasses.dataclass
class Selection:
    series: list[str]  # in a stable order: search hits, collection, then hand-added
    missing: list[str]  # hand-added series no longer stored (or no longer the curator's)
    from_search: int = 0
    from_collection: int = 0


def search_series(index, query: str, collections: frozenset[str] | None) -> Iterator[str]:
    """Every series UID the saved search finds, paged by series UID (no window limit)."""
    from indexer.base import IndexUnavailable
    from indexer.search import BadQuery, Range, parse_search

    try:
        base = parse_search(parse_qsl(query, keep_blank_values=True))
    except BadQuery as e:
        raise InvalidRequest(f"saved search: {e}") from None
    ranges = dict(base.ranges)
    floor = ranges.pop("series_uid", Range())
    last: str | None = None
    while True:
        gte = max(filter(None, (floor.gte, last)), default=None)
        request = dataclasses.replace(
            base, sort=(("series_uid", False),), page=1, size=PAGE, facets=(),
            ranges=tuple(ranges.items()) + ((("series_uid", Range(gte, floor.lte)),) if gte or floor.lte else ()),
            collections=None if collections is None else tuple(sorted(collections)))
        try:
            found = index.search(request)
        except IndexUnavailable as e:
            raise Busy(f"the search index is unavailable, retry the release later ({e})") from None
        hits = [h["series_uid"] for h in found.hits if h.get("series_uid") != last]
        if not hits:
            return
        yield from hits
        last = hits[-1]


def resolve(catalog, dataset: Dataset, principal: Principal, open_index: Callable[[], object] | None = None) -> Selection:
    """The dataset's series now, as ``principal`` may curate them."""
    curatable = principal.collections("curator")
    chosen: dict[str, None] = {}
    from_search = from_collection = 0
    if dataset.search:
        if open_index is None:
            raise InvalidRequest("this dataset has a saved search, but no search index is configured here")
        for uid in search_series(open_index(), dataset.search, curatable):
            chosen.setdefault(uid)
            from_search += 1
    if dataset.collection:
        cond, params = scope(principal, "curator", listing=True)
        rows = reader(catalog).execute(
            "SELECT se.series_instance_uid FROM series se JOIN study st ON se.study_fk=st.pk "
            f"JOIN study_collection c ON c.study_fk=st.pk WHERE c.collection=? AND {cond} ORDER BY se.pk",
            (dataset.collection, *params)).fetchall()
        for (uid,) in rows:
            chosen.setdefault(uid)
        from_collection = len(rows)
    added, removed = listed_series(catalog, dataset.id)
    for uid in added:
        chosen.setdefault(uid)
    for uid in removed:
        chosen.pop(uid, None)
    stored = set(_stored(catalog, list(chosen), principal))
    missing = [u for u in added if u not in stored and u not in removed]
    return Selection([u for u in chosen if u in stored], missing, from_search, from_collection)


def _stored(catalog, uids: list[str], principal: Principal) -> Iterator[str]:
    """Those of ``uids`` the catalog holds within the principal's curator scope (an index may lag)."""
    cond, params = scope(principal, "curator")
    db = reader(catalog)
    for i in range(0, len(uids), CHUNK):
        part = uids[i:i + CHUNK]
        rows = db.execute("SELECT se.series_instance_uid FROM series se JOIN study st ON se.study_fk=st.pk "
                          f"WHERE se.series_instance_uid IN ({','.join('?' * len(part))}) AND {cond}",
                          (*part, *params)).fetchall()
        yield from (r[0] for r in rows)

"""Study/series QIDO answered from the index, with the catalog's matching rules.

Translates archive.catalog.query Matches (PS3.4 C.2.2.2 as archive/catalog/query.py implements
them in SQL) into an Elasticsearch bool query or into SQL over the embedded
index's value table. The index returns the matching UIDs; the catalog then
returns the rows for exactly those UIDs, in its own order and paging, so a
response built this way is the catalog's response whenever the index has
caught up with the outbox.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from .base import Index, Unanswerable
from .documents import NAME_STARTS

MAX_UIDS = 20_000  # beyond this a query is too broad to ship as a UID list: the catalog answers it


def field_of(match: Any) -> str:
    keyword = match.key.keyword
    return "qido.Modality" if keyword == "ModalitiesInStudy" else f"qido.{keyword}"


def check(level: str, matches: Iterable[Any]) -> None:
    """Raise Unanswerable for what the index does not translate."""
    if level not in ("study", "series"):
        raise Unanswerable("only study and series queries are answered from the index")
    for m in matches:
        if m.key.level not in ("patient", "study", "series"):
            raise Unanswerable(f"{m.key.keyword} is an instance-level key")
        if m.key.keyword == "ModalitiesInStudy" and (level != "study" or m.kind == "empty"):
            raise Unanswerable("ModalitiesInStudy is answered from the index in study queries only")


# --- glob patterns --------------------------------------------------------------


def _es_escape(text: str) -> str:
    """Literal text inside an ES wildcard pattern."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _es_wildcard(pattern: str) -> str:
    """A DICOM wildcard (* and ?) as an ES wildcard; everything else literal."""
    return "".join(c if c in "*?" else _es_escape(c) for c in pattern)


def _pn_patterns(m: Any, fuzzy: bool) -> list[str]:
    value = m.values[0].lower()
    pattern = _es_wildcard(value) if m.kind == "wildcard" else _es_escape(value)
    if not fuzzy:
        return [pattern]
    return [pattern + "*", "*^" + pattern + "*", "* " + pattern + "*"]


# --- person-name starts -----------------------------------------------------------

#: The person-name keys the index holds (``qido.<keyword>``, VR PN).
NAME_KEYS = ("PatientName", "ReferringPhysicianName")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def name_starts(value: str) -> list[str]:
    """The lowercased name and every part of it that follows a ``^`` or a space.

    A fuzzy PN match (``p*``, ``*^p*`` or ``* p*`` on the lowercased name, as the
    catalog matches) holds exactly when some start matches ``p*``: a prefix query on
    these, where a wildcard with a leading ``*`` would scan every name in the index.
    Lowercased as the catalog's SQL ``lower()`` and ES's ``case_insensitive`` do: ASCII
    letters only.
    """
    name = value.translate(_ASCII_LOWER)
    starts = [name] + [name[i + 1:] for i, c in enumerate(name) if c in "^ " and i + 1 < len(name)]
    return list(dict.fromkeys(starts))


def with_name_starts(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with ``name_starts`` filled from its ``qido`` names (what the ES backend indexes)."""
    keys = doc.get("qido") or {}
    starts = {k: name_starts(keys[k]) for k in NAME_KEYS if keys.get(k)}
    return {**doc, NAME_STARTS: starts} if starts else doc


def _high(m: Any, high: str) -> str:
    return high + ("\uffff" if m.key.vr in ("TM", "DT") else "")


# --- Elasticsearch --------------------------------------------------------------


def es_clause(m: Any, fuzzy: bool, starts: bool = True) -> dict[str, Any]:
    """One Match as an ES query; ``starts``: the index holds ``name_starts`` for every document."""
    field = field_of(m)
    if m.kind == "empty":
        return {"bool": {"must_not": [{"exists": {"field": field}}]}}
    if m.key.vr in ("IS", "US", "UL"):
        return {"terms": {field: [int(v) for v in m.values]}}
    if m.kind == "range":
        low, high = m.values
        bounds: dict[str, str] = {}
        if low:
            bounds["gte"] = low
        if high:
            bounds["lte"] = _high(m, high)
        return {"range": {field: bounds}}
    if m.key.vr == "PN" and fuzzy and starts and m.key.keyword in NAME_KEYS:
        value = m.values[0].lower()
        field = f"{NAME_STARTS}.{m.key.keyword}"
        if m.kind == "wildcard":
            return {"wildcard": {field: {"value": _es_wildcard(value) + "*"}}}
        return {"prefix": {field: {"value": value}}}
    if m.key.vr == "PN":
        should = [{"wildcard": {field: {"value": p, "case_insensitive": True}}} for p in _pn_patterns(m, fuzzy)]
        return should[0] if len(should) == 1 else {"bool": {"should": should, "minimum_should_match": 1}}
    if m.kind == "wildcard":
        return {"wildcard": {field: {"value": _es_wildcard(m.values[0])}}}
    return {"terms": {field: list(m.values)}}


def es_query(level: str, matches: list[Any], fuzzy: bool, starts: bool = True) -> dict[str, Any]:
    check(level, matches)
    return {"bool": {"filter": [es_clause(m, fuzzy, starts) for m in matches]}} if matches else {"match_all": {}}


# --- SQL over the embedded value table ---------------------------------------------


def _glob_escape(text: str) -> str:
    return text.replace("[", "[[]").replace("]", "[]]") if ("[" in text or "]" in text) else text


def sql_clause(m: Any, fuzzy: bool, vals: str) -> tuple[str, list[Any]]:
    """A condition on ``d.rowid`` for one Match; ``vals`` names the (doc, field, value) table."""
    field = field_of(m)
    sub = f"d.rowid IN (SELECT doc FROM {vals} WHERE field = ? AND "
    if m.kind == "empty":
        return f"d.rowid NOT IN (SELECT doc FROM {vals} WHERE field = ?)", [field]
    if m.key.vr in ("IS", "US", "UL"):
        return sub + f"value IN ({','.join('?' * len(m.values))}))", [field, *(int(v) for v in m.values)]
    if m.kind == "range":
        low, high = m.values
        conds, params = [], [field]
        if low:
            conds.append("value >= ?")
            params.append(low)
        if high:
            conds.append("value <= ?")
            params.append(_high(m, high))
        return sub + " AND ".join(conds) + ")", params
    if m.key.vr == "PN":
        value = m.values[0].lower()
        pattern = _glob_escape(value)
        pats = [pattern] if not fuzzy else [pattern + "*", "*^" + pattern + "*", "* " + pattern + "*"]
        return sub + "(" + " OR ".join("lower(value) GLOB ?" for _ in pats) + "))", [field, *pats]
    if m.kind == "wildcard":
        return sub + "value GLOB ?)", [field, _glob_escape(m.values[0])]
    return sub + f"value IN ({','.join('?' * len(m.values))}))", [field, *m.values]


# --- answering --------------------------------------------------------------------


def answer(index: Index, catalog: Any, query: Any, principal: Any) -> list[dict[str, Any]]:
    """Catalog rows for a study/series Query, with the matching done by the index.

    Raises Unanswerable when the caller should run ``catalog.search(query)``
    itself. Attributes to return are still decided by ``query.returned()``. The catalog
    query limits the index's UIDs to what ``principal`` may read (and pages after that).
    """
    from archive.catalog.attributes import KEYS
    from archive.catalog.query import Match, Query

    uids = index.qido_uids(query.level, query.matches, query.fuzzy, MAX_UIDS)
    if not uids:
        return []
    key = KEYS["StudyInstanceUID" if query.level == "study" else "SeriesInstanceUID"]
    narrowed = Query(query.level, [Match(key, "list", tuple(uids))], None, query.limit, query.offset, query.fuzzy)
    return catalog.search(narrowed, principal=principal)


def replace_matches(query: Any, matches: list[Any]) -> Any:
    return dataclasses.replace(query, matches=list(matches))

"""Both search backends limit a search, its total, paging and facet counts to the caller's collections."""
from __future__ import annotations

import dataclasses

from es_node import make_index, es_node  # noqa: F401  (fixtures)
from indexer.search import parse_search
from indexer.synthetic import documents


def _search(index, collections, *params):
    request = parse_search([("facet", "collection"), ("size", "100"), *params])
    return index.search(dataclasses.replace(request, collections=collections))


def test_search_sees_only_the_callers_collections(make_index):
    index = make_index()
    docs = list(documents(80))
    shared = dict(docs[0], collections=[docs[0]["collection"], "teaching"])  # a study in two collections
    assert index.upsert([*docs[1:], shared]) == []
    index.refresh()
    slides = [d for d in [*docs[1:], shared] if d["kind"] == "slide"]
    mine = sorted(d["series_uid"] for d in slides if "collection-1" in d["collections"])
    result = _search(index, ("collection-1",))
    assert result.total == len(mine) and sorted(h["series_uid"] for h in result.hits) == mine
    assert result.facets["collection"] == [{"value": "collection-1", "count": len(mine)}]
    page = _search(index, ("collection-1",), ("size", "2"), ("page", "2"))
    assert page.total == len(mine) and len(page.hits) == min(2, len(mine) - 2)
    assert {h["series_uid"] for h in _search(index, ("teaching",)).hits} == {shared["series_uid"]}
    # filters cannot widen it: asking for another collection finds nothing
    assert _search(index, ("collection-1",), ("collection", "collection-2")).total == 0
    nothing = _search(index, ())
    assert nothing.total == 0 and nothing.hits == [] and nothing.facets["collection"] == []
    assert _search(index, None).total == len(slides)

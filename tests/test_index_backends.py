"""Both backends pass the same tests (search, facets, paging, deletes, rebuild, rejection)."""
from __future__ import annotations

import threading

import pytest

from es_node import make_index, es_node  # noqa: F401  (fixtures)
from indexer.base import Unanswerable
from indexer.documents import build_document, flatten
from indexer.search import BadQuery, parse_search
from indexer.synthetic import documents, slide_headers

N = 120


@pytest.fixture
def filled(make_index):
    index = make_index()
    docs = list(documents(N))
    assert index.upsert(docs) == []
    index.refresh()
    return index, docs


def _expected(docs, pred):
    return sorted(d["series_uid"] for d in docs if d["kind"] == "slide" and pred(flatten(d)))


def _all_uids(index, params):
    result = index.search(parse_search(params + [("size", "100")]))
    uids = [h["series_uid"] for h in result.hits]
    return result.total, uids


def test_upsert_get_count_delete(filled):
    index, docs = filled
    assert index.count() == N
    first = docs[0]["series_uid"]
    assert index.get(first)["series_uid"] == first
    index.delete([first, "2.25.404"])
    index.refresh()
    assert index.get(first) is None
    assert index.count() == N - 1


def test_upsert_replaces(filled):
    index, docs = filled
    doc = dict(docs[1], collection="moved")
    index.upsert([doc])
    index.refresh()
    assert index.get(doc["series_uid"])["collection"] == "moved"
    assert index.count() == N
    total, uids = _all_uids(index, [("collection", "moved")])
    assert uids == [doc["series_uid"]]


def test_filters_and_ranges(filled):
    index, docs = filled
    total, uids = _all_uids(index, [("specimen.anatomy_codes", "SCT:64033007"), ("magnification.gte", "30")])
    assert uids == _expected(docs, lambda f: "SCT:64033007" in f.get("specimen.anatomy_codes", [])
                             and f.get("magnification", 0) >= 30)
    assert total == len(uids) > 0
    total, uids = _all_uids(index, [("study.date.gte", "20150101"), ("study.date.lte", "20191231"),
                                    ("pyramid.has_label", "true")])
    assert uids == _expected(docs, lambda f: "20150101" <= f.get("study.date", "") <= "20191231"
                             and f.get("pyramid.has_label") is True)
    total, uids = _all_uids(index, [("scanner.manufacturer", "Hamamatsu"), ("scanner.manufacturer", "3DHISTECH")])
    assert uids == _expected(docs, lambda f: f.get("scanner.manufacturer") in ("Hamamatsu", "3DHISTECH"))


def test_free_text_all_words_must_match(filled):
    index, docs = filled
    total, uids = _all_uids(index, [("q", "Kidney biopsy"), ("sort", "series_uid")])
    assert uids == _expected(docs, lambda f: "kidney" in f.get("study.description", "").lower()
                             and "biopsy" in f.get("study.description", "").lower()
                             or ("kidney" in (f.get("specimen.anatomy", "") + f.get("series.description", "") +
                                              f.get("specimen.description", "")).lower()
                                 and "biopsy" in f.get("study.description", "").lower()))
    total, uids = _all_uids(index, [("q", "nucleinet"), ("sort", "series_uid")])
    assert uids == _expected(docs, lambda f: "NucleiNet" in f.get("ai.algorithms", []))
    assert _all_uids(index, [("q", "zebrafish")]) == (0, [])


def test_facets_count_the_filtered_set(filled):
    index, docs = filled
    result = index.search(parse_search([("collection", "collection-1"),
                                        ("facet", "scanner.manufacturer,pyramid.has_overview,magnification"),
                                        ("size", "0")]))
    subset = [flatten(d) for d in docs if d["kind"] == "slide" and d["collection"] == "collection-1"]
    assert result.total == len(subset) and result.hits == []
    for field in ("scanner.manufacturer", "pyramid.has_overview", "magnification"):
        counts: dict = {}
        for f in subset:
            if field in f:
                counts[f[field]] = counts.get(f[field], 0) + 1
        expected = sorted(({"value": v, "count": n} for v, n in counts.items()),
                          key=lambda b: (-b["count"], b["value"]))
        assert result.facets[field] == expected[:10], field


def test_sort_and_paging(filled):
    index, docs = filled
    pages = []
    for page in (1, 2, 3):
        r = index.search(parse_search([("sort", "-pyramid.width,study.date"), ("size", "25"), ("page", str(page))]))
        pages += [h["series_uid"] for h in r.hits]
    slides = [d for d in docs if d["kind"] == "slide"]
    expected = sorted(slides, key=lambda d: (-d["pyramid"]["width"], d["study"]["date"], d["series_uid"]))
    assert pages == [d["series_uid"] for d in expected][:75]
    r = index.search(parse_search([("sort", "magnification"), ("size", "100")]))
    mags = [h.get("magnification") for h in r.hits]
    present = [m for m in mags if m is not None]
    assert present == sorted(present) and mags[len(present):] == [None] * (len(mags) - len(present))


def test_hits_do_not_carry_the_qido_keys(filled):
    index, _ = filled
    r = index.search(parse_search([("size", "5")]))
    assert r.hits and all("qido" not in h for h in r.hits)


def test_bad_queries_are_refused_before_the_index():
    for params in ([("nope", "1")], [("magnification", "high")], [("sort", "study.description")],
                   [("facet", "series_uid")], [("page", "600"), ("size", "100")], [("study.date.gte", "2020")]):
        with pytest.raises(BadQuery):
            parse_search(params)


def test_rejected_document_is_reported_with_its_series_uid(filled):
    index, docs = filled
    bad = build_document(slide_headers(500))
    bad["pyramid"]["width"] = "very wide"
    good = build_document(slide_headers(501))
    rejected = index.upsert([bad, good])
    index.refresh()
    assert [r.series_uid for r in rejected] == [bad["series_uid"]]
    assert index.get(good["series_uid"]) is not None
    assert index.get(bad["series_uid"]) is None


def test_rebuild_swaps_while_searches_keep_working(filled):
    index, docs = filled
    errors: list[Exception] = []
    totals: list[int] = []
    stop = threading.Event()

    def searcher():
        while not stop.is_set():
            try:
                totals.append(index.search(parse_search([("size", "1")])).total)
            except Exception as e:  # noqa: BLE001 - any failure is the test's failure
                errors.append(e)

    t = threading.Thread(target=searcher)
    t.start()
    try:
        rebuild = index.begin_rebuild()
        new_docs = [dict(d, collection="rebuilt") for d in docs]
        for i in range(0, len(new_docs), 40):
            assert rebuild.upsert(new_docs[i:i + 40]) == []
        before = index.search(parse_search([("collection", "rebuilt")])).total
        rebuild.commit()
    finally:
        stop.set()
        t.join()
    index.refresh()
    assert before == 0  # the new generation was invisible until the swap
    assert not errors, errors[:1]
    slides = sum(1 for d in docs if d["kind"] == "slide")
    assert set(totals) == {slides}  # never empty, never partial
    assert index.search(parse_search([("collection", "rebuilt")])).total == slides
    assert index.count() == N


def test_qido_refuses_what_it_does_not_translate(filled):
    from archive.catalog.query import parse_qido

    index, _ = filled
    with pytest.raises(Unanswerable):
        index.qido_uids("instance", [], False, 100)
    q = parse_qido("series", [("ModalitiesInStudy", "SM")])
    with pytest.raises(Unanswerable):
        index.qido_uids("series", q.matches, False, 100)
    with pytest.raises(Unanswerable):
        index.qido_uids("study", [], False, 3)  # more matches than the cap


@pytest.mark.elasticsearch
def test_both_backends_answer_alike(tmp_path, es_node):  # noqa: F811
    from es_node import elastic_index
    from indexer.embedded import EmbeddedIndex

    docs = list(documents(N, seed=3))
    embedded = EmbeddedIndex(tmp_path / "i.sqlite")
    elastic = elastic_index(es_node.url)
    for index in (embedded, elastic):
        index.ensure()
        index.upsert(docs)
        index.refresh()
    requests = [
        [("q", "liver"), ("sort", "series_uid")],
        [("q", "stain"), ("facet", "specimen.stain_codes,scanner.model"), ("sort", "-study.date")],
        [("kind", "any"), ("facet", "kind,series.modality")],
        [("ai.present", "true"), ("facet", "ai.algorithms,ai.property_type_codes"), ("sort", "-ai.annotation_count")],
        [("patient.sex", "F"), ("patient.age_years.gte", "40"), ("sort", "patient.age_years"), ("page", "2"),
         ("size", "7")],
        [("pixel_spacing_um.lte", "0.3"), ("pyramid.level_count", "3"), ("facet", "pyramid.level_count")],
    ]
    try:
        for params in requests:
            a, b = embedded.search(parse_search(params)), elastic.search(parse_search(params))
            assert a.total == b.total, params
            assert a.facets == b.facets, params
            assert [h["series_uid"] for h in a.hits] == [h["series_uid"] for h in b.hits], params
    finally:
        elastic.es.indices.delete(index=f"{elastic.alias}*", ignore_unavailable=True)
        elastic.close()
        embedded.close()


def test_stain_as_a_user_types_it(filled):
    """stain=HE needs both codes (AND on one field), a bare code or a name finds the same slides."""
    index, docs = filled
    hematoxylin_only = dict(docs[2], specimen=dict(docs[2]["specimen"], stain_codes=["SCT:12710003"]))
    index.upsert([hematoxylin_only])
    index.refresh()
    docs = [hematoxylin_only if d["series_uid"] == hematoxylin_only["series_uid"] else d for d in docs]
    both = _expected(docs, lambda f: {"SCT:12710003", "SCT:36879007"} <= set(f.get("specimen.stain_codes", [])))
    with_h = _expected(docs, lambda f: "SCT:12710003" in f.get("specimen.stain_codes", []))
    assert both and len(with_h) == len(both) + (hematoxylin_only["kind"] == "slide")
    for value in ("HE", "H&E", "he", "hematoxylin and eosin"):
        assert _all_uids(index, [("stain", value)])[1] == both, value
    for value in ("hematoxylin", "SCT:12710003", "12710003"):
        assert _all_uids(index, [("stain", value)])[1] == with_h, value
    with pytest.raises(BadQuery, match="unknown stain"):
        parse_search([("stain", "giemsa")])



@pytest.fixture
def elastic(es_node):  # noqa: F811
    """A fresh Elasticsearch index alone (the rebuild's merge is Elasticsearch's)."""
    from es_node import elastic_index

    index = elastic_index(es_node.url)
    index.ensure()
    yield index
    index.es.indices.delete(index=f"{index.alias}*", ignore_unavailable=True)
    index.close()


def _segments(index, concrete: str) -> int:
    shards = index.es.indices.segments(index=concrete)["indices"][concrete]["shards"].values()
    return sum(len(copy["segments"]) for copies in shards for copy in copies)


@pytest.mark.elasticsearch
def test_a_rebuilt_elasticsearch_generation_goes_live_merged(elastic):
    """The bulk load's segments are merged before the swap: queries served while Elasticsearch
    merged them in the background were two to three times slower at a million slides."""
    rebuild = elastic.begin_rebuild()
    docs = list(documents(90))
    for i in range(0, len(docs), 30):
        assert rebuild.upsert(docs[i:i + 30]) == []
        elastic.es.indices.refresh(index=rebuild.concrete)  # one segment per batch
    assert _segments(elastic, rebuild.concrete) == 3
    rebuild.commit()
    live = next(iter(elastic.es.indices.get_alias(name=elastic.alias)))
    assert live == rebuild.concrete
    assert _segments(elastic, live) == 1
    assert elastic.count() == 90


@pytest.mark.elasticsearch
def test_a_rebuild_whose_merge_fails_still_goes_live(elastic, monkeypatch, caplog):
    from elasticsearch import ApiError

    rebuild = elastic.begin_rebuild()
    assert rebuild.upsert(list(documents(10))) == []

    def refuse(*args, **kwargs):
        raise ApiError("merge refused", meta=type("Meta", (), {"status": 503})(), body={})

    monkeypatch.setattr(type(elastic.es.indices), "forcemerge", refuse)
    rebuild.commit()
    assert elastic.count() == 10
    assert "goes live unmerged" in caplog.text

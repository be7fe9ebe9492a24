"""The Elasticsearch 8 backend.

Searches and writes go through the alias ``<prefix>slides``; each generation is
a concrete index ``<prefix>slides-v<MAPPING_VERSION>-<time>``, so a rebuild
fills a fresh index (with its own explicit, strict mapping) and swaps the
alias atomically while searches keep using the old one.

Every transport failure, timeout, 429 and 5xx becomes IndexUnavailable, which
the worker retries with back-off and the API answers with 503.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterable

from elasticsearch import ApiError, Elasticsearch, TransportError

from . import qido
from .base import IndexUnavailable, Unanswerable
from .config import IndexConfig
from .documents import FIELDS, MAPPING_VERSION, NAME_STARTS, DocumentError
from .search import PRIVATE_ROOTS, BadQuery, SearchRequest, SearchResult, public_hit

log = logging.getLogger(__name__)

NAME_STARTS_SINCE = 4  # the first mapping version whose documents all carry NAME_STARTS
PAGE = 5000  # series UIDs per round trip of a series QIDO answered from the index
VERSION_TTL = 60.0  # seconds a node trusts the live index's mapping version (a reindex elsewhere swaps it)
#: A rebuilt generation is merged into segments of at most this size before it goes live:
#: Lucene's default largest merged segment, so the segments stay mergeable as writes go on.
MERGED_SEGMENT_BYTES = 5 * 1024 ** 3
MERGE_TIMEOUT = 3600.0  # seconds the rebuild waits for that merge before it swaps unmerged

# Keyword fields that free text also searches (embedded.free_text uses the same list).
_COPY_TO_TEXT = {"scanner.manufacturer", "scanner.model", "series.modality", "collection", "ai.algorithms",
                 "specimen.processing_types", "patient.id", "series.body_part"}
_ES_TYPES = {"keyword": "keyword", "text": "text", "date": "date", "integer": "integer", "float": "double",
             "boolean": "boolean"}


def mapping() -> dict[str, Any]:
    """The explicit, strict mapping built from documents.FIELDS (versioned by MAPPING_VERSION)."""
    root: dict[str, Any] = {"text": {"type": "text", "analyzer": "standard"},
                            "mapping_version": {"type": "integer"}}
    for field in FIELDS:
        *parents, leaf = field.name.split(".")
        node = root
        for p in parents:
            node = node.setdefault(p, {"type": "object", "dynamic": "strict", "properties": {}})["properties"]
        spec: dict[str, Any] = {"type": _ES_TYPES[field.type]}
        if field.type == "text":
            spec.update(analyzer="standard", copy_to="text")
        elif field.type == "date":
            spec["format"] = "basic_date"  # DICOM DA: yyyyMMdd
        elif field.type == "keyword":
            spec["ignore_above"] = 1024
            if field.name in _COPY_TO_TEXT:
                spec["copy_to"] = "text"
        node[leaf] = spec
    # One token per start (the keyword analyzer) with its first 1-12 characters indexed as terms
    # of their own: a fuzzy name of up to 12 characters is one term's postings, not the union of
    # every name that starts with it (a few letters match a fifth of all patients).
    starts = {"type": "text", "analyzer": "keyword", "norms": False, "index_options": "docs",
              "index_prefixes": {"min_chars": 1, "max_chars": 12}}
    root[NAME_STARTS] = {"type": "object", "dynamic": "strict", "properties": {k: starts for k in qido.NAME_KEYS}}
    return {"dynamic": "strict", "_meta": {"mapping_version": MAPPING_VERSION}, "properties": root}


def _unavailable(e: Exception) -> IndexUnavailable:
    status = getattr(e, "status_code", None) or getattr(getattr(e, "meta", None), "status", None)
    return IndexUnavailable(f"Elasticsearch unavailable ({type(e).__name__}{f' {status}' if status else ''})")


class _Rebuild:
    def __init__(self, index: "ElasticIndex", concrete: str):
        self.index, self.concrete = index, concrete

    def upsert(self, docs: list[dict[str, Any]]) -> list[DocumentError]:
        return self.index._bulk(self.concrete, docs)

    def commit(self) -> None:
        es, alias = self.index.es, self.index.alias
        try:
            es.indices.put_settings(index=self.concrete, settings={"index": {"refresh_interval": "1s"}})
            es.indices.refresh(index=self.concrete)
            self._merge()
            old = list(es.indices.get_alias(name=alias).keys()) if es.indices.exists_alias(name=alias) else []
            actions = [{"remove": {"index": o, "alias": alias}} for o in old if o != self.concrete]
            actions.append({"add": {"index": self.concrete, "alias": alias}})
            es.indices.update_aliases(actions=actions)
            for o in old:
                if o != self.concrete:
                    es.indices.delete(index=o, ignore_unavailable=True)
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None

    def _merge(self) -> None:
        """Merge the bulk load's segments before the swap. Queries served while Elasticsearch still
        merges them in the background were two to three times slower at a million slides (study
        QIDO p95 81 against 29 ms, bench/FINDINGS.md 2026-12-04); the merge took 16 s there. A
        merge that fails or runs out of time is logged and the generation goes live unmerged."""
        es = self.index.es
        try:
            stats = es.indices.stats(index=self.concrete, metric="store")
            size = stats["indices"][self.concrete]["primaries"]["store"]["size_in_bytes"]
            segments = max(1, math.ceil(size / max(self.index.config.shards, 1) / MERGED_SEGMENT_BYTES))
            es.options(request_timeout=MERGE_TIMEOUT).indices.forcemerge(index=self.concrete,
                                                                         max_num_segments=segments)
        except (TransportError, ApiError, KeyError) as e:
            log.warning("the new index generation %s goes live unmerged (%s); queries are slower until "
                        "Elasticsearch has merged it", self.concrete, type(e).__name__)

    def abort(self) -> None:
        try:
            self.index.es.indices.delete(index=self.concrete, ignore_unavailable=True)
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None


class ElasticIndex:
    #: One index all nodes write to (the outbox is then applied by one node at a time: worker.py).
    shared = True

    def __init__(self, config: IndexConfig, client: Elasticsearch | None = None):
        self.config = config
        self.alias = f"{config.index_prefix}slides"
        self.name = f"elasticsearch:{self.alias}"
        self.es = client or Elasticsearch(list(config.urls), request_timeout=config.request_timeout,
                                          max_retries=0, retry_on_timeout=False, ca_certs=config.ca_certs,
                                          **config.credentials())
        self._version: tuple[int, float] | None = None  # (mapping version of the live index, when read)

    # --- generations ----------------------------------------------------------------

    def _create(self, with_alias: bool, generation: int | None = None) -> str:
        concrete = f"{self.alias}-v{MAPPING_VERSION}-{time.time_ns() if generation is None else generation}"
        settings: dict[str, Any] = {"number_of_shards": self.config.shards,
                                    "number_of_replicas": self.config.replicas,
                                    "max_result_window": 10_000}
        if not with_alias:
            settings["refresh_interval"] = "-1"  # bulk load first, refresh once at the swap
        self.es.indices.create(index=concrete, settings=settings, mappings=mapping(),
                               aliases={self.alias: {}} if with_alias else None)
        return concrete

    def ensure(self) -> None:
        """Create the first generation unless the alias exists. Its name is fixed (generation 0), so
        nodes starting together collide on one name and one wins: with a name per node the alias
        would point at several indices, none of them its write index, and every write would fail."""
        try:
            if not self.es.indices.exists_alias(name=self.alias):
                self._create(with_alias=True, generation=0)
            elif self.mapping_version(fresh=True) < MAPPING_VERSION:
                self._add_new_fields()
        except ApiError as e:
            if e.status_code == 400 and "already_exists" in str(e):
                return  # another process created it first
            raise _unavailable(e) from None
        except TransportError as e:
            raise _unavailable(e) from None

    def mapping_version(self, fresh: bool = False) -> int:
        """The mapping version the live index was built with (0: older than versions)."""
        now = time.monotonic()
        if fresh or self._version is None or now - self._version[1] > VERSION_TTL:
            mappings = self.es.indices.get_mapping(index=self.alias)
            versions = [m["mappings"].get("_meta", {}).get("mapping_version", 0) for m in mappings.values()]
            self._version = (min(versions, default=0), now)
        return self._version[0]

    def _add_new_fields(self) -> None:
        """Add the fields of this version to an index built by an older one, so writes keep
        working after an upgrade (the strict mapping would refuse every new document); its
        older documents lack them until ``slidearchive reindex`` (queries allow for that)."""
        log.warning("the search index was built by mapping version %d (this version is %d): adding the new "
                    "fields; run `slidearchive reindex` to fill them for the documents already indexed",
                    self.mapping_version(), MAPPING_VERSION)
        try:
            self.es.indices.put_mapping(index=self.alias, properties=mapping()["properties"])
        except ApiError as e:
            if e.status_code != 400:
                raise
            log.error("the search index's mapping cannot take this version's fields (%s): run "
                      "`slidearchive reindex`", e.error)

    def begin_rebuild(self) -> _Rebuild:
        try:
            return _Rebuild(self, self._create(with_alias=False))
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None

    # --- writes ------------------------------------------------------------------------

    def _bulk(self, target: str, docs: list[dict[str, Any]]) -> list[DocumentError]:
        if not docs:
            return []
        operations: list[dict[str, Any]] = []
        for doc in docs:
            operations += [{"index": {"_index": target, "_id": doc["series_uid"]}}, qido.with_name_starts(doc)]
        try:
            response = self.es.bulk(operations=operations)
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None
        rejected: list[DocumentError] = []
        if response.get("errors"):
            for item in response["items"]:
                result = item.get("index") or item.get("delete") or {}
                error = result.get("error")
                if not error:
                    continue
                status = result.get("status", 0)
                if status == 429 or status >= 500:
                    raise IndexUnavailable(f"Elasticsearch rejected a bulk item with {status}; retrying later")
                # type and reason only: the reason may quote a value, which may be patient data
                rejected.append(DocumentError(str(result.get("_id")), str(error.get("type"))))
        return rejected

    def upsert(self, docs: list[dict[str, Any]]) -> list[DocumentError]:
        return self._bulk(self.alias, docs)

    def delete(self, series_uids: list[str]) -> None:
        if not series_uids:
            return
        try:
            self.es.bulk(operations=[{"delete": {"_index": self.alias, "_id": uid}} for uid in series_uids])
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None

    def get(self, series_uid: str) -> dict[str, Any] | None:
        try:
            # the document as written: its name starts are derived from it for the index only
            response = self.es.options(ignore_status=404).get(index=self.alias, id=series_uid,
                                                             source_excludes=[NAME_STARTS])
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None
        return response.get("_source") if response.get("found") else None

    def count(self) -> int:
        try:
            return int(self.es.count(index=self.alias)["count"])
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None

    def refresh(self) -> None:
        try:
            self.es.indices.refresh(index=self.alias)
        except (TransportError, ApiError) as e:
            raise _unavailable(e) from None

    def close(self) -> None:
        self.es.close()

    # --- search -------------------------------------------------------------------------------

    @staticmethod
    def _query(request: SearchRequest) -> dict[str, Any]:
        filters: list[dict[str, Any]] = []
        terms = list(request.terms)  # a field may appear twice (stain=HE: both codes required)
        if not request.include_all_kinds and "kind" not in dict(terms):
            terms.append(("kind", ("slide",)))
        for field, values in terms:
            filters.append({"terms": {field: list(values)}})
        if request.collections is not None:  # access control: only the caller's collections exist
            filters.append({"terms": {"collections": list(request.collections)}})
        for field, rng in request.ranges:
            bounds = {k: v for k, v in (("gte", rng.gte), ("lte", rng.lte)) if v is not None}
            if bounds:
                filters.append({"range": {field: bounds}})
        must = [{"match": {"text": {"query": " ".join(request.text), "operator": "and"}}}] if request.text else []
        return {"bool": {"must": must, "filter": filters}}

    def search(self, request: SearchRequest) -> SearchResult:
        sort: list[Any] = [{f: {"order": "desc" if d else "asc", "missing": "_last"}} for f, d in request.sort]
        if not request.sort and request.text:
            sort.append({"_score": "desc"})
        sort.append({"series_uid": "asc"})
        aggs = {f: {"terms": {"field": f, "size": request.facet_size,
                              "order": [{"_count": "desc"}, {"_key": "asc"}]}} for f in request.facets}
        try:
            kwargs = dict(index=self.alias, query=self._query(request), sort=sort, from_=request.offset,
                          size=request.size, track_total_hits=True, source={"excludes": list(PRIVATE_ROOTS)},
                          aggs=aggs or None)
            try:
                response = self.es.search(**kwargs)
            except ApiError as e:
                if e.status_code != 404:
                    raise
                response = self.es.search(**kwargs)  # the alias moved to a new index mid-request
        except ApiError as e:
            if e.status_code == 400:
                raise BadQuery(f"the index cannot answer this query ({e.error})") from None
            raise _unavailable(e) from None
        except TransportError as e:
            raise _unavailable(e) from None
        facets = {}
        for field in request.facets:
            kind = next(f.type for f in FIELDS if f.name == field)
            buckets = response["aggregations"][field]["buckets"]
            facets[field] = [{"value": (b["key_as_string"] == "true") if kind == "boolean" else b["key"],
                              "count": b["doc_count"]} for b in buckets]
        hits = [public_hit(h["_source"]) for h in response["hits"]["hits"]]
        return SearchResult(total=response["hits"]["total"]["value"], hits=hits, facets=facets)

    # --- QIDO -----------------------------------------------------------------------------------

    def qido_uids(self, level: str, matches: Iterable[Any], fuzzy: bool, cap: int) -> list[str]:
        try:
            query = qido.es_query(level, list(matches), fuzzy, starts=self.mapping_version() >= NAME_STARTS_SINCE)
            if level == "study":
                return self._distinct_studies(query, cap)
            return self._series(query, cap)
        except (TransportError, ApiError) as e:
            if isinstance(e, ApiError) and e.status_code == 400:
                raise Unanswerable(f"the index cannot translate this query ({e.error})") from None
            raise _unavailable(e) from None

    def _distinct_studies(self, query: dict[str, Any], cap: int) -> list[str]:
        """Up to ``cap`` study UIDs in one round trip: a terms aggregation of ``cap + 1`` buckets in
        key order (exact across shards: each returns its first keys, and more than ``cap`` is
        refused anyway), with only the keys in the response. At a million slides a few thousand
        matching studies took 42 / 91 ms (p50 / p95) as 5,000-bucket composite pages and 23 / 58
        this way (bench/FINDINGS.md, 2026-12-04)."""
        r = self.es.search(index=self.alias, query=query, size=0, filter_path="aggregations.u.buckets.key",
                           aggs={"u": {"terms": {"field": "study_uid", "size": cap + 1, "order": {"_key": "asc"}}}})
        buckets = r.body.get("aggregations", {}).get("u", {}).get("buckets", [])
        if len(buckets) > cap:
            raise Unanswerable(f"more than {cap} matches: too broad for the index path")
        return [b["key"] for b in buckets]

    def _series(self, query: dict[str, Any], cap: int) -> list[str]:
        out: list[str] = []
        after = None
        while True:
            kwargs: dict[str, Any] = {"search_after": after} if after else {}
            r = self.es.search(index=self.alias, query=query, size=PAGE, sort=[{"series_uid": "asc"}],
                               source=False, track_total_hits=False, **kwargs)
            hits = r["hits"]["hits"]
            out += [h["_id"] for h in hits]
            if len(out) > cap:
                raise Unanswerable(f"more than {cap} matches: too broad for the index path")
            if len(hits) < PAGE:
                return out
            after = hits[-1]["sort"]

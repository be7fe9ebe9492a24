"""Keeps the index in step with the catalog by consuming its outbox.

Ingest only writes outbox rows (in the catalog's own transaction); this worker
reads them in a background thread, rebuilds the touched series' documents from
the catalog and sends them in bulk. When the index is down the cursor simply
does not move: nothing is lost, nothing blocks ingest, and the worker catches
up with back-off once the index answers again.

Nodes sharing a catalog and an Elasticsearch index apply the outbox once between
them: the node holding the catalog's lease ``index:<name>`` does, and keeps its cursor
in the lease; when it dies the lease runs out and another node carries on from there.
(Each node's embedded index is its own, so each node applies every event to it.)
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from functools import partial
from typing import Any, Iterable

from archive.auth.access import SYSTEM
from archive.logs import failure_site

from .base import Index, IndexUnavailable

#: Seconds a node holds the outbox between renewals; a dead holder's work resumes elsewhere after this.
LEASE_SECONDS = 15.0
from .documents import ANN_SOP_CLASS, SEG_SOP_CLASS, apply_study_row, build_document
from .parts import SeriesParts, stored_parts
from .state import IndexState, lease_name, open_state

log = logging.getLogger(__name__)
_AI_CLASSES = {ANN_SOP_CLASS, SEG_SOP_CLASS}


#: Instances whose merged parts the worker keeps (over all the series it keeps); past this the
#: least recently indexed series is dropped and, on its next event, read again from its headers.
PARTS_CACHE_INSTANCES = 50_000


class DocumentSource:
    """Builds documents from the catalog, reading each instance's header once (indexer/parts.py).

    The merged parts of recently indexed series are kept: an event of a series that grew
    reads only its new instances (``Catalog.series_instances``), so the cost per stored
    instance does not grow with the series. A series that lost an instance, or whose count
    says an instance was missed (committed out of pk order by another node), is merged again
    from the kept parts of what is left, reading only instances not seen before.
    """

    def __init__(self, catalog: Any, state: IndexState, cache_instances: int = PARTS_CACHE_INSTANCES):
        self.catalog, self.state = catalog, state
        self.cache_instances = cache_instances
        self._series: OrderedDict[str, SeriesParts] = OrderedDict()
        self._cached = 0  # instances over all of _series
        self._rescan: set[str] = set()

    def forget(self, series_uid: str | None = None) -> None:
        """Merge ``series_uid`` (every series when None) again from the catalog's rows on its next
        build: an instance of it was deleted, or events were applied by another node meanwhile."""
        if series_uid is None:
            self._series.clear()
            self._cached = 0
        else:
            self._rescan.add(series_uid)

    def parts(self, series_uid: str) -> SeriesParts:
        """The series' merged parts as the catalog has it now (``count`` 0: no instances left)."""
        cached = self._series.pop(series_uid, None)
        self._cached -= len(cached.instances) if cached is not None else 0
        rescan = series_uid in self._rescan
        self._rescan.discard(series_uid)
        if cached is not None and not rescan:
            count, rows = self.catalog.series_instances(series_uid, cached.last_key or 0)
            if len(cached.instances) + len(rows) == count:
                self._add_rows(cached, rows, {})
                return self._keep(series_uid, cached)
        count, rows = self.catalog.series_instances(series_uid)
        fresh = SeriesParts()
        self._add_rows(fresh, rows, cached.instances if cached is not None else {})
        return self._keep(series_uid, fresh) if count else fresh

    def _add_rows(self, into: SeriesParts, rows: list[tuple[int, str, str]], known: dict[Any, Any]) -> None:
        for pk, sop_uid, storage_id in rows:
            if pk in known:
                into.add(pk, known[pk])
            else:
                into.add(pk, stored_parts(self.catalog.stored_path(storage_id),
                                          partial(self.catalog.instance_header, sop_uid, storage_id)))

    def _keep(self, series_uid: str, parts: SeriesParts) -> SeriesParts:
        self._series[series_uid] = parts
        self._cached += len(parts.instances)
        while self._cached > self.cache_instances and len(self._series) > 1:
            _, dropped = self._series.popitem(last=False)
            self._cached -= len(dropped.instances)
        return parts

    def document(self, series_uid: str, parts: SeriesParts) -> dict[str, Any]:
        ai_parts = [self.parts(ai_series) for ai_series in self.state.ai_for_slide(series_uid)]
        doc = build_document(parts, self.catalog.series_collection(series_uid), ai_parts)
        doc["collections"] = self.catalog.series_collections(series_uid) or doc.get("collections", [])
        row = self.study_row(doc.get("study_uid", ""))
        return apply_study_row(doc, row) if row is not None else doc

    def study_row(self, study_uid: str) -> dict[str, Any] | None:
        """The catalog's study-level QIDO row (its patient/study columns as DICOM JSON)."""
        from archive.catalog.attributes import KEYS
        from archive.catalog.query import Match, Query

        if not study_uid:
            return None
        rows = self.catalog.search(Query("study", [Match(KEYS["StudyInstanceUID"], "single", (study_uid,))],
                                         limit=1), principal=SYSTEM)
        return rows[0] if rows else None

    def note_ai(self, series_uid: str, parts: SeriesParts) -> set[str]:
        """Record an AI series' references; returns every slide whose summary may have changed."""
        if not parts.count:
            return self.state.set_ai_refs(series_uid, [])
        if not _AI_CLASSES & parts.sop_classes.keys():
            return set()
        refs = set(parts.references)
        return self.state.set_ai_refs(series_uid, refs) | refs


def sync_series(index: Index, source: DocumentSource, state: IndexState, series_uids: Iterable[str],
                write: Any = None) -> tuple[set[str], set[str]]:
    """(Re)build or delete the documents of these series; returns (indexed, deleted) series UIDs.

    ``write`` is where documents go (the index, or a Rebuild); IndexUnavailable propagates.
    """
    target = write or index
    wanted = list(dict.fromkeys(series_uids))
    built: dict[str, dict[str, Any]] = {}
    deletes: list[str] = []
    seen = set(wanted)
    queue = list(wanted)
    while queue:
        uid = queue.pop(0)
        try:
            parts = source.parts(uid)
            extra = source.note_ai(uid, parts)
        except Exception as e:  # one unreadable series must not hold up the outbox
            log.warning("cannot read the headers of series %s: %s", uid, type(e).__name__)
            state.record_failure(uid, f"read: {type(e).__name__}")
            continue
        for slide in sorted(extra):
            if slide not in seen:
                seen.add(slide)
                queue.append(slide)
            elif built.pop(slide, None) is not None:  # built before this AI series was noted: again
                queue.append(slide)
        if not parts.count:
            deletes.append(uid)
            continue
        try:
            built[uid] = source.document(uid, parts)
        except Exception as e:  # a header the builder cannot read: keep it for a retry after a fix
            log.warning("cannot build the index document of series %s: %s at %s", uid, type(e).__name__,
                        failure_site(e))
            state.record_failure(uid, f"build: {type(e).__name__}")
    docs = list(built.values())
    rejected = target.upsert(docs) if docs else []
    if deletes:
        target.delete(deletes)
    bad = {r.series_uid for r in rejected}
    for r in rejected:
        log.warning("the index rejected the document of series %s: %s", r.series_uid, r.reason)
        state.record_failure(r.series_uid, r.reason)
    state.clear_failures([d["series_uid"] for d in docs if d["series_uid"] not in bad] + deletes)
    return {d["series_uid"] for d in docs} - bad, set(deletes)


class IndexWorker:
    """Outbox consumer. ``step()`` does one batch; ``start()`` runs it in a daemon thread."""

    def __init__(self, catalog: Any, index: Index, state: IndexState, batch_size: int = 500,
                 poll_interval: float = 1.0, max_backoff: float = 60.0):
        self.catalog, self.index, self.state = catalog, index, state
        self.source = DocumentSource(catalog, state)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ensured = False
        self._retry_all = True  # after a restart, retry every failed document once
        self.last_error: str | None = None
        #: time.time() of the last step that reached the index (for /health/ready).
        self.last_success: float | None = None
        self._lease = None
        self._read_state: Any = None  # the lease's state as this step read it
        self._applied: int | None = None  # the cursor this worker's last step left (see source.forget)
        if getattr(catalog, "shared", False) and getattr(index, "shared", False):
            from archive.catalog.work import Leases

            self._lease = Leases(catalog.db)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def step(self) -> int:
        """Apply the next batch of outbox events; returns how many. Raises IndexUnavailable."""
        if not self._ensured:
            self.index.ensure()
            self._ensured = True
        cursor = self._cursor()
        if cursor != self._applied:  # another node applied events meanwhile, or a reindex rewound the cursor
            self.source.forget()
        if cursor is None:
            return 0  # another node applies the outbox now
        events = self.catalog.outbox_after(cursor, self.batch_size)
        for e in events:
            if e.event != "stored" and e.series_uid:  # an instance went: its series is merged anew
                self.source.forget(e.series_uid)
        retry = self.state.failures_due(everything=self._retry_all)
        self._retry_all = False
        uids = [e.series_uid for e in events if e.series_uid] + retry
        if uids:
            sync_series(self.index, self.source, self.state, uids)
        self._applied = events[-1].seq if events else cursor
        if events:
            self.state.set_cursor(self.index.name, events[-1].seq)
            if self._lease is not None:  # unless a reindex rewound the cursor meanwhile: then from there again
                self._lease.save(self._lease_name, {"seq": events[-1].seq}, expected=self._read_state)
        return len(events)

    @property
    def _lease_name(self) -> str:
        return lease_name(self.index.name)

    def _cursor(self) -> int | None:
        """The last outbox seq applied; None when another node holds the shared outbox."""
        local = self.state.cursor(self.index.name)
        if self._lease is None:
            return local
        held, state = self._lease.acquire(self._lease_name, LEASE_SECONDS)
        if not held:
            return None
        self._read_state = state
        return int(state["seq"]) if state and "seq" in state else local

    def catch_up(self, max_batches: int = 1_000_000) -> int:
        """Run steps until the outbox is drained (tests, CLI); returns events applied."""
        total = 0
        for _ in range(max_batches):
            n = self.step()
            total += n
            if n < self.batch_size:
                break
        return total

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                n = self.step()
                failures = 0
                self.last_error = None
                self.last_success = time.time()
                if n < self.batch_size:
                    self._stop.wait(self.poll_interval)
            except IndexUnavailable as e:
                failures += 1
                self.last_error = str(e)
                delay = min(self.max_backoff, 0.5 * 2 ** min(failures, 10)) * (0.5 + random.random() / 2)
                log.warning("index unavailable (%s); retrying in %.1f s", e, delay)
                self._stop.wait(delay)
            except Exception:  # never let the thread die: the archive keeps ingesting regardless
                failures += 1
                log.exception("index worker step failed; retrying")
                self._stop.wait(min(self.max_backoff, 2.0 * failures))

    def start(self) -> threading.Thread:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="index-worker", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def start_worker(settings: Any, catalog: Any) -> IndexWorker:
    """What the archive calls at startup: ``start_worker(settings, catalog)`` -> a running worker.

    ``settings.index`` is the raw ``[index]`` table and ``settings.data_dir`` the data directory.
    """
    from .factory import from_settings

    config, index = from_settings(getattr(settings, "index", {}), getattr(settings, "data_dir", None))
    state = open_state(config, catalog, index)
    worker = IndexWorker(catalog, index, state, config.batch_size, config.poll_interval)
    worker.start()
    return worker



def run(settings: Any) -> None:
    """Process entry point used by ``slidearchive serve`` (archive/server.py): runs until terminated."""
    import signal

    from archive.catalog import Catalog

    from .factory import from_settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, index = from_settings(getattr(settings, "index", {}), settings.data_dir)
    catalog = Catalog.open(settings)
    state = open_state(config, catalog, index)
    worker = IndexWorker(catalog, index, state, config.batch_size, config.poll_interval)
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    try:
        worker.run()
    finally:
        index.close()
        catalog.close()
        state.close()

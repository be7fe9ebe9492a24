"""Which results reference which slides, by which algorithm, with how many annotations per group.

Three tables in the catalog (archive/catalog/schema.py), written right after the catalog
commit (idempotent). A crash in between is repaired by :func:`sync`, which the read
paths call: the instance's transaction also adds a ``result-link`` work item
(archive/catalog/work.py) held by the storing node and removed once linked; when a
node dies first, its lease runs out and one node (whichever reads next) links it.

- ``result_instance``: one row per stored annotation / segmentation instance.
- ``result_ref``: the slide instances (and their series) it references.
- ``result_group``: one row per annotation group or segment.

The view ``result_link`` joins them with the catalog and marks ``current``: of
the results of one algorithm (by name) on one slide series, the newest (Content
Date/Time, then arrival) is current; older ones stay retrievable. Results
without an algorithm name (manual annotations) are always current. Deleted
instances drop out of the view because it joins the ``instance`` table.
"""
from __future__ import annotations

import json
import logging
import time
import zlib
from typing import Any

from pydicom.dataset import Dataset

from archive.auth.access import SYSTEM, Principal
from archive.catalog.work import WorkQueue
from archive.errors import DatasetDoesNotMatchSOPClass
from archive.results import measurement_reports
from archive.results.references import referenced_instances

RESULT_KINDS = {"1.2.840.10008.5.1.4.1.1.91.1": "ANN", "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
                "1.2.840.10008.5.1.4.1.1.66.7": "SEG", measurement_reports.SR_CLASS: "SR"}
#: The work item kind that links one stored result, and how long the storing node holds it.
LINK_WORK = "result-link"
LINK_LEASE = 60.0
log = logging.getLogger(__name__)

def _db(catalog):
    """The catalog's own database (its schema holds the link tables: archive/catalog/schema.py)."""
    return catalog.db


# --- extraction ------------------------------------------------------------------------


def _code(seq) -> tuple[str | None, str | None, str | None]:
    if not seq:
        return None, None, None
    item = seq[0]
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    return (str(value) if value else None, item.get("CodingSchemeDesignator"), item.get("CodeMeaning"))


def _algorithm(item: Dataset) -> tuple[str, str | None, str | None]:
    """(name, version, family meaning) from an ANN group or a SEG segment."""
    for keyword in ("AnnotationGroupAlgorithmIdentificationSequence",
                    "SegmentationAlgorithmIdentificationSequence", "AlgorithmIdentificationSequence"):
        seq = item.get(keyword)
        if seq:
            a = seq[0]
            return (str(a.get("AlgorithmName") or ""), a.get("AlgorithmVersion"),
                    _code(a.get("AlgorithmFamilyCodeSequence"))[2])
    return str(item.get("SegmentAlgorithmName") or ""), None, None


def extract(ds: Dataset) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The instance row and group rows of a result header."""
    kind = RESULT_KINDS[str(ds.SOPClassUID)]
    if kind == "SR":
        return _extract_report(ds)
    groups = []
    items = ds.get("AnnotationGroupSequence", []) if kind == "ANN" else ds.get("SegmentSequence", [])
    for item in items:
        name, version, family = _algorithm(item)
        code, scheme, meaning = _code(item.get("AnnotationPropertyTypeCodeSequence")
                                      or item.get("SegmentedPropertyTypeCodeSequence"))
        category = _code(item.get("AnnotationPropertyCategoryCodeSequence")
                         or item.get("SegmentedPropertyCategoryCodeSequence"))[2]
        measurements = [_code(m.get("ConceptNameCodeSequence"))[2] for m in item.get("MeasurementsSequence", [])]
        groups.append({
            "number": int(item.get("AnnotationGroupNumber") or item.get("SegmentNumber") or 0),
            "label": item.get("AnnotationGroupLabel") or item.get("SegmentLabel"),
            "graphic_type": item.get("GraphicType"),
            "annotation_count": int(item.NumberOfAnnotations) if "NumberOfAnnotations" in item else None,
            "property_type_code": code, "property_type_scheme": scheme, "property_type_meaning": meaning,
            "property_category_meaning": category,
            "algorithm_type": item.get("AnnotationGroupGenerationType") or item.get("SegmentAlgorithmType"),
            "algorithm_name": name or None, "algorithm_version": version, "algorithm_family": family,
            "measurements": json.dumps(measurements),
        })
    first = next((g for g in groups if g["algorithm_name"]), None)
    instance = {
        "result_uid": str(ds.SOPInstanceUID), "study_uid": str(ds.StudyInstanceUID),
        "series_uid": str(ds.SeriesInstanceUID), "kind": kind, "sop_class_uid": str(ds.SOPClassUID),
        "algorithm_name": first["algorithm_name"] if first else "",
        "algorithm_version": first["algorithm_version"] if first else None,
        "algorithm_family": first["algorithm_family"] if first else None,
        "creator": str(ds.get("ContentCreatorName") or "") or None,
        "content_label": ds.get("ContentLabel"),
        "content_datetime": f"{ds.get('ContentDate') or ''}{ds.get('ContentTime') or ''}",
        "stored_at": time.time(),
    }
    return instance, groups


def _extract_report(ds: Dataset) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A TID 1500 report: manual regions (always current), grouped by finding and graphic type."""
    try:
        groups = measurement_reports.groups(measurement_reports.regions(ds))
    except DatasetDoesNotMatchSOPClass:  # checked at ingest; a header read back without its graphic data
        groups = []
    for g in groups:
        g["measurements"] = json.dumps(g["measurements"])
    instance = {
        "result_uid": str(ds.SOPInstanceUID), "study_uid": str(ds.StudyInstanceUID),
        "series_uid": str(ds.SeriesInstanceUID), "kind": "SR", "sop_class_uid": str(ds.SOPClassUID),
        "algorithm_name": "", "algorithm_version": None, "algorithm_family": None,
        "creator": measurement_reports.observer_name(ds),
        "content_label": ds.get("ContentLabel") or ds.get("SeriesDescription"),
        "content_datetime": f"{ds.get('ContentDate') or ''}{ds.get('ContentTime') or ''}",
        "stored_at": time.time(),
    }
    return instance, groups


# --- writes ------------------------------------------------------------------------------


def links(ds: Dataset) -> bool:
    """Whether :func:`record` links this instance (a result: annotations, segmentation, TID 1500 report)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in RESULT_KINDS:
        return False
    return sop_class != measurement_reports.SR_CLASS or measurement_reports.is_measurement_report(ds)


def _payload(sop_uid: str) -> str:
    return json.dumps({"sop": sop_uid})


def queue_link(session, ds: Dataset, owner: str) -> None:
    """In the transaction storing ``ds`` (Catalog.add_instance): the work item that gets it linked
    even if this node dies before :func:`record`; held by ``owner`` for LINK_LEASE seconds."""
    if links(ds):
        WorkQueue(session, owner).add(LINK_WORK, {"sop": str(ds.SOPInstanceUID)}, lease=LINK_LEASE)


def record(catalog, ds: Dataset) -> None:
    """Link a stored result to its slides (and drop its work item); no-op for other SOP classes,
    idempotent for results."""
    if not links(ds):
        return
    instance, groups = extract(ds)
    refs = []
    for series, sop in referenced_instances(ds):
        found = catalog.instance(sop, principal=SYSTEM)
        slide_series = found.series_uid if found is not None else series
        if slide_series:
            refs.append((instance["result_uid"], slide_series, sop))
    with _db(catalog).transaction() as db:
        db.execute("DELETE FROM work_item WHERE kind=? AND payload=?", (LINK_WORK, _payload(instance["result_uid"])))
        if db.execute(f"INSERT INTO result_instance({','.join(instance)}) VALUES ({','.join('?' * len(instance))}) "
                      "ON CONFLICT DO NOTHING RETURNING result_uid", list(instance.values())).fetchone() is None:
            return  # recorded already (by this node's sync or another node's)
        db.executemany("INSERT INTO result_ref(result_uid, slide_series_uid, slide_sop_uid) VALUES (?,?,?) "
                       "ON CONFLICT DO NOTHING", refs)
        for g in groups:
            row = dict(g, result_uid=instance["result_uid"])
            db.execute(f"INSERT INTO result_group({','.join(row)}) VALUES ({','.join('?' * len(row))}) "
                       "ON CONFLICT DO NOTHING", list(row.values()))


def release(catalog, sop_uid: str) -> None:
    """Give a result's link back at once (linking it failed here): the next results read retries it."""
    _db(catalog).execute("UPDATE work_item SET owner=NULL, lease_until=NULL WHERE kind=? AND payload=?",
                         (LINK_WORK, _payload(sop_uid)))


def sync(catalog, limit: int = 100) -> int:
    """Link the results whose storing node died (or failed) between its commit and :func:`record`:
    the ``result-link`` items nobody holds any more. Each is claimed by one node (WorkQueue.claim,
    ``SKIP LOCKED`` on PostgreSQL); returns how many this call linked. A read costs one indexed
    SELECT when there is nothing to repair."""
    db = _db(catalog)
    now = time.time()
    if db.execute("SELECT 1 FROM work_item WHERE kind=? AND due<=? AND (lease_until IS NULL OR lease_until<?) "
                  "LIMIT 1", (LINK_WORK, now, now)).fetchone() is None:
        return 0
    queue = WorkQueue(db)
    linked = 0
    for item in queue.claim(LINK_WORK, limit, lease=LINK_LEASE):
        row = db.execute("SELECT header FROM instance WHERE sop_instance_uid=?", (item.payload["sop"],)).fetchone()
        if row is None:  # deleted since it was stored
            queue.done(item)
            continue
        try:
            ds = Dataset.from_json(zlib.decompress(row["header"]).decode(), bulk_data_uri_handler=lambda *a: b"")
            record(catalog, ds)
        except Exception as e:  # noqa: BLE001 - one unreadable result must not stop the others
            log.warning("linking result %s failed (%s, attempt %d); retried later",
                        item.payload["sop"], type(e).__name__, item.attempts)
            queue.retry(item)
            continue
        queue.done(item)  # record() removed it already, unless the instance is not a result it links
        linked += 1
    return linked


# --- reads ---------------------------------------------------------------------------------


def _group_dict(row) -> dict[str, Any]:
    return {
        "number": row["number"], "label": row["label"], "graphic_type": row["graphic_type"],
        "annotation_count": row["annotation_count"],
        "property_type": {"code": row["property_type_code"], "scheme": row["property_type_scheme"],
                          "meaning": row["property_type_meaning"]},
        "property_category": row["property_category_meaning"],
        "algorithm_type": row["algorithm_type"],
        "algorithm": ({"name": row["algorithm_name"], "version": row["algorithm_version"],
                       "family": row["algorithm_family"]} if row["algorithm_name"] else None),
        "measurements": json.loads(row["measurements"] or "[]"),
    }


def _result_dict(row, groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "study": row["study_uid"], "series": row["series_uid"], "sop_instance": row["result_uid"],
        "kind": row["kind"], "sop_class": row["sop_class_uid"],
        "algorithm": ({"name": row["algorithm_name"], "version": row["algorithm_version"],
                       "family": row["algorithm_family"]} if row["algorithm_name"] else None),
        "creator": row["creator"], "content_label": row["content_label"],
        "content_datetime": row["content_datetime"], "stored_at": row["stored_at"],
        "current": bool(row["current"]), "groups": groups,
    }


def _groups_of(db, uids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {u: [] for u in uids}
    for i in range(0, len(uids), 500):
        chunk = uids[i:i + 500]
        for row in db.execute(f"SELECT * FROM result_group WHERE result_uid IN ({','.join('?' * len(chunk))}) "
                              "ORDER BY result_uid, number", chunk):
            out[row["result_uid"]].append(_group_dict(row))
    return out


def _readable(principal: Principal, study_uid_column: str) -> tuple[str, list[str]]:
    """Condition: the study named by ``study_uid_column`` is one ``principal`` may read."""
    from archive.catalog import UNRESTRICTED, scope

    cond, params = scope(principal)
    if cond == UNRESTRICTED:
        return cond, []
    return (f"EXISTS (SELECT 1 FROM study st WHERE st.study_instance_uid = {study_uid_column} AND {cond})",
            params)


def results_for_slide(catalog, series_uid: str, current_only: bool = False, *,
                      principal: Principal) -> list[dict[str, Any]]:
    """Every result referencing the slide series that ``principal`` may read, newest first."""
    sync(catalog)
    db = _db(catalog)
    cond, params = _readable(principal, "result_link.study_uid")
    sql = f"SELECT * FROM result_link WHERE slide_series_uid=? AND {cond}"
    if current_only:
        sql += " AND current=1"
    rows = db.execute(sql + " ORDER BY content_datetime DESC, stored_at DESC", (series_uid, *params)).fetchall()
    groups = _groups_of(db, [r["result_uid"] for r in rows])
    return [_result_dict(r, groups[r["result_uid"]]) for r in rows]


def results_summary(catalog, series_uid: str) -> dict[str, Any]:
    """A compact summary for search indexing: algorithms, property types and counts of current results."""
    results = results_for_slide(catalog, series_uid, current_only=True, principal=SYSTEM)
    algorithms = sorted({(r["algorithm"]["name"], r["algorithm"]["version"] or "", r["algorithm"]["family"] or "")
                         for r in results if r["algorithm"]})
    counts: dict[str, int] = {}
    for r in results:
        for g in r["groups"]:
            meaning = g["property_type"]["meaning"] or g["label"] or ""
            if g["annotation_count"] is not None:
                counts[meaning] = counts.get(meaning, 0) + g["annotation_count"]
            else:
                counts.setdefault(meaning, 0)
    return {
        "series": series_uid,
        "annotation_instances": sum(r["kind"] == "ANN" for r in results),
        "segmentation_instances": sum(r["kind"] == "SEG" for r in results),
        "algorithms": [{"name": n, "version": v or None, "family": f or None} for n, v, f in algorithms],
        "property_types": sorted(counts),
        "annotation_counts": counts,
    }


def find_slides(catalog, algorithm: str | None = None, version: str | None = None,
                property_type: str | None = None, min_count: int | None = None, kind: str | None = None,
                include_superseded: bool = False, limit: int = 100, offset: int = 0, *,
                principal: Principal) -> list[dict[str, Any]]:
    """Slides with matching results. ``property_type`` matches a code value or meaning (case-insensitive);
    ``min_count``: some matching group has at least that many annotations."""
    sync(catalog)
    db = _db(catalog)
    from archive.catalog import scope

    slide_cond, params = scope(principal)  # the slide's study (st, joined below)
    result_cond, result_params = _readable(principal, "l.study_uid")
    conds, params = [slide_cond, result_cond], params + result_params
    if not include_superseded:
        conds.append("l.current=1")
    if kind:
        conds.append("l.kind=?")
        params.append(kind.upper())
    group_conds = []
    if algorithm:
        group_conds.append("(lower(g.algorithm_name)=lower(?) OR lower(l.algorithm_name)=lower(?))")
        params += [algorithm, algorithm]
    if version:
        group_conds.append("(g.algorithm_version=? OR l.algorithm_version=?)")
        params += [version, version]
    if property_type:
        group_conds.append("(lower(g.property_type_code)=lower(?) OR lower(g.property_type_meaning)=lower(?))")
        params += [property_type, property_type]
    if min_count is not None:
        group_conds.append("g.annotation_count >= ?")
        params.append(min_count)
    if group_conds:
        conds.append("EXISTS (SELECT 1 FROM result_group g WHERE g.result_uid=l.result_uid AND "
                     + " AND ".join(group_conds) + ")")
    rows = db.execute(
        "SELECT l.*, st.study_instance_uid AS slide_study_uid FROM result_link l "
        "JOIN series se ON se.series_instance_uid=l.slide_series_uid JOIN study st ON se.study_fk=st.pk "
        f"WHERE {' AND '.join(conds)} ORDER BY se.pk, l.content_datetime DESC, l.stored_at DESC",
        params).fetchall()
    groups = _groups_of(db, sorted({r["result_uid"] for r in rows}))
    slides: dict[str, dict[str, Any]] = {}
    for r in rows:
        slide = slides.setdefault(r["slide_series_uid"], {"study": r["slide_study_uid"],
                                                          "series": r["slide_series_uid"], "results": []})
        slide["results"].append(_result_dict(r, groups[r["result_uid"]]))
    return list(slides.values())[offset:offset + limit]

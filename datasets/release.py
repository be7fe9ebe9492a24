"""Releases: a dataset frozen into an immutable manifest, a version and a persistent identifier.

``freeze`` resolves the dataset's series, reads every instance's size and SHA-256
from the catalog (computed from the stored bytes at ingest), the clinical fields
per case and the landing-page counts, and writes it all in one transaction with
the release's studies joining the collection ``dataset:<id>:v<version>``, which
grants authorize. Nothing of a release changes afterwards except withdrawal
marks: a slide deleted later (``withdraw_deleted``, called by the archive's
delete) or withdrawn by a curator stays listed, marked, never dropped.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from typing import Any, Callable, Iterable, Iterator

from archive.auth.access import Principal
from archive.errors import Conflict, InvalidRequest, NotFound

from . import clinical, model, selection
from .schema import now, reader

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
RESULT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.91.1": "annotation", "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
                      "1.2.840.10008.5.1.4.1.1.66.7": "segmentation"}
RELEASE_ID = re.compile(r"([a-z0-9][a-z0-9-]{1,62}):v([1-9][0-9]{0,5})")
CHUNK = 500
DELETED = "deleted from the archive"
NOT_STORED = "no longer stored as released"


def release_id(dataset_id: str, version: int) -> str:
    return f"{dataset_id}:v{version}"


def collection_name(rid: str) -> str:
    """The collection a release's studies join; a grant of read on it is access to the release."""
    return f"dataset:{rid}"


def parse_release_id(rid: str) -> tuple[str, int]:
    m = RELEASE_ID.fullmatch(rid or "")
    if not m:
        raise InvalidRequest("a release is named <dataset id>:v<version>, e.g. skin-2019:v1")
    return m.group(1), int(m.group(2))


def persistent_identifier(dataset_id: str, version: int, doi_prefix: str = "") -> str:
    """``10.1234/slidearchive.<id>.v<n>`` with a DOI prefix configured, else a URN of this archive."""
    if doi_prefix:
        return f"{doi_prefix}/slidearchive.{dataset_id}.v{version}"
    return f"urn:slidearchive:dataset:{dataset_id}:v{version}"


@dataclasses.dataclass(frozen=True)
class Item:
    """One instance of a release."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    kind: str  # slide | annotation | segmentation | other
    case_id: str
    size: int
    sha256: str
    withdrawn_at: str | None = None
    withdrawn_reason: str | None = None

    @property
    def withdrawn(self) -> bool:
        return self.withdrawn_at is not None or self.withdrawn_reason is not None

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid", "kind",
                                             "case_id", "size", "sha256")}
        if self.withdrawn:
            out["withdrawn"] = {"at": self.withdrawn_at, "reason": self.withdrawn_reason}
        return out


@dataclasses.dataclass(frozen=True)
class Release:
    """A release's record without its items (see ``load_manifest`` / ``iter_items``)."""

    id: str
    dataset_id: str
    version: int
    identifier: str
    collection: str
    released_at: str
    released_by: str
    metadata: dict[str, Any]  # the dataset's fields as frozen
    counts: dict[str, Any]
    manifest_sha256: str
    withdrawn_at: str | None = None
    withdrawn_reason: str | None = None

    @property
    def status(self) -> str:
        return "withdrawn" if self.withdrawn_at else "released"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status
        return out


@dataclasses.dataclass(frozen=True)
class Manifest:
    release: Release
    cases: list[dict[str, Any]]
    items: list[Item]

    @property
    def available(self) -> list[Item]:
        return [i for i in self.items if not i.withdrawn] if not self.release.withdrawn_at else []

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release.to_json(), "cases": self.cases, "items": [i.to_json() for i in self.items]}


def manifest_digest(items: Iterable[tuple[str, int, str]]) -> str:
    """SHA-256 of the lines ``<sha256>  <size>  <SOP Instance UID>`` sorted by SOP Instance UID.

    Covers what a release froze (never the withdrawal marks), so anyone holding the
    manifest recomputes it (docs/datasets.md)."""
    h = hashlib.sha256()
    for sop, size, sha in sorted(items):
        h.update(f"{sha}  {size}  {sop}\n".encode())
    return h.hexdigest()


# --- freezing -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _SeriesFacts:
    """What a release needs of one series, read from its rows (their DICOM JSON is not kept)."""

    study_uid: str
    patient_id: str
    issuer: str
    sex: str | None
    age_band: str | None
    species: str
    diagnosis: str | None
    anatomic_sites: tuple[str, ...]
    stains: tuple[str, ...]
    scanner: str | None


def _kind(sop_class: str) -> str:
    if sop_class == WSI_SOP_CLASS:
        return "slide"
    return RESULT_SOP_CLASSES.get(sop_class, "other")


def _chunks(values: list[str], size: int = CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _result_series(catalog, slide_series: list[str]) -> list[str]:
    """Series of the annotations and segmentations that reference the chosen slides."""
    from archive.results import links as result_links

    result_links.sync(catalog)
    db = reader(catalog)
    out: dict[str, None] = {}
    for part in _chunks(slide_series):
        for (uid,) in db.execute(
                "SELECT DISTINCT r.series_uid FROM result_ref x JOIN result_instance r ON r.result_uid=x.result_uid "
                f"JOIN instance i ON i.sop_instance_uid=r.result_uid WHERE x.slide_series_uid IN "
                f"({','.join('?' * len(part))}) ORDER BY r.series_uid", part):
            out.setdefault(uid)
    return list(out)


def _read(catalog, series: list[str]) -> tuple[dict[str, _SeriesFacts], list[tuple]]:
    """Series facts and instance rows (study, series, sop, class, size, sha256) of ``series``."""
    db = reader(catalog)
    facts: dict[str, _SeriesFacts] = {}
    studies: dict[str, tuple] = {}  # a study's attributes are parsed once, not once per series
    rows: list[tuple] = []
    for part in _chunks(series):
        marks = ",".join("?" * len(part))
        for uid, study, pid, issuer, st_attrs, se_attrs, first in db.execute(
                "SELECT se.series_instance_uid, st.study_instance_uid, p.patient_id, p.issuer_of_patient_id, "
                "st.attrs, se.attrs, (SELECT i.attrs FROM instance i WHERE i.series_fk=se.pk ORDER BY i.pk LIMIT 1) "
                "FROM series se JOIN study st ON se.study_fk=st.pk JOIN patient p ON st.patient_fk=p.pk "
                f"WHERE se.series_instance_uid IN ({marks})", part):
            if study not in studies:
                attrs = json.loads(st_attrs)
                studies[study] = (clinical.sex(attrs), clinical.age_band(clinical._first(attrs, clinical.PATIENT_AGE)),
                                  clinical.species(attrs))
            attrs = json.loads(se_attrs)
            facts[uid] = _SeriesFacts(study, pid or "", issuer or "", *studies[study], _diagnosis(first),
                                      tuple(clinical.anatomic_sites(attrs)), tuple(clinical.stains(attrs)),
                                      clinical.scanner(attrs))
        rows += db.execute(
            "SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, i.sop_class_uid, i.size, "
            "i.sha256 FROM instance i JOIN series se ON i.series_fk=se.pk JOIN study st ON se.study_fk=st.pk "
            f"WHERE se.series_instance_uid IN ({marks})", part).fetchall()
    return facts, rows


def _diagnosis(instance_attrs: str | None) -> str | None:
    """Admitting Diagnoses of an instance's DICOM JSON; most have none, and are not parsed at all."""
    if not instance_attrs or not any(f'"{tag}"' in instance_attrs for tag in (
            clinical.ADMITTING_DIAGNOSES_DESCRIPTION, clinical.ADMITTING_DIAGNOSES_CODE_SEQUENCE)):
        return None
    return clinical.diagnosis(json.loads(instance_attrs))


def _annotation_count(catalog, result_uids: list[str]) -> int:
    db = reader(catalog)
    total = 0
    for part in _chunks(result_uids):
        total += int(db.execute(f"SELECT coalesce(sum(annotation_count), 0) FROM result_group WHERE result_uid IN "
                                f"({','.join('?' * len(part))})", part).fetchone()[0])  # PostgreSQL: a numeric
    return total


def _cases(dataset_id: str, facts: dict[str, _SeriesFacts], supplied: dict[str, dict], key: bytes
           ) -> tuple[dict[tuple[str, str], str], list[dict[str, Any]]]:
    """(patient -> case id, the cases with their clinical fields): supplied values win over headers."""
    ids: dict[tuple[str, str], str] = {}
    found: dict[str, dict[str, list]] = {}
    for f in facts.values():
        patient = (f.patient_id, f.issuer)
        cid = ids.setdefault(patient, clinical.case_id(key, dataset_id, *patient))
        values = found.setdefault(cid, collections.defaultdict(list))
        values["patient_id"] = [f.patient_id]
        values["sex"].append(f.sex)
        values["age_band"].append(f.age_band)
        values["species"].append(f.species)
        values["diagnosis"].append(f.diagnosis)
        values["anatomic_site"] += f.anatomic_sites
    out = []
    for cid, values in sorted(found.items()):
        given = supplied.get(values["patient_id"][0], {})
        case = {"case_id": cid}
        for name in (*model.CLINICAL_FIELDS, "species"):
            case[name] = given.get(name) or clinical.merge(values[name])
        out.append(case)
    return ids, out


def _tally(values: Iterable[str | None]) -> dict[str, int]:
    counts = collections.Counter(v for v in values if v)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _counts(items: list[Item], facts: dict[str, _SeriesFacts], cases: list[dict], annotations: int
            ) -> dict[str, Any]:
    slides = {i.series_uid for i in items if i.kind == "slide"}
    by_kind = collections.Counter({i.series_uid: i.kind for i in items}.values())
    return {
        "slides": len(slides), "series": len({i.series_uid for i in items}), "instances": len(items),
        "studies": len({i.study_uid for i in items}), "cases": len(cases),
        "annotation_series": by_kind["annotation"], "segmentation_series": by_kind["segmentation"],
        "annotations": annotations, "size": sum(i.size for i in items),
        "stains": _tally(s for uid in slides for s in facts[uid].stains),
        "scanners": _tally(facts[uid].scanner for uid in slides),
        "diagnoses": _tally(c["diagnosis"] for c in cases),
        "species": _tally(c["species"] for c in cases),
        "anatomic_sites": _tally(c["anatomic_site"] for c in cases),
        "sexes": _tally(c["sex"] for c in cases),
        "age_bands": _tally(c["age_band"] for c in cases),
    }


def freeze(catalog, dataset_id: str, *, principal: Principal, released_by: str, key: bytes,
           open_index: Callable[[], object] | None = None, doi_prefix: str = "") -> Release:
    """Release the dataset as it is now: a new version, or a clear 4xx and nothing changed."""
    dataset = model.get(catalog, dataset_id)
    chosen = selection.resolve(catalog, dataset, principal, open_index)
    if chosen.missing:
        more = f" and {len(chosen.missing) - 1} more" if len(chosen.missing) > 1 else ""
        raise Conflict(f"listed series {chosen.missing[0]}{more} no longer stored (or not yours to curate): "
                       "remove them from the dataset first")
    if not chosen.series:
        raise Conflict(f"dataset {dataset_id!r} selects no series: nothing to release")
    series = chosen.series + [u for u in _result_series(catalog, chosen.series) if u not in set(chosen.series)]
    facts, rows = _read(catalog, series)
    ids, cases = _cases(dataset_id, facts, model.cases(catalog, dataset_id), key)
    items = [Item(study, se, sop, cls, _kind(cls), ids[(facts[se].patient_id, facts[se].issuer)], size, sha)
             for study, se, sop, cls, size, sha in rows]
    if not items:
        raise Conflict(f"dataset {dataset_id!r} selects series without instances: nothing to release")
    annotations = _annotation_count(catalog, [i.sop_instance_uid for i in items if i.kind == "annotation"])
    counts = _counts(items, facts, cases, annotations)
    counts["selected"] = {"search": chosen.from_search, "collection": chosen.from_collection}
    digest = manifest_digest((i.sop_instance_uid, i.size, i.sha256) for i in items)
    metadata = {k: v for k, v in dataset.to_json().items() if k not in ("created_at", "updated_at", "created_by")}
    stamp = now()
    with catalog.transaction() as db:
        version = (db.execute("SELECT max(version) FROM dataset_release WHERE dataset_id=?",
                              (dataset_id,)).fetchone()[0] or 0) + 1
        rid = release_id(dataset_id, version)
        release = Release(rid, dataset_id, version, persistent_identifier(dataset_id, version, doi_prefix),
                          collection_name(rid), stamp, released_by[:200], metadata, counts, digest)
        db.execute("INSERT INTO dataset_release(id, dataset_id, version, identifier, collection, released_at, "
                   "released_by, metadata, counts, manifest_sha256) VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (rid, dataset_id, version, release.identifier, release.collection, stamp, release.released_by,
                    json.dumps(metadata, ensure_ascii=False), json.dumps(counts, ensure_ascii=False), digest))
        db.executemany("INSERT INTO release_case(release_id, case_id, diagnosis, age_band, sex, anatomic_site, "
                       "species) VALUES (?,?,?,?,?,?,?)",
                       [(rid, c["case_id"], c["diagnosis"], c["age_band"], c["sex"], c["anatomic_site"],
                         c["species"]) for c in cases])
        db.executemany("INSERT INTO release_item(release_id, sop_instance_uid, study_uid, series_uid, sop_class_uid, "
                       "case_id, kind, size, sha256) VALUES (?,?,?,?,?,?,?,?,?)",
                       [(rid, i.sop_instance_uid, i.study_uid, i.series_uid, i.sop_class_uid, i.case_id, i.kind,
                         i.size, i.sha256) for i in items])
        _grant_collection(db, rid, release.collection)
    return release


def _grant_collection(db, rid: str, collection: str) -> None:
    """The release's studies join its collection; their series are re-indexed (search filters on collections)."""
    import time

    db.execute("INSERT INTO collection(name) VALUES (?) ON CONFLICT DO NOTHING", (collection,))
    db.execute("INSERT INTO study_collection(study_fk, collection) SELECT DISTINCT st.pk, CAST(? AS TEXT) FROM study st "
               "WHERE st.study_instance_uid IN (SELECT study_uid FROM release_item WHERE release_id=?) "
               "ON CONFLICT DO NOTHING", (collection, rid))
    db.execute("INSERT INTO outbox(event, study_uid, series_uid, sop_instance_uid, created_at) "
               "SELECT DISTINCT 'stored', study_uid, series_uid, CAST(NULL AS TEXT), CAST(? AS REAL) FROM release_item "
               "WHERE release_id=?",
               (time.time(), rid))


# --- reading -----------------------------------------------------------------------------

_RELEASE_COLUMNS = ("id", "dataset_id", "version", "identifier", "collection", "released_at", "released_by",
                    "metadata", "counts", "manifest_sha256", "withdrawn_at", "withdrawn_reason")


def _release(row) -> Release:
    values = dict(zip(_RELEASE_COLUMNS, row))
    values["metadata"] = json.loads(values["metadata"])
    values["counts"] = json.loads(values["counts"])
    return Release(**values)


def get_release(catalog, rid: str) -> Release:
    parse_release_id(rid)
    row = reader(catalog).execute(f"SELECT {','.join(_RELEASE_COLUMNS)} FROM dataset_release WHERE id=?",
                                  (rid,)).fetchone()
    if row is None:
        raise NotFound(f"no release {rid[:80]!r}")
    return _release(row)


def releases(catalog, dataset_id: str) -> list[Release]:
    rows = reader(catalog).execute(f"SELECT {','.join(_RELEASE_COLUMNS)} FROM dataset_release WHERE dataset_id=? "
                                   "ORDER BY version", (dataset_id,)).fetchall()
    return [_release(r) for r in rows]


def latest_releases(catalog, text: str | None = None, limit: int = 100, offset: int = 0
                    ) -> tuple[int, list[Release]]:
    """The newest release of each dataset whose frozen metadata holds every word of ``text``."""
    conds, params = model.words_like(text, ("r.metadata", "r.identifier"))
    where = " AND ".join(["r.version = (SELECT max(x.version) FROM dataset_release x WHERE x.dataset_id=r.dataset_id)",
                          *conds])
    db = reader(catalog)
    total = db.execute(f"SELECT count(*) FROM dataset_release r WHERE {where}", params).fetchone()[0]
    rows = db.execute(f"SELECT {','.join('r.' + c for c in _RELEASE_COLUMNS)} FROM dataset_release r WHERE {where} "
                      "ORDER BY r.dataset_id LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
    return total, [_release(r) for r in rows]


def iter_items(catalog, rid: str) -> Iterator[Item]:
    """The release's instances, in study / series / SOP Instance UID order, each marked withdrawn when
    it was withdrawn or is no longer stored with the released bytes (so a delete that raced its mark
    still shows)."""
    get_release(catalog, rid)
    cursor = reader(catalog).execute(
        "SELECT ri.study_uid, ri.series_uid, ri.sop_instance_uid, ri.sop_class_uid, ri.kind, ri.case_id, ri.size, "
        "ri.sha256, ri.withdrawn_at, ri.withdrawn_reason, "
        "(SELECT 1 FROM instance i WHERE i.sop_instance_uid=ri.sop_instance_uid AND i.sha256=ri.sha256) "
        "FROM release_item ri WHERE ri.release_id=? ORDER BY ri.study_uid, ri.series_uid, ri.sop_instance_uid",
        (rid,))
    for *values, stored in cursor:
        item = Item(*values)
        if not item.withdrawn and not stored:
            item = dataclasses.replace(item, withdrawn_reason=NOT_STORED)
        yield item


def load_manifest(catalog, rid: str) -> Manifest:
    """The whole manifest of release ``rid`` (``<dataset id>:v<version>``): record, cases, items."""
    release = get_release(catalog, rid)
    return Manifest(release, load_cases(catalog, rid), list(iter_items(catalog, rid)))


def load_cases(catalog, rid: str) -> list[dict[str, Any]]:
    """The release's cases with their clinical fields, by case id."""
    rows = reader(catalog).execute("SELECT case_id, diagnosis, age_band, sex, anatomic_site, species FROM "
                                   "release_case WHERE release_id=? ORDER BY case_id", (rid,)).fetchall()
    return [dict(zip(("case_id", *model.CLINICAL_FIELDS, "species"), r)) for r in rows]


# --- withdrawal ---------------------------------------------------------------------------

def withdraw_deleted(catalog, sop_uids: Iterable[str]) -> int:
    """Mark deleted instances withdrawn in every release holding them; returns rows marked."""
    uids = list(sop_uids)
    if not uids:
        return 0
    with catalog.transaction() as db:
        return _mark(db, uids, DELETED, None)


def _mark(db, sop_uids: list[str], reason: str, rid: str | None) -> int:
    stamp = now()
    marked = 0
    touched: set[str] = set()
    for part in _chunks(sop_uids):
        marks = ",".join("?" * len(part))
        where = f"sop_instance_uid IN ({marks}) AND withdrawn_at IS NULL" + (" AND release_id=?" if rid else "")
        params = [*part, *([rid] if rid else [])]
        touched.update(r[0] for r in db.execute(f"SELECT DISTINCT release_id FROM release_item WHERE {where}", params))
        marked += db.execute(f"UPDATE release_item SET withdrawn_at=?, withdrawn_reason=? WHERE {where}",
                             [stamp, reason, *params]).rowcount
    for release in touched:
        _prune_collection(db, release)
    return marked


def _prune_collection(db, rid: str) -> None:
    """Studies with nothing left available in the release leave its collection (grants stop reaching them)."""
    collection = collection_name(rid)
    db.execute("DELETE FROM study_collection WHERE collection=? AND study_fk IN (SELECT st.pk FROM study st "
               "WHERE NOT EXISTS (SELECT 1 FROM release_item ri WHERE ri.release_id=? AND "
               "ri.study_uid=st.study_instance_uid AND ri.withdrawn_at IS NULL)) "
               "AND EXISTS (SELECT 1 FROM study_collection o WHERE o.study_fk=study_collection.study_fk "
               "AND o.collection<>?)", (collection, rid, collection))


def withdraw(catalog, rid: str, reason: str, series: list[str] | None = None) -> int:
    """A curator's withdrawal: of some series from the release, or (no series) of the whole release.

    Returns the number of instances newly marked. The release's record, manifest and
    identifier stay (a landing page shows the withdrawal); grants stop reaching what is withdrawn.
    """
    reason = (reason or "").strip()
    if not reason or len(reason) > 500:
        raise InvalidRequest("reason is required (at most 500 characters): it is shown on the landing page")
    release = get_release(catalog, rid)
    if release.withdrawn_at:
        raise Conflict(f"release {rid} is withdrawn already")
    with catalog.transaction() as db:
        if series is None:
            db.execute("UPDATE dataset_release SET withdrawn_at=?, withdrawn_reason=? WHERE id=?", (now(), reason, rid))
            uids = [r[0] for r in db.execute("SELECT sop_instance_uid FROM release_item WHERE release_id=? AND "
                                             "withdrawn_at IS NULL", (rid,))]
        else:
            series = model.check_uids(series, required=True)
            uids = []
            for uid in series:
                found = [r[0] for r in db.execute("SELECT sop_instance_uid FROM release_item WHERE release_id=? "
                                                  "AND series_uid=?", (rid, uid))]
                if not found:
                    raise NotFound(f"series {uid} is not in release {rid}")
                uids += found
        marked = _mark(db, uids, reason, rid)
        if series is None:  # nothing of a withdrawn release stays granted, even in a study kept elsewhere
            db.execute("DELETE FROM study_collection WHERE collection=? AND study_fk IN (SELECT o.study_fk FROM "
                       "study_collection o WHERE o.collection<>?)", (release.collection, release.collection))
    return marked

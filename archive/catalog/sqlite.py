"""The SQLite catalog: the source of truth for what the archive holds.

Patient / study / series / instance rows carry the matchable attributes as
columns and the rest as DICOM JSON; each instance row carries its frame index
as one packed array and its header as compressed DICOM JSON, so frames and
metadata are served without parsing the stored file. Every change writes an
outbox row in the same transaction, for the indexer.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from archive.auth.access import SYSTEM, Principal
from archive.catalog.attributes import KEYS, LEVELS, Key
from archive.catalog.connections import Connections
from archive.catalog.query import Query, match_sql
from archive.errors import DuplicateInstance, NotAuthorized, NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS collection (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS patient (
    pk INTEGER PRIMARY KEY,
    patient_id TEXT, issuer_of_patient_id TEXT, patient_name TEXT,
    patient_birth_date TEXT, patient_sex TEXT,
    UNIQUE (patient_id, issuer_of_patient_id)
);
CREATE TABLE IF NOT EXISTS study (
    pk INTEGER PRIMARY KEY,
    study_instance_uid TEXT NOT NULL UNIQUE,
    patient_fk INTEGER NOT NULL REFERENCES patient(pk),
    collection TEXT NOT NULL REFERENCES collection(name),
    study_date TEXT, study_time TEXT, accession_number TEXT, study_id TEXT,
    referring_physician_name TEXT, study_description TEXT,
    attrs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    pk INTEGER PRIMARY KEY,
    series_instance_uid TEXT NOT NULL UNIQUE,
    study_fk INTEGER NOT NULL REFERENCES study(pk),
    modality TEXT, series_number INTEGER, series_description TEXT, series_date TEXT, series_time TEXT,
    pps_start_date TEXT, pps_start_time TEXT, body_part_examined TEXT,
    attrs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instance (
    pk INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_fk INTEGER NOT NULL REFERENCES series(pk),
    sop_class_uid TEXT NOT NULL, instance_number INTEGER, image_type TEXT, container_identifier TEXT,
    number_of_frames INTEGER, rows INTEGER, columns INTEGER,
    total_pixel_matrix_columns INTEGER, total_pixel_matrix_rows INTEGER,
    concatenation_uid TEXT, in_concatenation_number INTEGER, concatenation_frame_offset INTEGER,
    content_date TEXT, content_time TEXT,
    transfer_syntax_uid TEXT NOT NULL, storage_id TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, frame_layout TEXT, frame_index BLOB,
    attrs TEXT NOT NULL, header BLOB NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_fk);
CREATE INDEX IF NOT EXISTS instance_series ON instance(series_fk);
CREATE INDEX IF NOT EXISTS study_patient ON study(patient_fk);
CREATE INDEX IF NOT EXISTS study_date_idx ON study(study_date);
-- Access control: a study belongs to one or more collections (study.collection is the first).
CREATE TABLE IF NOT EXISTS study_collection (
    study_fk INTEGER NOT NULL REFERENCES study(pk) ON DELETE CASCADE,
    collection TEXT NOT NULL REFERENCES collection(name),
    PRIMARY KEY (study_fk, collection)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS study_collection_by_name ON study_collection(collection, study_fk);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL, study_uid TEXT, series_uid TEXT, sop_instance_uid TEXT,
    created_at REAL NOT NULL
);
"""


HEADER_CACHE = 2048
SHARED_SEQUENCES = 512
SHARED_SEQUENCE_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class InstanceRecord:
    """What serving an instance needs, from one row."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_id: str
    size: int
    sha256: str
    number_of_frames: int | None
    frame_layout: str | None  # None: no pixel data (the packed index is read by Catalog.frame_index)
    rows: int | None
    columns: int | None
    concatenation_uid: str | None = None
    in_concatenation_number: int | None = None
    concatenation_frame_offset: int | None = None


@dataclasses.dataclass(frozen=True)
class NewInstance:
    """Everything ingest hands the catalog for one stored instance."""

    dataset: Dataset  # the stored header (no pixel data)
    transfer_syntax_uid: str
    storage_id: str
    size: int
    sha256: str
    frame_layout: str | None
    frame_index: bytes | None
    header_json: dict[str, Any]  # DICOM JSON of the whole header


@dataclasses.dataclass(frozen=True)
class OutboxEvent:
    seq: int
    event: str
    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None


def column_value(ds: Dataset, key: Key) -> Any:
    value = ds.get(key.keyword)
    if value is None or value == "":
        return None
    if key.vr in ("IS", "US", "UL"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if key.multi and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    text = str(value)
    if key.vr == "TM":
        text = text.replace(":", "")
    return text


def _subset(header_json: dict[str, Any], keywords: frozenset[str] | set[str]) -> dict[str, Any]:
    from archive.catalog.attributes import tag_hex

    tags = {tag_hex(k) for k in keywords}
    return {t: v for t, v in header_json.items() if t in tags}


def _without_bulk(obj: dict[str, Any]) -> dict[str, Any]:
    """DICOM JSON minus BulkDataURI elements: pydicom then needs no bulk handler (which it
    inspects once per element, the slowest part of reading a header back)."""
    out = {}
    for tag, elem in obj.items():
        if "BulkDataURI" in elem:
            continue
        if elem.get("vr") == "SQ" and elem.get("Value"):
            elem = dict(elem, Value=[_without_bulk(item) for item in elem["Value"]])
        out[tag] = elem
    return out


def scope(principal: Principal, role: str = "read", study: str = "st", listing: bool = False) -> tuple[str, list[str]]:
    """The SQL condition (on study alias ``study``) limiting a query to what ``principal`` may ``role``.

    Every catalog read that answers a request takes a principal and adds this to its
    WHERE clause: filtering happens inside the query, so paging and counts are right.
    A lookup probes the study's collection rows (a few index reads, whatever the
    collection's size); a ``listing`` reads the collections' study list once instead.
    """
    memo = principal.__dict__.setdefault("_scope_sql", {})  # the frame path asks once per request
    key = (role, study, listing)
    if key not in memo:
        memo[key] = _scope_sql(principal.collections(role), study, listing)
    sql, names = memo[key]
    return sql, list(names)


def _scope_sql(collections: frozenset[str] | None, study: str, listing: bool) -> tuple[str, tuple[str, ...]]:
    if collections is None:
        return "1", ()
    if not collections:
        return "0", ()
    names = tuple(sorted(collections))
    marks = ",".join("?" * len(names))
    if listing:
        return f"{study}.pk IN (SELECT sc.study_fk FROM study_collection sc WHERE sc.collection IN ({marks}))", names
    return (f"EXISTS (SELECT 1 FROM study_collection sc WHERE sc.study_fk={study}.pk AND sc.collection IN ({marks}))",
            names)


class Catalog:
    def __init__(self, path: Path, stored_file: Callable[[str], Path] | None = None):
        """``stored_file``: storage id -> path of the stored file; when given, ``series_headers``
        reads headers from the stored files (faster than from the catalog's DICOM JSON)."""
        self.path = Path(path)
        self._stored_file = stored_file
        self._connections = Connections(self.path, ("synchronous=FULL", "foreign_keys=ON"), timeout=60,
                                        row_factory=sqlite3.Row)
        self._parsed: OrderedDict[str, Dataset] = OrderedDict()  # see series_headers
        self._sequences: OrderedDict[tuple, DataElement] = OrderedDict()  # see _share_sequences
        self._db().executescript(SCHEMA)
        self._fill_study_collections()

    def _fill_study_collections(self) -> None:
        """Catalogs written before study_collection existed: one row per study from study.collection."""
        db = self._db()
        if db.execute("SELECT 1 FROM study_collection LIMIT 1").fetchone() is None and \
                db.execute("SELECT 1 FROM study LIMIT 1").fetchone() is not None:
            with self.transaction() as tx:
                tx.execute("INSERT OR IGNORE INTO study_collection(study_fk, collection) SELECT pk, collection FROM study")

    def _db(self) -> sqlite3.Connection:
        return self._connections.get()

    def transaction(self):
        return self._connections.transaction()

    def close(self) -> None:
        self._connections.close()

    # --- writes ---------------------------------------------------------------

    def add_instance(self, new: NewInstance, collection: str, writable: frozenset[str] | None = None) -> None:
        """Insert the instance and its parents and an outbox event, in one transaction.

        The study joins ``collection``. ``writable`` (None: unrestricted) are the collections
        the sender may write: an existing study outside all of them is refused, so a writer
        cannot pull another collection's study into its own.
        """
        from archive.catalog.attributes import SERIES_ATTRIBUTES, STUDY_ATTRIBUTES, EXCLUDED_FROM_ROWS

        ds = new.dataset
        cols = {lvl: {k.column: column_value(ds, k) for k in KEYS.values() if k.level == lvl} for lvl in LEVELS}
        cols["study"].pop("modalities_in_study")
        study_json = _subset(new.header_json, STUDY_ATTRIBUTES)
        series_json = _subset(new.header_json, SERIES_ATTRIBUTES)
        # keywords from the tags alone: iterating ``ds`` would make pydicom parse every element
        rest = {kw for kw in map(keyword_for_tag, ds.keys()) if kw} - STUDY_ATTRIBUTES - SERIES_ATTRIBUTES
        instance_json = _subset(new.header_json, rest - EXCLUDED_FROM_ROWS)
        header = zlib.compress(json.dumps(new.header_json, separators=(",", ":")).encode(), 3)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM instance WHERE sop_instance_uid=?",
                          (ds.SOPInstanceUID,)).fetchone():
                raise DuplicateInstance("an instance with this SOP Instance UID is already stored")
            db.execute("INSERT OR IGNORE INTO collection(name) VALUES (?)", (collection,))
            p = cols["patient"]
            db.execute("INSERT OR IGNORE INTO patient(patient_id, issuer_of_patient_id, patient_name, "
                       "patient_birth_date, patient_sex) VALUES (?,?,?,?,?)",
                       (p["patient_id"] or "", p["issuer_of_patient_id"] or "", p["patient_name"],
                        p["patient_birth_date"], p["patient_sex"]))
            patient_fk = db.execute("SELECT pk FROM patient WHERE patient_id=? AND issuer_of_patient_id=?",
                                    (p["patient_id"] or "", p["issuer_of_patient_id"] or "")).fetchone()[0]
            study_fk = self._upsert(db, "study", "study_instance_uid", cols["study"],
                                    {"patient_fk": patient_fk, "collection": collection,
                                     "attrs": json.dumps(study_json)})
            if writable is not None:
                held = {r[0] for r in db.execute("SELECT collection FROM study_collection WHERE study_fk=?",
                                                 (study_fk,))}
                if held and not held & writable:
                    raise NotAuthorized("the study is held in collections this sender may not write")
            db.execute("INSERT OR IGNORE INTO study_collection(study_fk, collection) VALUES (?,?)",
                       (study_fk, collection))
            series_fk = self._upsert(db, "series", "series_instance_uid", cols["series"],
                                     {"study_fk": study_fk, "attrs": json.dumps(series_json)})
            row = dict(cols["instance"], series_fk=series_fk, transfer_syntax_uid=new.transfer_syntax_uid,
                       storage_id=new.storage_id, size=new.size, sha256=new.sha256,
                       frame_layout=new.frame_layout, frame_index=new.frame_index,
                       attrs=json.dumps(instance_json), header=header, created=time.time())
            names = ",".join(row)
            db.execute(f"INSERT INTO instance({names}) VALUES ({','.join('?' * len(row))})", list(row.values()))
            db.execute("INSERT INTO outbox(event, study_uid, series_uid, sop_instance_uid, created_at) "
                       "VALUES ('stored',?,?,?,?)",
                       (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, time.time()))

    @staticmethod
    def _upsert(db: sqlite3.Connection, table: str, uid_col: str, cols: dict, extra: dict) -> int:
        row = db.execute(f"SELECT pk FROM {table} WHERE {uid_col}=?", (cols[uid_col],)).fetchone()
        if row:
            return row[0]
        values = dict(cols, **extra)
        cur = db.execute(f"INSERT INTO {table}({','.join(values)}) VALUES ({','.join('?' * len(values))})",
                         list(values.values()))
        return cur.lastrowid

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
               principal: Principal) -> list[InstanceRecord]:
        """Remove rows (and now-empty parents); returns the removed instances (their bytes go after commit).

        Only what ``principal`` may delete; what it may not even read is "not found".
        """
        records = self.instances(study_uid, series_uid, sop_uid, principal=principal, role="delete")
        if not records and self.instances(study_uid, series_uid, sop_uid, principal=principal):
            raise NotAuthorized("deleting here needs the delete role on the study's collection")
        if not records:
            raise NotFound("no such study, series or instance")
        with self.transaction() as db:
            for r in records:
                db.execute("DELETE FROM instance WHERE sop_instance_uid=?", (r.sop_instance_uid,))
                db.execute("INSERT INTO outbox(event, study_uid, series_uid, sop_instance_uid, created_at) "
                           "VALUES ('deleted',?,?,?,?)", (r.study_uid, r.series_uid, r.sop_instance_uid, time.time()))
            db.execute("DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM instance i WHERE i.series_fk=series.pk)")
            db.execute("DELETE FROM study_collection WHERE study_fk IN (SELECT pk FROM study WHERE NOT EXISTS "
                       "(SELECT 1 FROM series s WHERE s.study_fk=study.pk))")
            db.execute("DELETE FROM study WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.study_fk=study.pk)")
            db.execute("DELETE FROM patient WHERE NOT EXISTS (SELECT 1 FROM study s WHERE s.patient_fk=patient.pk)")
        return records

    # --- reads ------------------------------------------------------------------

    _INSTANCE_SELECT = (
        "SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, i.sop_class_uid, "
        "i.transfer_syntax_uid, i.storage_id, i.size, i.sha256, i.number_of_frames, i.frame_layout, "
        "i.rows, i.columns, i.concatenation_uid, i.in_concatenation_number, "
        "i.concatenation_frame_offset FROM instance i JOIN series se ON i.series_fk=se.pk "
        "JOIN study st ON se.study_fk=st.pk ")

    def instance(self, sop_uid: str, *, principal: Principal) -> InstanceRecord | None:
        """The instance, or None when it is absent or outside what ``principal`` may read."""
        cond, params = scope(principal)
        row = self._db().execute(self._INSTANCE_SELECT + f"WHERE i.sop_instance_uid=? AND {cond}",
                                 (sop_uid, *params)).fetchone()
        return InstanceRecord(*row) if row else None

    def frame_index(self, storage_id: str) -> bytes | None:
        """The packed frame index of a stored file: read apart from ``instance`` because it
        grows with the frame count (hundreds of KB for a large level) and is cached unpacked."""
        row = self._db().execute("SELECT frame_index FROM instance WHERE storage_id=?", (storage_id,)).fetchone()
        return row[0] if row else None

    def concatenation(self, concatenation_uid: str) -> list[InstanceRecord]:
        """The parts of a concatenation, in order."""
        return [InstanceRecord(*r) for r in self._db().execute(
            self._INSTANCE_SELECT + "WHERE i.concatenation_uid=? ORDER BY i.in_concatenation_number",
            (concatenation_uid,))]

    def instances(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
                  principal: Principal, role: str = "read") -> list[InstanceRecord]:
        cond, params = scope(principal, role)
        sql, params = self._INSTANCE_SELECT + f"WHERE st.study_instance_uid=? AND {cond}", [study_uid, *params]
        if series_uid:
            sql += " AND se.series_instance_uid=?"
            params.append(series_uid)
        if sop_uid:
            sql += " AND i.sop_instance_uid=?"
            params.append(sop_uid)
        sql += " ORDER BY se.pk, i.instance_number, i.pk"
        return [InstanceRecord(*r) for r in self._db().execute(sql, params)]

    def header_json(self, sop_uid: str) -> str | None:
        """The stored DICOM JSON of an instance's header, as compact text."""
        row = self._db().execute("SELECT header FROM instance WHERE sop_instance_uid=?", (sop_uid,)).fetchone()
        return zlib.decompress(row[0]).decode() if row else None

    def headers(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
                principal: Principal) -> Iterator[tuple[InstanceRecord, str]]:
        for r in self.instances(study_uid, series_uid, sop_uid, principal=principal):
            text = self.header_json(r.sop_instance_uid)
            if text is not None:
                yield r, text

    def search(self, query: Query, study_uid: str | None = None, series_uid: str | None = None, *,
               principal: Principal) -> list[dict[str, Any]]:
        """QIDO / C-FIND: one merged DICOM JSON dict per matching row, in a stable order.

        Only studies ``principal`` may read exist for the query (and for its paging).
        """
        level = query.level
        readable = principal.collections("read")
        joins = "FROM study st JOIN patient p ON st.patient_fk=p.pk "
        study_order = "st.pk"
        if readable is not None and len(readable) == 1:
            # One collection (the common grant): walk its study rows in order, so a page of
            # a small collection costs no more than one of the whole archive.
            joins = "FROM study_collection sc JOIN study st ON st.pk=sc.study_fk JOIN patient p ON st.patient_fk=p.pk "
            conds, params = ["sc.collection=?"], [next(iter(readable))]
            study_order = "sc.study_fk"
        else:
            cond, params = scope(principal, listing=True)
            conds = [] if cond == "1" else [cond]
        if study_uid:
            conds.append("st.study_instance_uid=?")
            params.append(study_uid)
        if series_uid:
            conds.append("se.series_instance_uid=?")
            params.append(series_uid)
        for m in query.matches:
            sql, p = match_sql(m, query.fuzzy)
            conds.append(sql)
            params += p
        select = ["st.attrs AS study_attrs", "st.study_instance_uid",
                  "(SELECT count(*) FROM series x WHERE x.study_fk=st.pk) AS n_series",
                  "(SELECT count(*) FROM series x JOIN instance y ON y.series_fk=x.pk WHERE x.study_fk=st.pk) AS n_study_instances",
                  "(SELECT group_concat(DISTINCT x.modality) FROM series x WHERE x.study_fk=st.pk) AS modalities"]
        order = study_order
        if level in ("series", "instance"):
            joins += "JOIN series se ON se.study_fk=st.pk "
            select += ["se.attrs AS series_attrs", "se.series_instance_uid",
                       "(SELECT count(*) FROM instance y WHERE y.series_fk=se.pk) AS n_series_instances"]
            order = "se.pk"
        elif series_uid or any(m.key.level in ("series", "instance") for m in query.matches):
            raise AssertionError("series keys in a study query are rejected by parse_qido")
        if level == "instance":
            joins += "JOIN instance i ON i.series_fk=se.pk "
            select += ["i.attrs AS instance_attrs", "i.sop_instance_uid"]
            order = "se.pk, i.instance_number, i.pk"
        sql = f"SELECT {', '.join(select)} {joins}"
        if conds:
            sql += "WHERE " + " AND ".join(conds)
        sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
        params += [query.limit if query.limit is not None else -1, query.offset]
        return [self._result(level, row) for row in self._db().execute(sql, params)]

    @staticmethod
    def _result(level: str, row: sqlite3.Row) -> dict[str, Any]:
        out = json.loads(row["study_attrs"])
        out["00080061"] = {"vr": "CS", "Value": sorted((row["modalities"] or "").split(",")) if row["modalities"] else []}
        out["00201206"] = {"vr": "IS", "Value": [row["n_series"]]}
        out["00201208"] = {"vr": "IS", "Value": [row["n_study_instances"]]}
        out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        if level in ("series", "instance"):
            out.update(json.loads(row["series_attrs"]))
            out["00201209"] = {"vr": "IS", "Value": [row["n_series_instances"]]}
        if level == "instance":
            out.update(json.loads(row["instance_attrs"]))
        return out

    def study_collections(self, study_uid: str) -> list[str]:
        """Every collection the study belongs to."""
        return [r[0] for r in self._db().execute(
            "SELECT sc.collection FROM study_collection sc JOIN study st ON sc.study_fk=st.pk "
            "WHERE st.study_instance_uid=? ORDER BY sc.collection", (study_uid,))]

    def set_study_collection(self, study_uid: str, collection: str, member: bool = True) -> None:
        """Add the study to ``collection`` (or take it out; a study keeps at least one)."""
        with self.transaction() as db:
            row = db.execute("SELECT pk FROM study WHERE study_instance_uid=?", (study_uid,)).fetchone()
            if row is None:
                raise NotFound("no such study")
            if member:
                db.execute("INSERT OR IGNORE INTO collection(name) VALUES (?)", (collection,))
                db.execute("INSERT OR IGNORE INTO study_collection(study_fk, collection) VALUES (?,?)",
                           (row[0], collection))
            else:
                left = db.execute("SELECT count(*) FROM study_collection WHERE study_fk=? AND collection<>?",
                                  (row[0], collection)).fetchone()[0]
                if not left:
                    raise NotAuthorized("a study must stay in at least one collection")
                db.execute("DELETE FROM study_collection WHERE study_fk=? AND collection=?", (row[0], collection))
            for (series_uid,) in db.execute("SELECT series_instance_uid FROM series WHERE study_fk=?", (row[0],)):
                db.execute("INSERT INTO outbox(event, study_uid, series_uid, sop_instance_uid, created_at) "
                           "VALUES ('stored',?,?,NULL,?)", (study_uid, series_uid, time.time()))

    def series_study(self, series_uid: str, *, principal: Principal) -> str | None:
        """The series' Study Instance UID when ``principal`` may read it, else None."""
        cond, params = scope(principal)
        row = self._db().execute("SELECT st.study_instance_uid FROM series se JOIN study st ON se.study_fk=st.pk "
                                 f"WHERE se.series_instance_uid=? AND {cond}", (series_uid, *params)).fetchone()
        return row[0] if row else None

    def series_collections(self, series_uid: str) -> list[str]:
        """Every collection of the series' study (the search index filters on these)."""
        return [r[0] for r in self._db().execute(
            "SELECT sc.collection FROM study_collection sc JOIN series se ON se.study_fk=sc.study_fk "
            "WHERE se.series_instance_uid=? ORDER BY sc.collection", (series_uid,))]

    def series_collection(self, series_uid: str) -> str | None:
        row = self._db().execute("SELECT st.collection FROM series se JOIN study st ON se.study_fk=st.pk "
                                 "WHERE se.series_instance_uid=?", (series_uid,)).fetchone()
        return row[0] if row else None

    def series_headers(self, series_uid: str) -> list[Dataset]:
        """Headers of a series' instances as Datasets (bulk values left out), for the indexer.

        Parsed headers are cached by SOP Instance UID (a stored instance never changes):
        a series that grows one instance at a time is then parsed once, not once per event.
        """
        rows = self._db().execute("SELECT i.sop_instance_uid, i.storage_id FROM instance i JOIN series se "
                                  "ON i.series_fk=se.pk WHERE se.series_instance_uid=? ORDER BY i.pk",
                                  (series_uid,)).fetchall()
        out = []
        for sop, storage_id in rows:
            ds = self._parsed.get(sop)
            if ds is None:
                ds = self._stored_header(sop, storage_id)
                if ds is None:
                    continue  # deleted meanwhile
                self._parsed[sop] = ds
                while len(self._parsed) > HEADER_CACHE:
                    self._parsed.popitem(last=False)
            else:
                self._parsed.move_to_end(sop)
            out.append(ds)
        return out

    def _stored_header(self, sop_uid: str, storage_id: str) -> Dataset | None:
        """One instance's header: read lazily from its stored file when the catalog knows where
        files are (pydicom converts only the elements used, and leaves values over 4 KB on disk
        until asked for), else parsed from the catalog's DICOM JSON (about 5x the CPU)."""
        if self._stored_file is not None:
            try:
                ds = dcmread(self._stored_file(storage_id), stop_before_pixels=True, defer_size="4 KB")
            except (OSError, InvalidDicomError, EOFError, ValueError):
                ds = None  # removed or replaced meanwhile: the catalog's copy answers
            if ds is not None:
                self._share_sequences(ds)
                return ds
        row = self._db().execute("SELECT header FROM instance WHERE sop_instance_uid=?", (sop_uid,)).fetchone()
        return Dataset.from_json(_without_bulk(json.loads(zlib.decompress(row[0])))) if row else None

    def _share_sequences(self, ds: Dataset) -> None:
        """Give ``ds`` the already parsed value of each small sequence whose bytes an earlier header had.

        The instances of a series mostly repeat the same descriptions (a specimen's
        preparation steps, optical paths): parsing those once per series instead of once
        per instance was most of the index worker's CPU per small instance. The headers
        are only read, so sharing the parsed items is safe.
        """
        encoding = (*ds.original_encoding, str(ds.original_character_set))
        for tag in list(ds.keys()):
            raw = ds.get_item(tag)
            if not isinstance(raw, RawDataElement) or raw.VR != "SQ" or raw.value is None \
                    or len(raw.value) > SHARED_SEQUENCE_BYTES:
                continue
            key = (int(tag), encoding, raw.value)
            parsed = self._sequences.get(key)
            if parsed is None:
                self._sequences[key] = ds[tag]
                while len(self._sequences) > SHARED_SEQUENCES:
                    self._sequences.popitem(last=False)
            else:
                self._sequences.move_to_end(key)
                ds._dict[tag] = parsed

    def iter_series_uids(self) -> Iterator[str]:
        for (uid,) in self._db().execute("SELECT series_instance_uid FROM series ORDER BY pk").fetchall():
            yield uid

    def outbox_after(self, seq: int, limit: int = 500) -> list[OutboxEvent]:
        rows = self._db().execute("SELECT seq, event, study_uid, series_uid, sop_instance_uid FROM outbox "
                                  "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [OutboxEvent(*r) for r in rows]

    def outbox_pending(self, after_seq: int) -> tuple[int, float | None]:
        """(events after ``after_seq``, created_at of the oldest of them): the index's lag, in O(1)."""
        db = self._db()
        last = db.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        row = db.execute("SELECT created_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (after_seq,)).fetchone()
        return max(0, last - after_seq), (row[0] if row else None)

    def ping(self) -> None:
        """One read; raises sqlite3.Error when the catalog cannot be read."""
        self._db().execute("SELECT 1 FROM instance LIMIT 1").fetchall()

    def storage_ids(self) -> dict[str, str]:
        """storage id -> SOP Instance UID, for ``verify``."""
        return {r[0]: r[1] for r in self._db().execute("SELECT storage_id, sop_instance_uid FROM instance")}

    def replace_storage(self, sop_uid: str, old_storage_id: str, new_storage_id: str) -> bool:
        """Point an instance at a fresh copy of its identical bytes; False when it no longer names ``old``."""
        with self.transaction() as db:
            cur = db.execute("UPDATE instance SET storage_id=? WHERE sop_instance_uid=? AND storage_id=?",
                             (new_storage_id, sop_uid, old_storage_id))
        return cur.rowcount == 1

    def remove_instance_row(self, sop_uid: str) -> None:
        """Drop one instance row whose bytes are gone (``verify --repair``)."""
        record = self.instance(sop_uid, principal=SYSTEM)
        if record is not None:
            self.delete(record.study_uid, record.series_uid, sop_uid, principal=SYSTEM)

"""The catalog: the source of truth for what the archive holds, on either backend.

Patient / study / series / instance rows carry the matchable attributes as
columns and the rest as DICOM JSON; each instance row carries its frame index
as one packed array and its header as compressed DICOM JSON, so frames and
metadata are served without parsing the stored file. Every change writes an
outbox row in the same transaction, for the indexer.

The SQL here runs on SQLite (the embedded default, ``sqlite.py``) and PostgreSQL (a
catalog several nodes share, ``postgresql.py``) alike; where they differ the backend's
dialect says so (``database.py``); the schema is ``schema.py``'s numbered migrations.
UID uniqueness is the database's: two nodes storing the same instance at once end
with one row and one ``DuplicateInstance``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from archive import dicomjson
from archive.auth.access import SYSTEM, Principal
from archive.catalog import tally
from archive.catalog.attributes import KEYS, LEVELS, Key
from archive.catalog.database import NO_LIMIT, Database, is_url, open_database
from archive.catalog.query import Query, match_sql
from archive.catalog.schema import migrate
from archive.catalog.work import STORAGE_REMOVAL, WorkQueue, node_id
from archive.errors import Busy, DuplicateInstance, NotAuthorized, NotFound, SeriesOfAnotherStudy

HEADER_CACHE = 2048
#: (key, its tag as DICOM JSON names it, its tag), in the order of KEYS.
_KEY_TAGS = tuple((k, f"{tag_for_keyword(k.keyword):08X}", tag_for_keyword(k.keyword)) for k in KEYS.values())
SHARED_SEQUENCES = 512
SHARED_SEQUENCE_BYTES = 64 * 1024


class InstanceRecord(NamedTuple):
    """What serving an instance needs, from one row.

    A NamedTuple, immutable as the frozen dataclass it was, because every frame request makes
    one: the frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field) took ~7 us,
    a tuple's ~1 us."""

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
    seq: int  # the event's position in commit order (outbox.commit_seq), what a consumer's cursor saves
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


_UNSETTLED = object()
_INTEGER_VRS = frozenset({"IS", "US", "UL"})


def _json_value(entry: dict[str, Any], key: Key) -> Any:
    """``column_value`` read from the element's DICOM JSON, or _UNSETTLED when the JSON alone does
    not settle it the same way (no value, a person name, several values of a single-valued key)."""
    values = entry.get("Value")
    if not values or key.vr == "PN":
        return _UNSETTLED
    if key.vr in _INTEGER_VRS:
        return values[0] if len(values) == 1 and type(values[0]) is int else _UNSETTLED
    if not all(type(v) is str or type(v) is UID for v in values):  # a UID: a converted element's own value
        return _UNSETTLED
    if len(values) > 1:
        return "\\".join(values) if key.multi else _UNSETTLED
    text = str(values[0])  # a plain str, as column_value's str(value)
    if text == "":
        return None
    return text.replace(":", "") if key.vr == "TM" else text


def column_values(ds: Dataset, header_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``column_value`` of every key, by level, taken from ``header_json`` (the DICOM JSON of ``ds``)
    where it settles the value: asking ``ds`` converts its raw elements, ~8 us each."""
    out: dict[str, dict[str, Any]] = {level: {} for level in LEVELS}
    for key, tag, number in _KEY_TAGS:
        entry = header_json.get(tag)
        value = None if entry is None else _json_value(entry, key)
        if value is _UNSETTLED and _emptied(ds, number):
            value = None  # what column_value answers for None or ""
        out[key.level][key.column] = column_value(ds, key) if value is _UNSETTLED else value
    return out


def _emptied(ds: Dataset, tag: int) -> bool:
    """Whether ``ds`` holds the element as a converted one whose value is None or "" (what
    de-identification leaves of a type 2 attribute): its DICOM JSON has no value to read."""
    elem = ds._dict.get(tag)
    return type(elem) is DataElement and (elem.value is None or elem.value == "")


def _subset(header_json: dict[str, Any], tags: frozenset[str] | set[str]) -> dict[str, Any]:
    """The elements of ``header_json`` whose tags (``00100010``) are in ``tags``, in its order."""
    return {t: v for t, v in header_json.items() if t in tags}


@functools.cache
def _level_tags() -> tuple[frozenset[str], frozenset[str]]:
    """The tags of the study and of the series attributes: made once, not per stored instance."""
    from archive.catalog.attributes import SERIES_ATTRIBUTES, STUDY_ATTRIBUTES, tag_hex

    return frozenset(map(tag_hex, STUDY_ATTRIBUTES)), frozenset(map(tag_hex, SERIES_ATTRIBUTES))


@functools.lru_cache(maxsize=8192)
def _instance_tag(tag: int) -> str | None:
    """The tag (``00100010``) under which an element of the data set goes into the instance row's
    attributes, or None: no keyword (private), a study or series attribute, or excluded from rows.
    The element's own tag, not its keyword's: a repeating-group keyword (OverlayRows, 60xx) maps
    back to no tag. Cached by tag, which names no value."""
    from archive.catalog.attributes import EXCLUDED_FROM_ROWS, SERIES_ATTRIBUTES, STUDY_ATTRIBUTES

    keyword = keyword_for_tag(tag)
    if not keyword or keyword in STUDY_ATTRIBUTES or keyword in SERIES_ATTRIBUTES or keyword in EXCLUDED_FROM_ROWS:
        return None
    return f"{tag:08X}"


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


#: The condition ``scope`` gives a principal who may see everything.
UNRESTRICTED = "1=1"


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
        return UNRESTRICTED, ()
    if not collections:
        return "1=0", ()
    names = tuple(sorted(collections))
    marks = ",".join("?" * len(names))
    if listing:
        return f"{study}.pk IN (SELECT sc.study_fk FROM study_collection sc WHERE sc.collection IN ({marks}))", names
    return (f"EXISTS (SELECT 1 FROM study_collection sc WHERE sc.study_fk={study}.pk AND sc.collection IN ({marks}))",
            names)


#: How often a write that met a concurrent one's change runs (Catalog._retried).
_ATTEMPTS = 6


class _Replaced(Exception):
    """A row an instance was being added to (its study, or the patient or series row another node
    had just inserted) was deleted meanwhile: the write runs again."""


def _found(row) -> int:
    """The pk a SELECT after ``INSERT ... ON CONFLICT DO NOTHING`` found. On PostgreSQL (READ
    COMMITTED) the row that conflicted can be deleted by another node between the two statements
    (a study delete removing its now-empty patient): then the whole write runs again."""
    if row is None:
        raise _Replaced
    return row[0]


class Catalog:
    def __init__(self, location: Path | str, stored_file: Callable[[str], Path] | None = None, *,
                 pool_size: int = 8, pool_timeout: float = 5.0):
        """``location``: the SQLite file, or a ``postgresql://`` URL (``pool_*``: its connections).
        ``stored_file``: storage id -> path of the stored file; when given, ``series_headers``
        reads headers from the stored files (faster than from the catalog's DICOM JSON)."""
        self.db: Database = open_database(location, pool_size=pool_size, pool_timeout=pool_timeout)
        #: The SQLite file (None for a server database).
        self.path = None if is_url(location) else Path(location)
        self._stored_file = stored_file
        self._parsed: OrderedDict[str, Dataset] = OrderedDict()  # see series_headers
        self._sequences: OrderedDict[tuple, DataElement] = OrderedDict()  # see _share_sequences
        #: This process, as it holds work items (archive/catalog/work.py) it adds.
        self.node = node_id()
        self._deep_pages = 0  # deep QIDO pages asked of this catalog: now and then the tally is compacted
        migrate(self.db)

    @classmethod
    def open(cls, settings, stored_file: Callable[[str], Path] | None = None) -> "Catalog":
        """The catalog ``settings`` name (``[catalog] url``, else the data directory's SQLite file)."""
        return cls(settings.catalog_location, stored_file, pool_size=settings.catalog.pool_size,
                   pool_timeout=settings.catalog.pool_timeout)

    @property
    def shared(self) -> bool:
        """Whether other nodes may share this catalog (a server database, not a file of this node)."""
        return self.path is None

    def _db(self) -> Database:
        return self.db

    def transaction(self):
        return self.db.transaction()

    def close(self) -> None:
        self.db.close()

    # --- writes ---------------------------------------------------------------

    def add_instance(self, new: NewInstance, collection: str, writable: frozenset[str] | None = None) -> None:
        """Insert the instance and its parents and an outbox event, in one transaction (a result
        also gets the work item that has it linked to its slides: archive/results/links.py).

        The study joins ``collection``. ``writable`` (None: unrestricted) are the collections
        the sender may write: an existing study outside all of them is refused, so a writer
        cannot pull another collection's study into its own.
        """
        ds = new.dataset
        cols = column_values(ds, new.header_json)
        cols["study"].pop("modalities_in_study")
        study_tags, series_tags = _level_tags()
        study_json = _subset(new.header_json, study_tags)
        series_json = _subset(new.header_json, series_tags)
        # from the tags alone: iterating ``ds`` would make pydicom parse every element; as plain
        # ints, which the cache looks up in C (a BaseTag key compares in Python, ~70 per instance)
        instance_json = _subset(new.header_json, set(map(_instance_tag, map(int, ds._dict))))
        header = zlib.compress(dicomjson.encode(new.header_json, compact=True).encode(), 3)
        study_uid, series_uid = cols["study"]["study_instance_uid"], cols["series"]["series_instance_uid"]
        sop_uid = cols["instance"]["sop_instance_uid"]

        def insert(db) -> None:
            if db.execute("SELECT 1 FROM instance WHERE sop_instance_uid=?", (sop_uid,)).fetchone():
                raise DuplicateInstance("an instance with this SOP Instance UID is already stored")
            study_fk = self._pk(db, "study", "study_instance_uid", study_uid)
            if study_fk is None:  # a new study names its collection: that row first (a foreign key)
                db.execute("INSERT INTO collection(name) VALUES (?) ON CONFLICT DO NOTHING", (collection,))
            patient_fk = self._patient(db, cols["patient"])
            if study_fk is None:
                study_fk, _ = self._upsert(db, "study", "study_instance_uid", cols["study"],
                                           lambda: {"patient_fk": patient_fk, "collection": collection,
                                                    "attrs": dicomjson.encode(study_json, compact=False)})
            held = {r[0] for r in db.execute("SELECT collection FROM study_collection WHERE study_fk=?",
                                             (study_fk,))}
            if writable is not None and held and not held & writable:
                raise NotAuthorized("the study is held in collections this sender may not write")
            if collection not in held:
                db.execute("INSERT INTO collection(name) VALUES (?) ON CONFLICT DO NOTHING", (collection,))
                db.execute("INSERT INTO study_collection(study_fk, collection) VALUES (?,?) ON CONFLICT DO NOTHING",
                           (study_fk, collection))
            series_fk, new_series = self._upsert(db, "series", "series_instance_uid", cols["series"],
                                                 lambda: {"study_fk": study_fk,
                                                          "attrs": dicomjson.encode(series_json, compact=False)})
            row = dict(cols["instance"], series_fk=series_fk, transfer_syntax_uid=new.transfer_syntax_uid,
                       storage_id=new.storage_id, size=new.size, sha256=new.sha256,
                       frame_layout=new.frame_layout, frame_index=new.frame_index,
                       attrs=dicomjson.encode(instance_json, compact=False), header=header, created=time.time())
            names = ",".join(row)
            try:
                db.execute(f"INSERT INTO instance({names}) VALUES ({','.join('?' * len(row))})", list(row.values()))
            except self.db.dialect.unique_violation:  # another node stored it meanwhile
                raise DuplicateInstance("an instance with this SOP Instance UID is already stored") from None
            from archive.results.links import queue_link

            queue_link(db, ds, self.node)
            if new_series:
                self._recount(db, study_fk, series_fk)
            elif not self._count_one_more(db, study_fk, series_fk):  # rolled back with all the above
                if db.execute("SELECT 1 FROM study WHERE pk=?", (study_fk,)).fetchone() is None:
                    raise _Replaced  # deleted (and stored again) since it was looked up
                raise SeriesOfAnotherStudy("the Series Instance UID belongs to a series of another study")
            db.execute("INSERT INTO outbox(event, study_uid, series_uid, sop_instance_uid, created_at) "
                       "VALUES ('stored',?,?,?,?)", (study_uid, series_uid, sop_uid, time.time()))

        self._retried(insert)

    @staticmethod
    def _pk(db, table: str, uid_col: str, uid: str) -> int | None:
        row = db.execute(f"SELECT pk FROM {table} WHERE {uid_col}=?", (uid,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _patient(db, p: dict[str, Any]) -> int:
        """The patient row's pk, inserted first when absent (its attributes are those of the first
        instance stored for it; a concurrent insert by another node wins)."""
        key = (p["patient_id"] or "", p["issuer_of_patient_id"] or "")
        select = "SELECT pk FROM patient WHERE patient_id=? AND issuer_of_patient_id=?"
        row = db.execute(select, key).fetchone()
        if row is None:
            row = db.execute("INSERT INTO patient(patient_id, issuer_of_patient_id, patient_name, "
                             "patient_birth_date, patient_sex) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING pk",
                             (*key, p["patient_name"], p["patient_birth_date"], p["patient_sex"])).fetchone()
            row = row or db.execute(select, key).fetchone()
        return _found(row)

    @staticmethod
    def _upsert(db, table: str, uid_col: str, cols: dict, extra: Callable[[], dict]) -> tuple[int, bool]:
        """(the row's pk, whether this inserted it), inserting it first when absent with ``cols`` and
        ``extra()`` (a concurrent insert by another node wins)."""
        select = f"SELECT pk FROM {table} WHERE {uid_col}=?"
        row = db.execute(select, (cols[uid_col],)).fetchone()
        if row:
            return row[0], False
        values = dict(cols, **extra())
        row = db.execute(f"INSERT INTO {table}({','.join(values)}) VALUES ({','.join('?' * len(values))}) "
                         f"ON CONFLICT ({uid_col}) DO NOTHING RETURNING pk", list(values.values())).fetchone()
        return (row[0], True) if row else (_found(db.execute(select, (cols[uid_col],)).fetchone()), False)

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
               principal: Principal, removal_delay: float | None = None) -> list[InstanceRecord]:
        """Remove rows (and now-empty parents); returns the removed instances (their bytes go after commit).

        Only what ``principal`` may delete; what it may not even read is "not found". With
        ``removal_delay``, the same transaction records that their bytes are to be removed that many
        seconds later (archive/storage/removals.py); without, the caller removes them.
        """
        records = self.instances(study_uid, series_uid, sop_uid, principal=principal, role="delete")
        if not records and principal.collections("delete") is not None \
                and self.instances(study_uid, series_uid, sop_uid, principal=principal):
            raise NotAuthorized("deleting here needs the delete role on the study's collection")
        if not records:
            raise NotFound("no such study, series or instance")

        def remove(db) -> None:
            series = set()
            for r in records:
                row = db.execute("DELETE FROM instance WHERE sop_instance_uid=? RETURNING series_fk",
                                 (r.sop_instance_uid,)).fetchone()
                if row:
                    series.add(row[0])
                db.execute("INSERT INTO outbox(event, study_uid, series_uid, sop_instance_uid, created_at) "
                           "VALUES ('deleted',?,?,?,?)", (r.study_uid, r.series_uid, r.sop_instance_uid, time.time()))
            self._remove_empty(db, series)
            if removal_delay is not None:
                queue = WorkQueue(db)
                for r in records:
                    queue.add(STORAGE_REMOVAL, {"storage_id": r.storage_id}, delay=removal_delay)

        self._retried(remove)
        return records

    def _retried(self, work: Callable[[Any], None]) -> None:
        """``work(db)`` in one transaction, run again when a concurrent one (another HTTP worker or
        node on PostgreSQL, READ COMMITTED) changed rows it relied on: a study deleted while an
        instance joins it, an instance joining a series being removed, a deadlock between the two.
        The next run sees what the other committed. SQLite runs one writer at a time."""
        for attempt in range(_ATTEMPTS):
            try:
                with self.transaction() as db:
                    work(db)
                return
            except (*self.db.dialect.conflicts, _Replaced):
                time.sleep(random.uniform(0, 0.02 * 2 ** attempt))  # apart, so they do not meet again
        raise Busy("the study kept changing under this request (concurrent stores and deletes); try again")

    @staticmethod
    def _count_one_more(db, study_fk: int, series_fk: int) -> bool:
        """Add the instance just inserted into an existing series to its counts (what ``_recount``
        would find, without counting the series again); False when the series is not the study's.
        The study row first, as ``_recount`` locks it: writers to one study take turns in the same
        order."""
        if db.execute("UPDATE study SET instance_count=instance_count+1 WHERE pk=? AND EXISTS "
                      "(SELECT 1 FROM series s WHERE s.pk=? AND s.study_fk=study.pk)",
                      (study_fk, series_fk)).rowcount != 1:
            return False
        db.execute("UPDATE series SET instance_count=instance_count+1 WHERE pk=?", (series_fk,))
        return True

    def _recount(self, db, study_fk: int, series_fk: int | None = None) -> None:
        """The counts and modalities QIDO returns, kept on the study and series rows: a search then
        reads them instead of counting the instances of every study it lists."""
        # Nodes adding to one study at once take turns here; each count then sees the others' rows.
        db.execute(f"SELECT pk FROM study WHERE pk=?{self.db.dialect.lock_rows}", (study_fk,))
        if series_fk is not None:
            db.execute("UPDATE series SET instance_count=(SELECT count(*) FROM instance i WHERE i.series_fk=?) "
                       "WHERE pk=?", (series_fk, series_fk))
        modalities = self.db.dialect.group_concat("s.modality", distinct=True)
        db.execute("UPDATE study SET series_count=(SELECT count(*) FROM series s WHERE s.study_fk=?), "
                   "instance_count=(SELECT coalesce(sum(s.instance_count), 0) FROM series s WHERE s.study_fk=?), "
                   f"modalities=(SELECT {modalities} FROM series s WHERE s.study_fk=?) WHERE pk=?",
                   (study_fk, study_fk, study_fk, study_fk))

    def _remove_empty(self, db, series_pks: set[int]) -> None:
        """Drop the series among ``series_pks`` no instance references any more, then their empty
        studies and patients (only these: no scan of the whole catalog per delete)."""
        for pk in sorted(series_pks):
            row = db.execute("DELETE FROM series WHERE pk=? AND NOT EXISTS "
                             "(SELECT 1 FROM instance i WHERE i.series_fk=series.pk) RETURNING study_fk",
                             (pk,)).fetchone()
            if row is None:  # the series keeps instances: its counts (and its study's) drop
                study = db.execute("SELECT study_fk FROM series WHERE pk=?", (pk,)).fetchone()
                if study is not None:
                    self._recount(db, study[0], pk)
                continue
            study_fk = row[0]
            if db.execute("SELECT 1 FROM series WHERE study_fk=? LIMIT 1", (study_fk,)).fetchone():
                self._recount(db, study_fk)
                continue
            db.execute("DELETE FROM study_collection WHERE study_fk=?", (study_fk,))
            row = db.execute("DELETE FROM study WHERE pk=? RETURNING patient_fk", (study_fk,)).fetchone()
            if row:
                db.execute("DELETE FROM patient WHERE pk=? AND NOT EXISTS "
                           "(SELECT 1 FROM study s WHERE s.patient_fk=patient.pk)", (row[0],))

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
        # the patient row only when a patient key is matched (an engine walks each join for every
        # row a deep page skips)
        patient = "JOIN patient p ON st.patient_fk=p.pk " if any(m.key.level == "patient" for m in query.matches) else ""
        joins = "FROM study st " + patient
        study_order = "st.pk"
        if readable is not None and len(readable) == 1:
            # One collection (the common grant): walk its study rows in order, so a page of
            # a small collection costs no more than one of the whole archive.
            joins = "FROM study_collection sc JOIN study st ON st.pk=sc.study_fk " + patient
            conds, params = ["sc.collection=?"], [next(iter(readable))]
            study_order = "sc.study_fk"
        else:
            cond, params = scope(principal, listing=True)
            conds = [] if cond == UNRESTRICTED else [cond]
        if study_uid:
            conds.append("st.study_instance_uid=?")
            params.append(study_uid)
        if series_uid:
            conds.append("se.series_instance_uid=?")
            params.append(series_uid)
        dialect = self.db.dialect
        for m in query.matches:
            sql, p = match_sql(m, query.fuzzy, dialect)
            conds.append(sql)
            params += p
        # The page's keys first, then the attributes and counts of those rows only: an engine
        # that computes the select list before applying OFFSET (PostgreSQL) would otherwise count
        # the series and instances of every row it skips.
        keys, outer = ["st.pk AS st_pk"], "JOIN study st ON st.pk=page.st_pk "
        order, outer_order = study_order, "page.st_pk"
        select = ["st.attrs AS study_attrs", "st.study_instance_uid",
                  "st.series_count AS n_series", "st.instance_count AS n_study_instances", "st.modalities"]
        if level in ("series", "instance"):
            joins += "JOIN series se ON se.study_fk=st.pk "
            keys.append("se.pk AS se_pk")
            outer += "JOIN series se ON se.pk=page.se_pk "
            select += ["se.attrs AS series_attrs", "se.series_instance_uid",
                       "se.instance_count AS n_series_instances"]
            order, outer_order = "se.pk", "page.se_pk"
        elif series_uid or any(m.key.level in ("series", "instance") for m in query.matches):
            raise AssertionError("series keys in a study query are rejected by parse_qido")
        if level == "instance":
            joins += "JOIN instance i ON i.series_fk=se.pk "
            keys += ["i.pk AS i_pk", "i.instance_number AS i_number"]
            outer += "JOIN instance i ON i.pk=page.i_pk "
            select += ["i.attrs AS instance_attrs", "i.sop_instance_uid"]
            order, outer_order = "se.pk, i.instance_number, i.pk", "page.se_pk, page.i_number, page.i_pk"
        offset, start = "?", ""
        tally_of = self._tally_of(query, readable, study_uid or series_uid)
        if tally_of is not None:  # a deep page: start at the block of study keys holding its first row
            start, offset = tally.anchor_cte(), "coalesce((SELECT skip FROM anchor), 0)"
            conds.append(f"{study_order} >= (SELECT low FROM anchor)")
            params[:0] = [tally_of, query.offset, query.offset]
        page = f"SELECT {', '.join(keys)} {joins}"
        if conds:
            page += "WHERE " + " AND ".join(conds)
        page += f" ORDER BY {order} LIMIT ? OFFSET {offset}"
        params.append(query.limit if query.limit is not None else NO_LIMIT)
        if tally_of is None:
            params.append(query.offset)
        sql = f"{start}SELECT {', '.join(select)} FROM ({page}) page {outer}ORDER BY {outer_order}"
        return [self._result(level, row) for row in self._db().execute(sql, params)]

    def _tally_of(self, query: Query, readable: frozenset[str] | None, within: str | None) -> str | None:
        """The study tally a deep page can start from (tally.py): a study listing matching nothing,
        of every study or of one collection; None when the page is found by skipping rows."""
        if query.level != "study" or query.matches or within or query.offset < tally.MIN_OFFSET:
            return None
        if readable is not None and len(readable) != 1:
            return None  # studies of several collections: their tallies overlap
        collection = tally.EVERYONE if readable is None else next(iter(readable))
        self._deep_pages += 1
        if self._deep_pages % 64 == 1 and tally.needs_compaction(self.db, collection):
            tally.compact(self.db, collection)
        return collection

    @staticmethod
    def _result(level: str, row) -> dict[str, Any]:
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
                db.execute("INSERT INTO collection(name) VALUES (?) ON CONFLICT DO NOTHING", (collection,))
                db.execute("INSERT INTO study_collection(study_fk, collection) VALUES (?,?) ON CONFLICT DO NOTHING",
                           (row[0], collection))
            else:
                left = db.execute("SELECT count(*) FROM study_collection WHERE study_fk=? AND collection<>?",
                                  (row[0], collection)).fetchone()[0]
                if not left:
                    raise NotAuthorized("a study must stay in at least one collection")
                db.execute("DELETE FROM study_collection WHERE study_fk=? AND collection=?", (row[0], collection))
            for (series_uid,) in db.execute("SELECT series_instance_uid FROM series WHERE study_fk=?",
                                            (row[0],)).fetchall():
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

    def series_instances(self, series_uid: str, after_pk: int = 0) -> tuple[int, list[tuple[int, str, str]]]:
        """(the series' instance count, its instances with pk > ``after_pk`` as (pk, SOP Instance UID,
        storage id) in pk order), read in one statement so that both are of one snapshot: the index
        worker reads only a growing series' new instances and sees from the count when it missed one."""
        rows = self._db().execute("SELECT se.instance_count, i.pk, i.sop_instance_uid, i.storage_id FROM series se "
                                  "LEFT JOIN instance i ON i.series_fk=se.pk AND i.pk>? "
                                  "WHERE se.series_instance_uid=? ORDER BY i.pk", (after_pk, series_uid)).fetchall()
        if not rows:
            return 0, []
        return rows[0][0], [(pk, sop, storage_id) for _, pk, sop, storage_id in rows if pk is not None]

    def stored_path(self, storage_id: str) -> Path | None:
        """The local file of a stored instance, when the catalog reads headers from files."""
        return self._stored_file(storage_id) if self._stored_file is not None else None

    def instance_header(self, sop_uid: str, storage_id: str) -> Dataset | None:
        """One instance's header without bulk values, not cached (None when it is gone meanwhile)."""
        return self._stored_header(sop_uid, storage_id)

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
        """The events after position ``seq`` in commit order (``OutboxEvent.seq`` is that position).

        A consumer that saves the last position it read never skips an event: positions are
        given to committed events only (``_number_outbox``), so none can appear below it later.
        """
        self._number_outbox(limit)
        rows = self._db().execute("SELECT commit_seq, event, study_uid, series_uid, sop_instance_uid FROM outbox "
                                  "WHERE commit_seq > ? ORDER BY commit_seq LIMIT ?", (seq, limit)).fetchall()
        return [OutboxEvent(*r) for r in rows]

    def _number_outbox(self, limit: int) -> None:
        """Give up to ``limit`` committed, unnumbered events the next commit positions, in seq order.

        Under one lock for every node: each numbering transaction sees all events committed before
        it and commits its positions before the next starts, so positions grow in commit order.
        (On SQLite writers take turns anyway; the same statement then just copies seq's order.)
        """
        db = self._db()
        if db.execute("SELECT 1 FROM outbox WHERE commit_seq IS NULL LIMIT 1").fetchone() is None:
            return
        with db.transaction() as s:
            db.lock(s, "slidearchive outbox order")
            s.execute("WITH todo AS (SELECT seq, row_number() OVER (ORDER BY seq) AS n FROM outbox "
                      "WHERE commit_seq IS NULL ORDER BY seq LIMIT ?) "
                      "UPDATE outbox SET commit_seq = top.last + todo.n "
                      "FROM todo, (SELECT coalesce(max(commit_seq), 0) AS last FROM outbox) AS top "
                      "WHERE outbox.seq = todo.seq", (limit,))

    def outbox_pending(self, after_seq: int) -> tuple[int, float | None]:
        """(events after position ``after_seq``, created_at of the oldest of them): the index's lag,
        from two index lookups (positions are dense; the unnumbered are the few since the last read)."""
        db = self._db()
        last = db.execute("SELECT max(commit_seq) FROM outbox").fetchone()[0] or 0
        row = db.execute("SELECT created_at FROM outbox WHERE commit_seq > ? ORDER BY commit_seq LIMIT 1",
                         (after_seq,)).fetchone()
        waiting, oldest = db.execute("SELECT count(*), min(created_at) FROM outbox WHERE commit_seq IS NULL").fetchone()
        times = [t for t in (row[0] if row else None, oldest) if t is not None]
        return max(0, last - after_seq) + waiting, (min(times) if times else None)

    def shared_secret(self, name: str, size: int = 32) -> bytes:
        """A random secret every node of this catalog shares (made by whichever node asks first)."""
        import secrets

        self.db.execute("INSERT INTO secret(name, value, created) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                        (name, secrets.token_bytes(size), time.time()))
        return bytes(self.db.execute("SELECT value FROM secret WHERE name=?", (name,)).fetchone()[0])

    def adopt_shared_secret(self, name: str, value: bytes) -> None:
        """Keep ``value`` as the shared secret ``name`` (``slidearchive migrate`` bringing an archive's
        pseudonym key); ValueError when the catalog already holds a different one."""
        self.db.execute("INSERT INTO secret(name, value, created) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                        (name, value, time.time()))
        if bytes(self.db.execute("SELECT value FROM secret WHERE name=?", (name,)).fetchone()[0]) != value:
            raise ValueError(f"the catalog already holds a different {name}")

    def add_sealed_links(self, rows) -> None:
        """The broker's sealed links (kind, pseudonym, sealed) into the shared vault; the first of a
        pseudonym wins, as in deid.vault."""
        with self.db.transaction() as db:
            db.executemany("INSERT INTO deid_link(kind, pseudonym, sealed) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                           [tuple(r) for r in rows])

    def ping(self) -> None:
        """One read; raises when the catalog cannot be read (``CatalogUnavailable`` for a server)."""
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

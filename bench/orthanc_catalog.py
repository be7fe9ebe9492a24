"""Orthanc's PostgreSQL index filled with the studies of bench/catalog_bench.py, as Orthanc leaves them.

The rows are those Orthanc 1.10 with orthanc-postgresql 4.0 writes when it stores an
instance (read from a database it filled itself): a resource row per patient, study,
series and instance with the SHA-1 public identifier Orthanc derives from the UIDs; the
main DICOM tags of each level (a study also keeps its patient's); the upper-cased
identifiers that its lookups match on (DicomIdentifiers); metadata, the attached file,
the change log, the recycling order and the global counters. Same patients, studies,
UIDs, dates, names and accession numbers as catalog_bench's rows, so the same QIDO
finds the same studies in every catalog.

Written in the database itself (INSERT ... SELECT over generate_series), with triggers
off and the secondary indexes dropped during the load and built afterwards, as a
restore would; Orthanc must have created its schema first and must not be running.
"""
from __future__ import annotations

import io
import time
import uuid as uuid_module
from pathlib import Path

from catalog_bench import DAYS, NAMES, PER_SERIES, ROOT, SERIES_PER_STUDY, STUDIES_PER_PATIENT, WSI

# DICOM tags as Orthanc stores them: (group, element) in decimal.
PATIENT_NAME, PATIENT_ID, BIRTH_DATE, SEX = (16, 16), (16, 32), (16, 48), (16, 64)
STUDY_DATE, STUDY_TIME, ACCESSION, REFERRING = (8, 32), (8, 48), (8, 80), (8, 144)
STUDY_DESCRIPTION, STUDY_UID, STUDY_ID = (8, 4144), (32, 13), (32, 16)
MODALITY, MANUFACTURER, SERIES_UID, SERIES_NUMBER = (8, 96), (8, 112), (32, 14), (32, 17)
SOP_UID, INSTANCE_NUMBER, NUMBER_OF_FRAMES = (8, 24), (32, 19), (40, 8)
PATIENT, STUDY, SERIES, INSTANCE = 0, 1, 2, 3  # Orthanc's resource types
NEW_CHANGE = {PATIENT: 3, STUDY: 5, SERIES: 4, INSTANCE: 2}  # NewPatient, NewStudy, NewSeries, NewInstance


def _counts(instances: int) -> dict[int, int]:
    series = instances // PER_SERIES
    studies = series // SERIES_PER_STUDY
    return {PATIENT: (studies + STUDIES_PER_PATIENT - 1) // STUDIES_PER_PATIENT, STUDY: studies,
            SERIES: series, INSTANCE: instances}


PER_STUDY = PER_SERIES * SERIES_PER_STUDY


def _pid(p: str) -> str:
    return f"'P' || lpad(({p})::text, 9, '0')"


def _study_uid(s: str) -> str:
    return f"'{ROOT}.' || ({s})"


def _series_uid(k: str) -> str:
    return f"'{ROOT}.' || (({k}) / {SERIES_PER_STUDY}) || '.' || (({k}) % {SERIES_PER_STUDY} + 1)"


def _sop_uid(i: str) -> str:
    return (f"'{ROOT}.' || (({i}) / {PER_STUDY}) || '.' || (({i}) / {PER_SERIES} % {SERIES_PER_STUDY} + 1) "
            f"|| '.' || (({i}) % {PER_SERIES} + 1)")


def _levels(instances: int) -> dict[int, dict]:
    """Per level: the first internal id, the count, and SQL of the row number ``n`` (0-based) for the
    parent's internal id and for what Orthanc hashes into the public id (the UIDs down to it, '|'-joined)."""
    c = _counts(instances)
    first = {PATIENT: 1}
    for level in (STUDY, SERIES, INSTANCE):
        first[level] = first[level - 1] + c[level - 1]
    patients_per = {STUDY: STUDIES_PER_PATIENT, SERIES: SERIES_PER_STUDY * STUDIES_PER_PATIENT,
                    INSTANCE: PER_STUDY * STUDIES_PER_PATIENT}
    key = {PATIENT: _pid("n"),
           STUDY: f"{_pid(f'n / {patients_per[STUDY]}')} || '|' || {_study_uid('n')}",
           SERIES: f"{_pid(f'n / {patients_per[SERIES]}')} || '|' || {_study_uid(f'n / {SERIES_PER_STUDY}')} "
                   f"|| '|' || {_series_uid('n')}",
           INSTANCE: f"{_pid(f'n / {patients_per[INSTANCE]}')} || '|' || {_study_uid(f'n / {PER_STUDY}')} "
                     f"|| '|' || {_series_uid(f'n / {PER_SERIES}')} || '|' || {_sop_uid('n')}"}
    per_parent = {STUDY: STUDIES_PER_PATIENT, SERIES: SERIES_PER_STUDY, INSTANCE: PER_SERIES}
    return {level: {"first": first[level], "count": c[level], "key": key[level],
                    "parent": "NULL" if level == PATIENT else f"{first[level - 1]} + n / {per_parent[level]}"}
            for level in (PATIENT, STUDY, SERIES, INSTANCE)}


def _tags(level: int) -> tuple[dict, dict]:
    """(main DICOM tags, identifiers) of one level: tag -> SQL of the row number ``n``, catalog_bench's values."""
    name = f"'NAME' || lpad(((p) % {NAMES})::text, 4, '0') || '^GIVEN' || ((p) % 97)"
    patient = {PATIENT_NAME: name, PATIENT_ID: _pid("p"),
               BIRTH_DATE: "'19' || (40 + (p) % 60) || '0101'", SEX: "CASE WHEN (p) % 2 = 0 THEN 'M' ELSE 'F' END"}
    if level == PATIENT:
        main = {tag: expr.replace("(p)", "(n)") for tag, expr in patient.items()}
        return main, {tag: f"upper({main[tag]})" for tag in (PATIENT_ID, PATIENT_NAME, BIRTH_DATE)}
    if level == STUDY:
        own = {STUDY_DATE: f"to_char(date '2010-01-01' + (n::bigint * 7919 % {DAYS})::int, 'YYYYMMDD')",
               STUDY_TIME: "lpad((n % 24)::text, 2, '0') || lpad((n % 60)::text, 2, '0') || '00'",
               ACCESSION: "'A' || lpad(n::text, 10, '0')", REFERRING: "'REF^DOCTOR'",
               STUDY_DESCRIPTION: "CASE WHEN n % 3 = 0 THEN 'Resection' ELSE 'Biopsy' END",
               STUDY_UID: _study_uid("n"), STUDY_ID: "'S' || (n % 100000)"}
        main = {**{tag: expr.replace("(p)", f"(n / {STUDIES_PER_PATIENT})") for tag, expr in patient.items()}, **own}
        ids = (PATIENT_ID, PATIENT_NAME, BIRTH_DATE, STUDY_UID, ACCESSION, STUDY_DESCRIPTION, STUDY_DATE)
        return main, {tag: f"upper({main[tag]})" for tag in ids}
    if level == SERIES:
        main = {MODALITY: "'SM'", MANUFACTURER: "'slidearchive bench'", SERIES_UID: _series_uid("n"),
                SERIES_NUMBER: f"(n % {SERIES_PER_STUDY} + 1)::text"}
        return main, {SERIES_UID: main[SERIES_UID]}
    main = {SOP_UID: _sop_uid("n"), INSTANCE_NUMBER: f"(n % {PER_SERIES} + 1)::text",
            NUMBER_OF_FRAMES: f"(4 ^ (n % {PER_SERIES}))::bigint::text"}
    return main, {SOP_UID: main[SOP_UID]}


def _metadata(level: int, now: str, pixel_data_offset: int) -> dict[int, str]:
    """Metadata type -> SQL, as Orthanc writes them (7 LastUpdate; an instance: index, reception date, AET...)."""
    if level == INSTANCE:
        return {1: f"(n % {PER_SERIES} + 1)::text", 2: f"'{now}'", 3: "''", 8: "'Plugins'",
                9: "'1.2.840.10008.1.2.4.50'", 10: f"'{WSI}'",
                14: f"'{pixel_data_offset}'"}
    return {3: "''", 7: f"'{now}'"} if level == SERIES else {7: f"'{now}'"}


def write_file(storage: Path, source: Path) -> tuple[str, int]:
    """Store source as Orthanc would under storage: (attachment uuid, offset of its Pixel Data element).

    Orthanc's study-level QIDO-RS reads one instance file of every study it returns (up to its
    Pixel Data, whose offset it keeps as metadata 14), so the generated instances all point to
    this one real file: those reads then come from the page cache, which flatters Orthanc."""
    import pydicom

    data = source.read_bytes()
    header = pydicom.dcmread(source)
    del header.PixelData
    buffer = io.BytesIO()
    header.save_as(buffer, enforce_file_format=True)
    offset = len(buffer.getvalue())
    if data[offset:offset + 4] != b"\xe0\x7f\x10\x00":
        raise ValueError(f"{source}: Pixel Data is not the last element, cannot tell its offset")
    uuid = str(uuid_module.uuid4())
    path = storage / uuid[:2] / uuid[2:4] / uuid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return uuid, offset


def fill(url: str, instances: int, file: tuple[str, int]) -> float:
    """Write the rows into the Orthanc database at url (schema already created by Orthanc, Orthanc
    stopped); file is write_file's answer, every instance's attachment. Seconds taken."""
    import psycopg

    started = time.perf_counter()
    now = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    levels = _levels(instances)
    metadata = {level: _metadata(level, now, file[1]) for level in levels}
    with psycopg.connect(url) as db:
        if db.execute("SELECT count(*) FROM resources").fetchone()[0]:
            raise RuntimeError("the Orthanc index is not empty")
        db.execute("SET session_replication_role = replica")  # no triggers, no foreign-key checks while loading
        db.execute("SET maintenance_work_mem = '512MB'")
        db.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        indexes = db.execute("SELECT indexname, indexdef FROM pg_indexes i WHERE schemaname = 'public' AND "
                             "NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)").fetchall()
        for name, _ in indexes:  # built again once the rows are in, as a restore does
            db.execute(f'DROP INDEX "{name}"')
        for level, at in levels.items():
            rows = f"FROM generate_series(0, {at['count']} - 1) AS n"
            internal = f"{at['first']} + n"
            sha = f"encode(digest({at['key']}, 'sha1'), 'hex')"
            public = " || '-' || ".join(f"substr(h, {1 + 8 * k}, 8)" for k in range(5))
            db.execute(f"INSERT INTO resources (internalid, resourcetype, publicid, parentid) "
                       f"SELECT {internal}, {level}, {public}, {at['parent']} FROM "
                       f"(SELECT n, {sha} AS h {rows}) AS r")
            main, identifiers = _tags(level)
            for table, tags in (("maindicomtags", main), ("dicomidentifiers", identifiers)):
                for (group, element), expr in tags.items():
                    db.execute(f"INSERT INTO {table} (id, taggroup, tagelement, value) "
                               f"SELECT {internal}, {group}, {element}, {expr} {rows}")
            for kind, expr in metadata[level].items():
                db.execute(f"INSERT INTO metadata (id, type, value, revision) SELECT {internal}, {kind}, {expr}, 0 {rows}")
            db.execute(f"INSERT INTO changes (changetype, internalid, resourcetype, date) "
                       f"SELECT {NEW_CHANGE[level]}, {internal}, {level}, '{now}' {rows}")
        instance = levels[INSTANCE]
        size = "(1000 + n % 999000)"  # catalog_bench's instance sizes
        db.execute(f"INSERT INTO attachedfiles (id, filetype, uuid, compressedsize, uncompressedsize, "
                   f"compressiontype, uncompressedhash, compressedhash, revision) "
                   f"SELECT {instance['first']} + n, 1, '{file[0]}', {size}, {size}, 1, "
                   f"md5(n::text), md5(n::text), 0 FROM generate_series(0, {instance['count']} - 1) AS n")
        db.execute(f"INSERT INTO patientrecyclingorder (patientid) SELECT internalid FROM resources "
                   f"WHERE resourcetype = {PATIENT} ORDER BY internalid")
        total = "(SELECT coalesce(sum(compressedsize), 0) FROM attachedfiles)"
        db.execute(f"UPDATE globalintegers SET value = {total} WHERE key IN (0, 1)")
        for level, at in levels.items():
            db.execute("UPDATE globalintegers SET value = %s WHERE key = %s", (at["count"], level + 2))
        db.execute("UPDATE globalintegers SET value = (SELECT max(seq) FROM changes) WHERE key = 6")
        db.execute("SELECT setval('resources_internalid_seq', (SELECT max(internalid) FROM resources))")
        for _, definition in indexes:
            db.execute(definition)
        db.execute("DROP EXTENSION pgcrypto")
        db.commit()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE")
    return time.perf_counter() - started

"""The catalog's schema as numbered migrations, the same for both backends.

Each migration is a list of statements written with SQLite's types; a backend's
dialect maps the types (``Dialect.ddl``) and fills ``{rowid}`` / ``{rowid_column}``
(SQLite's implicit row id, a column in PostgreSQL) and ``{modalities}`` (string aggregation). ``schema_version`` records what a
database has; ``migrate`` applies the rest in one transaction, under a lock, so nodes
starting together migrate once. Never edit a released migration: add the next one.

Migration 1 is the schema catalogs had before versioning (every statement ``IF NOT
EXISTS``), so an unversioned SQLite catalog is adopted as it is.
"""
from __future__ import annotations

import time

from archive.catalog.database import Database

# Migration 6's triggers (archive/catalog/tally.py): SQLite's fire per row; PostgreSQL's once per
# statement with its rows (a COPY or a dataset release adds a row per block, not per study).
_TALLY_TRIGGERS_SQLITE = [
    f"CREATE TRIGGER IF NOT EXISTS {table}_tally_{event} AFTER {op} ON {table} BEGIN "
    f"INSERT INTO study_tally(collection, bucket, n) VALUES ({collection.format(row=row)}, {row}.{key} / 1024, "
    f"{sign}1); END"
    for table, collection, key in (("study", "''", "pk"), ("study_collection", "{row}.collection", "study_fk"))
    for event, op, row, sign in (("added", "INSERT", "NEW", ""), ("removed", "DELETE", "OLD", "-"))
]
_TALLY_TRIGGERS_POSTGRESQL = [
    statement
    for table, collection, key in (("study", "''", "pk"), ("study_collection", "collection", "study_fk"))
    for statement in (
        f"CREATE OR REPLACE FUNCTION tally_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO study_tally(collection, bucket, n) SELECT {collection}, {key} / 1024, "
        f"CASE WHEN TG_OP = 'INSERT' THEN count(*) ELSE -count(*) END FROM changed GROUP BY 1, 2; "
        f"RETURN NULL; END $$",
        *(f"CREATE OR REPLACE TRIGGER {table}_tally_{event} AFTER {op} ON {table} REFERENCING {which} TABLE AS "
          f"changed FOR EACH STATEMENT EXECUTE FUNCTION tally_{table}()"
          for event, op, which in (("added", "INSERT", "NEW"), ("removed", "DELETE", "OLD"))))
]

#: The name of the migration that numbers outbox events in commit order.
OUTBOX_ORDER = "outbox events numbered in commit order (commit_seq), which consumers follow"

#: A statement is SQL for both engines, or a dict of one per engine ({"sqlite": ..., "postgresql": ...};
#: an engine without an entry skips it) where they differ, as triggers do.
MIGRATIONS: list[tuple[str, list[str | dict[str, str]]]] = [
    ("catalog, access-control collections, outbox, result links", [
        "CREATE TABLE IF NOT EXISTS collection (name TEXT PRIMARY KEY)",
        """CREATE TABLE IF NOT EXISTS patient (
            pk INTEGER PRIMARY KEY,
            patient_id TEXT, issuer_of_patient_id TEXT, patient_name TEXT,
            patient_birth_date TEXT, patient_sex TEXT,
            UNIQUE (patient_id, issuer_of_patient_id))""",
        """CREATE TABLE IF NOT EXISTS study (
            pk INTEGER PRIMARY KEY,
            study_instance_uid TEXT NOT NULL UNIQUE,
            patient_fk INTEGER NOT NULL REFERENCES patient(pk),
            collection TEXT NOT NULL REFERENCES collection(name),
            study_date TEXT, study_time TEXT, accession_number TEXT, study_id TEXT,
            referring_physician_name TEXT, study_description TEXT,
            attrs TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS series (
            pk INTEGER PRIMARY KEY,
            series_instance_uid TEXT NOT NULL UNIQUE,
            study_fk INTEGER NOT NULL REFERENCES study(pk),
            modality TEXT, series_number INTEGER, series_description TEXT, series_date TEXT, series_time TEXT,
            pps_start_date TEXT, pps_start_time TEXT, body_part_examined TEXT,
            attrs TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS instance (
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
            attrs TEXT NOT NULL, header BLOB NOT NULL, created REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS series_study ON series(study_fk)",
        "CREATE INDEX IF NOT EXISTS instance_series ON instance(series_fk)",
        "CREATE INDEX IF NOT EXISTS study_patient ON study(patient_fk)",
        "CREATE INDEX IF NOT EXISTS study_date_idx ON study(study_date)",
        # Access control: a study belongs to one or more collections (study.collection is the first).
        """CREATE TABLE IF NOT EXISTS study_collection (
            study_fk INTEGER NOT NULL REFERENCES study(pk) ON DELETE CASCADE,
            collection TEXT NOT NULL REFERENCES collection(name),
            PRIMARY KEY (study_fk, collection)) WITHOUT ROWID""",
        "CREATE INDEX IF NOT EXISTS study_collection_by_name ON study_collection(collection, study_fk)",
        # catalogs written before study_collection existed: one row per study from study.collection
        "INSERT INTO study_collection(study_fk, collection) SELECT pk, collection FROM study WHERE true "
        "ON CONFLICT DO NOTHING",
        """CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event TEXT NOT NULL, study_uid TEXT, series_uid TEXT, sop_instance_uid TEXT,
            created_at REAL NOT NULL)""",
        # AI results (archive/results/links.py)
        """CREATE TABLE IF NOT EXISTS result_instance (
            result_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
            kind TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
            algorithm_name TEXT NOT NULL DEFAULT '', algorithm_version TEXT, algorithm_family TEXT,
            creator TEXT, content_label TEXT, content_datetime TEXT NOT NULL DEFAULT '',
            stored_at REAL NOT NULL{rowid_column})""",
        """CREATE TABLE IF NOT EXISTS result_ref (
            result_uid TEXT NOT NULL, slide_series_uid TEXT NOT NULL, slide_sop_uid TEXT NOT NULL,
            PRIMARY KEY (result_uid, slide_sop_uid))""",
        "CREATE INDEX IF NOT EXISTS result_ref_series ON result_ref(slide_series_uid)",
        """CREATE TABLE IF NOT EXISTS result_group (
            result_uid TEXT NOT NULL, number INTEGER NOT NULL, label TEXT, graphic_type TEXT,
            annotation_count INTEGER,
            property_type_code TEXT, property_type_scheme TEXT, property_type_meaning TEXT,
            property_category_meaning TEXT, algorithm_type TEXT,
            algorithm_name TEXT, algorithm_version TEXT, algorithm_family TEXT, measurements TEXT,
            PRIMARY KEY (result_uid, number))""",
        "CREATE TABLE IF NOT EXISTS result_sync (id INTEGER PRIMARY KEY CHECK (id = 1), last_pk INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS result_group_type ON result_group(property_type_code, property_type_meaning)",
        """CREATE VIEW IF NOT EXISTS result_link AS
        SELECT r.*, x.slide_series_uid,
               CASE WHEN r.algorithm_name = '' THEN 1
                    WHEN ROW_NUMBER() OVER (PARTITION BY x.slide_series_uid, r.kind, r.algorithm_name
                                            ORDER BY r.content_datetime DESC, r.stored_at DESC, r.{rowid} DESC) = 1
                    THEN 1 ELSE 0 END AS current
        FROM result_instance r
        JOIN (SELECT DISTINCT result_uid, slide_series_uid FROM result_ref) x ON x.result_uid = r.result_uid
        JOIN instance i ON i.sop_instance_uid = r.result_uid""",
    ]),
    ("work shared by the nodes: leased work items and leases; the de-identification key and link vault; "
     "indexes for accession number and patient name", [
        # A work item is claimed by one node for ``lease_until``; a dead node's items come back when it runs out.
        """CREATE TABLE IF NOT EXISTS work_item (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload TEXT NOT NULL,
            due REAL NOT NULL, owner TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS work_item_due ON work_item(kind, due)",
        # One holder at a time (e.g. the index worker that advances the outbox cursor), with its state.
        """CREATE TABLE IF NOT EXISTS lease (
            name TEXT PRIMARY KEY, owner TEXT, lease_until REAL NOT NULL, state TEXT)""",
        # The pseudonym key every node uses (a shared catalog holds it; a SQLite archive keeps its key file).
        "CREATE TABLE IF NOT EXISTS secret (name TEXT PRIMARY KEY, value BLOB NOT NULL, created REAL NOT NULL)",
        # The honest broker's sealed links (deid/vault.py), when the catalog is shared.
        """CREATE TABLE IF NOT EXISTS deid_link (
            kind TEXT NOT NULL, pseudonym TEXT NOT NULL, sealed BLOB NOT NULL,
            PRIMARY KEY (kind, pseudonym))""",
        "CREATE INDEX IF NOT EXISTS deid_link_pseudonym ON deid_link(pseudonym)",
        # QIDO keys a large catalog is searched by that had no index (a 10-million-instance catalog)
        "CREATE INDEX IF NOT EXISTS study_accession ON study(accession_number)",
        "CREATE INDEX IF NOT EXISTS patient_name_lower ON patient(lower(patient_name))",
    ]),
    ("counts and modalities QIDO returns, kept on the study and series rows", [
        "ALTER TABLE study ADD COLUMN series_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE study ADD COLUMN instance_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE study ADD COLUMN modalities TEXT",
        "ALTER TABLE series ADD COLUMN instance_count INTEGER NOT NULL DEFAULT 0",
        "UPDATE series SET instance_count=(SELECT count(*) FROM instance i WHERE i.series_fk=series.pk)",
        "UPDATE study SET series_count=(SELECT count(*) FROM series s WHERE s.study_fk=study.pk), "
        "instance_count=(SELECT coalesce(sum(s.instance_count), 0) FROM series s WHERE s.study_fk=study.pk), "
        "modalities=(SELECT {modalities} FROM series s WHERE s.study_fk=study.pk)",
    ]),
    ("result links repaired through leased work items (one node each) instead of a per-reader watermark", [
        # every result not linked yet gets its work item (archive/results/links.py: LINK_WORK), due now
        "INSERT INTO work_item(kind, payload, due, attempts, created) "
        "SELECT 'result-link', '{{\"sop\": \"' || sop_instance_uid || '\"}}', 0, 0, 0 FROM instance "
        "WHERE sop_class_uid IN ('1.2.840.10008.5.1.4.1.1.91.1', '1.2.840.10008.5.1.4.1.1.66.4', "
        "'1.2.840.10008.5.1.4.1.1.66.7', '1.2.840.10008.5.1.4.1.1.88.34') "
        "AND sop_instance_uid NOT IN (SELECT result_uid FROM result_instance)",
        # result_sync (the old watermark) stays: nodes of the previous version still read it until upgraded
    ]),
    ("the index worker's rejected documents and AI references, for the nodes sharing the outbox", [
        # indexer/state.py: what the index rejected (retried with back-off by the outbox lease holder)
        """CREATE TABLE IF NOT EXISTS index_failed (
            series_uid TEXT PRIMARY KEY, reason TEXT NOT NULL, attempts INTEGER NOT NULL, last_failed REAL NOT NULL)""",
        # which AI series reference which slide series (a slide's document summarizes its AI results)
        """CREATE TABLE IF NOT EXISTS index_ai_ref (
            ai_series TEXT NOT NULL, slide_series TEXT NOT NULL, PRIMARY KEY (ai_series, slide_series))""",
        "CREATE INDEX IF NOT EXISTS index_ai_ref_slide ON index_ai_ref(slide_series)",
    ]),
    ("QIDO at ten million instances: studies counted per block of keys for deep pages (archive/catalog/tally.py); "
     "a patient-name match reads keys from the indexes alone", [
        "CREATE TABLE IF NOT EXISTS study_tally (collection TEXT NOT NULL, bucket INTEGER NOT NULL, "
        "n INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS study_tally_block ON study_tally(collection, bucket)",
        # The triggers first: in PostgreSQL creating them waits for, then blocks, other nodes' writes
        # to the table until this migration commits, so the backfill below misses no row.
        *({"sqlite": statement} for statement in _TALLY_TRIGGERS_SQLITE),
        *({"postgresql": statement} for statement in _TALLY_TRIGGERS_POSTGRESQL),
        "DELETE FROM study_tally",  # (empty, unless the migration is run again: the counts start over)
        "INSERT INTO study_tally(collection, bucket, n) SELECT '', pk / 1024, count(*) FROM study GROUP BY pk / 1024",
        "INSERT INTO study_tally(collection, bucket, n) SELECT collection, study_fk / 1024, count(*) "
        "FROM study_collection GROUP BY collection, study_fk / 1024",
        # A patient-name match finds its patients and their studies' keys in indexes alone (PostgreSQL
        # reads an expression index alone only when it also holds the column the expression reads).
        "CREATE INDEX IF NOT EXISTS patient_name_lower_pk ON patient(lower(patient_name), patient_name, pk)",
        "DROP INDEX IF EXISTS patient_name_lower",
        "CREATE INDEX IF NOT EXISTS study_patient_pk ON study(patient_fk, pk)",
        "DROP INDEX IF EXISTS study_patient",
    ]),
    ("QIDO at ten million instances: a study-date match reads the studies' keys from the index alone; "
     "statistics for the new indexes", [
        # A 30-day range is thousands of studies at ten million instances: sorted by key for the page
        # from the index, not from a heap page read per study.
        "CREATE INDEX IF NOT EXISTS study_date_pk ON study(study_date, pk)",
        "DROP INDEX IF EXISTS study_date_idx",
        # Without statistics for the expression lower(patient_name) (an upgrade adds its index to rows
        # autovacuum has no reason to visit again) PostgreSQL guessed a name prefix matches a third of
        # the patients and walked every study in key order: 2.4 s a search at ten million instances.
        # (SQLite is left alone: its statistics, once taken, stay until taken again.)
        {"postgresql": "ANALYZE patient"},
        {"postgresql": "ANALYZE study"},
    ]),
    ("the dataset tables (datasets/), until now created outside the numbered migrations", [
        # IF NOT EXISTS: a catalog whose tables the datasets package made before keeps them as they are
        # A curated set of series: fields a landing page shows, and how its series are chosen.
        """CREATE TABLE IF NOT EXISTS dataset (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            description TEXT NOT NULL,
            license TEXT NOT NULL,
            terms_of_use TEXT NOT NULL,
            contributors TEXT NOT NULL,
            keywords TEXT NOT NULL,
            search TEXT,
            collection TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            created_by TEXT NOT NULL
        )""",
        # Series named by hand: included = 1 added, 0 taken out of what the search or collection chose.
        """CREATE TABLE IF NOT EXISTS dataset_series (
            dataset_id TEXT NOT NULL REFERENCES dataset(id),
            series_uid TEXT NOT NULL,
            included INTEGER NOT NULL,
            PRIMARY KEY (dataset_id, series_uid)
        )""",
        # Per-case clinical fields the curator supplies, keyed by the stored Patient ID (a pseudonym).
        """CREATE TABLE IF NOT EXISTS dataset_case (
            dataset_id TEXT NOT NULL REFERENCES dataset(id),
            patient_id TEXT NOT NULL,
            diagnosis TEXT,
            age_band TEXT,
            sex TEXT,
            anatomic_site TEXT,
            PRIMARY KEY (dataset_id, patient_id)
        )""",
        # A frozen version: what the dataset said and held when it was released.
        """CREATE TABLE IF NOT EXISTS dataset_release (
            id TEXT PRIMARY KEY,
            dataset_id TEXT NOT NULL REFERENCES dataset(id),
            version INTEGER NOT NULL,
            identifier TEXT NOT NULL UNIQUE,
            collection TEXT NOT NULL,
            released_at TEXT NOT NULL,
            released_by TEXT NOT NULL,
            metadata TEXT NOT NULL,
            counts TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            withdrawn_at TEXT,
            withdrawn_reason TEXT,
            UNIQUE (dataset_id, version)
        )""",
        # The cases of a release under release-local pseudonyms, with their clinical fields.
        """CREATE TABLE IF NOT EXISTS release_case (
            release_id TEXT NOT NULL REFERENCES dataset_release(id),
            case_id TEXT NOT NULL,
            diagnosis TEXT,
            age_band TEXT,
            sex TEXT,
            anatomic_site TEXT,
            species TEXT,
            PRIMARY KEY (release_id, case_id)
        )""",
        # The manifest: every instance of the release; withdrawn_* are the only columns ever updated.
        """CREATE TABLE IF NOT EXISTS release_item (
            release_id TEXT NOT NULL REFERENCES dataset_release(id),
            sop_instance_uid TEXT NOT NULL,
            study_uid TEXT NOT NULL,
            series_uid TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            case_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            size BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            withdrawn_at TEXT,
            withdrawn_reason TEXT,
            PRIMARY KEY (release_id, sop_instance_uid)
        )""",
        # An application for access to a release (datasets.access): pending, then approved or rejected; revocable.
        """CREATE TABLE IF NOT EXISTS dataset_application (
            id TEXT PRIMARY KEY,
            release_id TEXT NOT NULL REFERENCES dataset_release(id),
            applicant TEXT NOT NULL,
            project TEXT NOT NULL,
            purpose TEXT NOT NULL,
            members TEXT NOT NULL,
            status TEXT NOT NULL,
            submitted_at TEXT NOT NULL,
            decided_by TEXT,
            decided_at TEXT,
            reason TEXT,
            expires_at TEXT,
            revoked_by TEXT,
            revoked_at TEXT,
            revoke_reason TEXT
        )""",
        # What an approval grants: read on the release's collection, per member, until expires_at (or revoked_at).
        """CREATE TABLE IF NOT EXISTS dataset_grant (
            application_id TEXT NOT NULL REFERENCES dataset_application(id),
            subject TEXT NOT NULL,
            release_id TEXT NOT NULL REFERENCES dataset_release(id),
            collection TEXT NOT NULL,
            granted_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            revoked_at TEXT,
            PRIMARY KEY (application_id, subject)
        )""",
        "CREATE INDEX IF NOT EXISTS dataset_grant_subject ON dataset_grant(subject, expires_at)",
        "CREATE INDEX IF NOT EXISTS dataset_application_release ON dataset_application(release_id, status)",
        # CRC-32 of downloadable content by its SHA-256 (a zip download needs them; datasets.download).
        """CREATE TABLE IF NOT EXISTS bundle_crc (
            sha256 TEXT PRIMARY KEY,
            crc32 BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS release_item_sop ON release_item(sop_instance_uid)",
        "CREATE INDEX IF NOT EXISTS release_item_series ON release_item(release_id, series_uid)",
        "CREATE INDEX IF NOT EXISTS dataset_release_dataset ON dataset_release(dataset_id, version)",
    ]),
    ("QIDO at ten million instances: a finer histogram of patient names", [
        # With PostgreSQL's 100 buckets (5,000 patients each at ten million instances) a name prefix near
        # a bucket bound was taken to match a whole bucket, and the planner walked every study in key
        # order (4.5 s for NAME2407* in bench/catalog_bench.py; about one name in fifty). 1,000 buckets: no
        # name of the benchmark's 5,000 gets that plan.
        {"postgresql": "ALTER INDEX patient_name_lower_pk ALTER COLUMN 1 SET STATISTICS 1000"},
        {"postgresql": "ANALYZE patient"},
    ]),
    (OUTBOX_ORDER, [
        # seq is drawn at INSERT; on PostgreSQL a transaction that drew a lower seq can commit after a
        # higher one was read. commit_seq is given to committed events only, under a lock (Catalog.outbox_after).
        "ALTER TABLE outbox ADD COLUMN commit_seq INTEGER",
        # events already there keep their number, so a consumer's saved cursor means the same
        "UPDATE outbox SET commit_seq = seq",
        "CREATE UNIQUE INDEX IF NOT EXISTS outbox_commit_seq ON outbox(commit_seq)",
        "CREATE INDEX IF NOT EXISTS outbox_unnumbered ON outbox(seq) WHERE commit_seq IS NULL",
    ]),
]

VERSION = len(MIGRATIONS)
#: The version that numbers outbox events in commit order (tests upgrade a catalog from the one before).
OUTBOX_POSITIONS = next(n for n, (name, _) in enumerate(MIGRATIONS, 1) if name == OUTBOX_ORDER)


def version(db: Database) -> int:
    """The schema version ``db`` has (0: empty, or a catalog from before versioning)."""
    db.execute(db.dialect.ddl("CREATE TABLE IF NOT EXISTS schema_version "
                              "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"))
    return db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def migrate(db: Database, target: int = VERSION) -> int:
    """Bring ``db`` to ``target``; returns the version it had. A database newer than this code is refused."""
    have = version(db)
    if have > VERSION:
        raise RuntimeError(f"the catalog {db.location} has schema version {have}, newer than this "
                           f"slidearchive ({VERSION}): upgrade slidearchive")
    if have >= target:
        return have
    with db.transaction() as session:
        db.lock(session, "slidearchive schema")
        have = session.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        d = db.dialect
        for number in range(have + 1, target + 1):
            name, statements = MIGRATIONS[number - 1]
            for statement in statements:
                if isinstance(statement, dict):
                    if d.name not in statement:
                        continue
                    statement = statement[d.name]
                session.execute(d.ddl(statement.format(rowid=d.rowid, rowid_column=d.rowid_column,
                                                       modalities=d.group_concat("s.modality", distinct=True))))
            session.execute("INSERT INTO schema_version(version, name, applied) VALUES (?,?,?)",
                            (number, name, time.time()))
    return have

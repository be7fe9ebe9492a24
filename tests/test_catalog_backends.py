"""The catalog on both backends (SQLite file, real PostgreSQL): schema migrations, what several
nodes sharing one catalog rely on (UID uniqueness, leased work items, one pseudonym key and
link vault), and the same reads and writes giving the same answers."""
from __future__ import annotations

import threading
import time

import pytest

from archive import dicomjson
from archive.auth.access import SYSTEM, Principal
from archive.catalog import Catalog, NewInstance
from archive.catalog import schema, tally
from archive.catalog.database import open_database
from archive.catalog.query import parse_qido
from archive.catalog.work import Leases, WorkQueue
from archive.errors import DuplicateInstance
from indexer.synthetic import slide_headers

from es_node import es_node  # noqa: F401  (fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """Where a fresh catalog goes, on each backend."""
    if request.param == "sqlite":
        return tmp_path / "catalog.sqlite"
    return request.getfixturevalue("postgresql_url")


def _new(ds, storage_id: str | None = None) -> NewInstance:
    return NewInstance(ds, "1.2.840.10008.1.2.1", storage_id or f"sid-{ds.SOPInstanceUID}", 1, "0" * 64,
                       None, None, dicomjson.to_json(ds))


DATASETS = next(i + 1 for i, (name, _) in enumerate(schema.MIGRATIONS) if name.startswith("the dataset tables"))


def test_dataset_tables_made_before_their_migration_are_adopted_with_their_rows(location):
    """A catalog of the version before, whose dataset tables the datasets package created itself
    (the same statements, run as written, as it did before they were a migration), holding a
    dataset: the upgrade keeps the tables and the row."""
    from datasets import model

    db = open_database(location)
    schema.migrate(db, target=DATASETS - 1)
    with db.transaction() as s:
        for statement in schema.MIGRATIONS[DATASETS - 1][1]:
            s.execute(statement)
        s.execute("INSERT INTO dataset VALUES ('kept', 't', 'd', 'CC0-1.0', '', '[]', '[]', NULL, NULL, "
                  "'2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', 'me')")
    db.close()
    upgraded = Catalog(location)
    assert schema.version(upgraded.db) == schema.VERSION
    assert model.get(upgraded, "kept").title == "t"
    upgraded.close()


def test_a_catalog_without_dataset_tables_gets_them(location):
    db = open_database(location)
    schema.migrate(db, target=DATASETS - 1)
    db.close()
    catalog = Catalog(location)
    assert catalog.db.execute("SELECT count(*) FROM dataset_release").fetchone()[0] == 0
    catalog.close()


def test_fresh_catalog_has_the_current_schema_version(location):
    catalog = Catalog(location)
    assert schema.version(catalog.db) == schema.VERSION
    assert schema.migrate(catalog.db) == schema.VERSION  # opening again changes nothing
    catalog.close()


COUNTS = next(i + 1 for i, (name, _) in enumerate(schema.MIGRATIONS) if name.startswith("counts and modalities"))


@pytest.mark.parametrize("previous", sorted({COUNTS - 1, schema.VERSION - 1}))
def test_a_catalog_of_an_earlier_version_upgrades_with_its_rows(location, previous):
    """Made by migrations 1..``previous`` (as an earlier release left it), holding a study; opening
    it with this version applies the rest and keeps every row readable."""
    db = open_database(location)
    schema.migrate(db, target=previous)
    assert schema.version(db) == previous
    headers = slide_headers(1)
    with db.transaction() as s:  # rows as the previous version wrote them, in migration N-1's tables
        s.execute("INSERT INTO collection(name) VALUES ('c')")
        s.execute("INSERT INTO patient(patient_id, issuer_of_patient_id, patient_name) VALUES ('P1', '', 'Old^Name')")
        pk = s.execute("SELECT pk FROM patient").fetchone()[0]
        s.execute("INSERT INTO study(study_instance_uid, patient_fk, collection, attrs) VALUES (?,?,?,?)",
                  (headers[0].StudyInstanceUID, pk, "c", "{}"))
        study = s.execute("SELECT pk FROM study").fetchone()[0]
        s.execute("INSERT INTO study_collection(study_fk, collection) VALUES (?, 'c')", (study,))
        s.execute("INSERT INTO series(series_instance_uid, study_fk, attrs) VALUES (?,?,?)",
                  (headers[0].SeriesInstanceUID, study, "{}"))
        series = s.execute("SELECT pk FROM series").fetchone()[0]
        s.execute("INSERT INTO instance(sop_instance_uid, series_fk, sop_class_uid, transfer_syntax_uid, storage_id, "
                  "size, sha256, attrs, header, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                  (headers[0].SOPInstanceUID, series, headers[0].SOPClassUID, "1.2.840.10008.1.2.1", "old", 1,
                   "0" * 64, "{}", b"x", time.time()))
    db.close()

    catalog = Catalog(location)  # upgrades
    assert schema.version(catalog.db) == schema.VERSION
    record = catalog.instance(headers[0].SOPInstanceUID, principal=SYSTEM)
    assert record is not None and record.storage_id == "old"
    if previous < COUNTS:
        [study] = catalog.search(parse_qido("study", []), principal=SYSTEM)  # counts filled in by the upgrade
        assert study["00201208"]["Value"] == [1] and study["00201206"]["Value"] == [1]
    # the patient-name indexes and the tallies deep pages start from (migration 6) hold the old study
    assert len(catalog.search(parse_qido("study", [("PatientName", "old*")]), principal=SYSTEM)) == 1
    assert [tuple(r) for r in catalog.db.execute("SELECT collection, sum(n) FROM study_tally GROUP BY collection "
                                                 "ORDER BY collection").fetchall()] == [("", 1), ("c", 1)]
    # what migration N brought works on the upgraded catalog, beside the old rows
    catalog.add_instance(_new(headers[1]), "c")
    assert len(catalog.instances(headers[0].StudyInstanceUID, principal=SYSTEM)) == 2
    queue = WorkQueue(catalog.db, "n1")
    queue.add("k", {"a": 1})
    assert [w.payload for w in queue.claim("k")] == [{"a": 1}]
    catalog.close()


def test_a_database_newer_than_this_version_is_refused(location):
    db = open_database(location)
    schema.migrate(db)
    db.execute("INSERT INTO schema_version(version, name, applied) VALUES (?, 'from the future', 0)",
               (schema.VERSION + 1,))
    db.close()
    with pytest.raises(RuntimeError, match="newer than this"):
        Catalog(location)


def test_two_nodes_storing_the_same_instance_at_once_keep_one_row(location):
    """Each "node" is its own Catalog (its own connections); both start the same instances together."""
    nodes = [Catalog(location), Catalog(location)]
    slides = [slide_headers(n, seed=5) for n in range(6)]
    outcomes: list[list[str]] = [[], []]

    def store(i: int, barrier: threading.Barrier) -> None:
        for headers in slides:
            for ds in headers:
                barrier.wait()
                try:
                    nodes[i].add_instance(_new(ds, f"node{i}-{ds.SOPInstanceUID}"), "c")
                    outcomes[i].append("stored")
                except DuplicateInstance:
                    outcomes[i].append("duplicate")

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=store, args=(i, barrier)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    total = sum(len(h) for h in slides)
    assert outcomes[0].count("stored") + outcomes[1].count("stored") == total
    assert outcomes[0].count("duplicate") + outcomes[1].count("duplicate") == total
    by_study: dict[str, set[str]] = {}
    for ds in (ds for headers in slides for ds in headers):
        by_study.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    for study, sops in by_study.items():
        found = nodes[0].instances(study, principal=SYSTEM)
        assert sorted(r.sop_instance_uid for r in found) == sorted(sops)
    studies = nodes[1].search(parse_qido("study", []), principal=SYSTEM)
    assert len(studies) == len(by_study)
    for s in studies:  # the counts kept on the study rows saw every node's instances
        assert s["00201208"]["Value"] == [len(by_study[s["0020000D"]["Value"][0]])]
    for n in nodes:
        n.close()


def test_work_items_are_claimed_once_and_a_dead_nodes_items_come_back(location):
    catalog = Catalog(location)
    WorkQueue(catalog.db, "setup").add("report", {"n": -1})
    for n in range(60):
        WorkQueue(catalog.db, "setup").add("report", {"n": n})
    dead = WorkQueue(catalog.db, "dead-node")
    lease = 5.0
    held = dead.claim("report", limit=1, lease=lease)
    claimed_at = time.time()
    assert [w.payload["n"] for w in held] == [-1]
    claimed: dict[str, list[int]] = {}

    def node(name: str) -> None:
        queue, mine = WorkQueue(Catalog(location).db, name), []
        while items := queue.claim("report", limit=4, lease=30):
            for item in items:
                assert queue.done(item)
                mine.append(item.payload["n"])
        claimed[name] = mine

    threads = [threading.Thread(target=node, args=(f"node{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done = sorted(n for mine in claimed.values() for n in mine)
    if time.time() - claimed_at < lease:  # (a slow machine may outlast the lease: then -1 is fair game)
        assert done == list(range(60))  # each exactly once; the dead node's item still leased
        time.sleep(lease - (time.time() - claimed_at) + 0.2)
        survivor = WorkQueue(catalog.db, "survivor")
        back = survivor.claim("report")
        assert [w.payload["n"] for w in back] == [-1] and back[0].attempts == 2
        assert survivor.done(back[0])
    else:
        assert done in (list(range(60)), list(range(-1, 60)))
    assert not dead.done(held[0])  # the dead node's late "done" does not count
    time.sleep(max(0.0, lease - (time.time() - claimed_at)) + 0.2)
    for item in WorkQueue(catalog.db, "sweeper").claim("report"):  # whatever is left, once
        WorkQueue(catalog.db, "sweeper").done(item)
    assert WorkQueue(catalog.db).pending("report") == 0
    catalog.close()


def test_a_lease_has_one_holder_and_passes_on_when_it_runs_out(location):
    catalog = Catalog(location)
    a, b = Leases(catalog.db, "a"), Leases(catalog.db, "b")
    assert a.acquire("index:slides", ttl=3.0) == (True, None)
    assert a.save("index:slides", {"seq": 41})
    assert b.acquire("index:slides") == (False, None)
    assert not b.save("index:slides", {"seq": 0})
    time.sleep(3.2)
    assert b.acquire("index:slides") == (True, {"seq": 41})  # the state moves with it
    assert a.acquire("index:slides") == (False, None)
    assert b.holder("index:slides") == "b"
    catalog.close()


def test_every_node_gets_the_same_pseudonym_key(location):
    nodes = [Catalog(location) for _ in range(3)]
    keys = set()
    barrier = threading.Barrier(3)

    def get(c: Catalog) -> None:
        barrier.wait()
        keys.add(c.shared_secret("deid pseudonym key", 32))

    threads = [threading.Thread(target=get, args=(c,)) for c in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(keys) == 1 and len(next(iter(keys))) == 32
    for c in nodes:
        c.close()


def test_links_sealed_by_one_node_are_revealed_from_the_shared_vault(location, tmp_path):
    from deid.vault import CatalogLinkVault, generate_keypair

    private, public = generate_keypair()
    a, b = Catalog(location), Catalog(location)
    CatalogLinkVault(a.db, tmp_path / "a-audit.log").record("patient", "PSEUDO1", {"PatientID": "REAL-1"}, public)
    CatalogLinkVault(a.db, tmp_path / "a-audit.log").record("patient", "PSEUDO1", {"PatientID": "OTHER"}, public)
    vault = CatalogLinkVault(b.db, tmp_path / "broker-audit.log")
    assert vault.count() == 1  # the first record wins
    assert vault.reveal("PSEUDO1", private, who="broker") == {"PatientID": "REAL-1"}
    assert "REAL-1" not in (tmp_path / "broker-audit.log").read_text()
    a.close()
    b.close()


def test_queries_answer_the_same_on_both_backends(tmp_path, postgresql_url):
    """The matching rules (wildcards, ranges, fuzzy names, multi-valued modalities, paging) agree."""
    catalogs = [Catalog(tmp_path / "catalog.sqlite"), Catalog(postgresql_url)]
    slides = [slide_headers(n, seed=3) for n in range(12)]
    for c in catalogs:
        for i, headers in enumerate(slides):
            for ds in headers:
                c.add_instance(_new(ds), f"col{i % 3}")
    first = slides[0][0]
    name = str(first.PatientName)
    queries = [
        ("study", []), ("study", [("limit", "4"), ("offset", "3")]),
        ("study", [("PatientName", name[:3] + "*")]),
        ("study", [("PatientName", name.split("^")[-1][:2].lower()), ("fuzzymatching", "true")]),
        ("study", [("PatientID", str(first.PatientID))]),
        ("study", [("StudyDate", "19000101-20991231")]),
        ("study", [("ModalitiesInStudy", "SM")]), ("study", [("ModalitiesInStudy", "S?")]),
        ("series", [("Modality", "SM")]), ("series", [("SeriesDescription", "*a*")]),
        ("instance", [("SOPInstanceUID", str(slides[3][1].SOPInstanceUID))]),
        ("study", [("AccessionNumber", "")]),
        ("study", [("PatientName", "%_!*")]),  # LIKE's own characters are plain text in a DICOM match
    ]
    for level, params in queries:
        answers = [c.search(parse_qido(level, params), principal=SYSTEM) for c in catalogs]
        assert answers[0] == answers[1], (level, params)
    studies = len({str(h[0].StudyInstanceUID) for h in slides})
    assert len(catalogs[1].search(parse_qido("study", [("ModalitiesInStudy", "SM")]), principal=SYSTEM)) == studies
    for c in catalogs:
        c.delete(first.StudyInstanceUID, principal=SYSTEM)
    assert [len(c.search(parse_qido("study", []), principal=SYSTEM)) for c in catalogs] == [studies - 1] * 2
    assert [len(c.search(parse_qido("series", []), principal=SYSTEM)) for c in catalogs] == \
        [len([h for h in slides if h[0].StudyInstanceUID != first.StudyInstanceUID])] * 2
    for c in catalogs:
        c.close()


def test_deep_pages_from_the_study_tally_are_the_rows_offset_skips_to(location, monkeypatch):
    """A deep study page starts from the per-block study counts (archive/catalog/tally.py): the same
    rows as walking OFFSET rows, for every study and for one collection, after studies and
    collection memberships come and go (the triggers count them) and after the counts are folded."""
    catalog = Catalog(location)
    one = Principal("reader", "apikey", {"a": frozenset({"read"})})

    def add(s, keys: range, collections) -> None:
        s.executemany("INSERT INTO study(pk, study_instance_uid, patient_fk, collection, attrs) VALUES (?,?,1,'b',?)",
                      [(pk, f"1.2.3.{pk}", '{"0020000D":{"vr":"UI","Value":["1.2.3.%d"]}}' % pk) for pk in keys])
        s.executemany("INSERT INTO study_collection(study_fk, collection) VALUES (?,?)",
                      [(pk, c) for pk in keys for c in collections(pk)])

    with catalog.transaction() as s:  # studies keyed across many blocks of keys, with gaps
        s.execute("INSERT INTO collection(name) VALUES ('a'), ('b')")
        s.execute("INSERT INTO patient(pk, patient_id, issuer_of_patient_id) VALUES (1, 'P', '')")
        add(s, range(1, 9000, 23), lambda pk: ("a", "b") if pk % 3 else ("b",))

    def pages(principal) -> list:
        return [[s["0020000D"]["Value"][0] for s in catalog.search(
            parse_qido("study", [("limit", str(limit)), ("offset", str(offset))]), principal=principal)]
            for offset in (0, 1, 44, 45, 100, 389, 390, 391, 1000) for limit in (1, 7, 100)]

    def check() -> None:
        monkeypatch.setattr(tally, "MIN_OFFSET", 1 << 50)  # every page by skipping rows
        expected = {p.subject: pages(p) for p in (SYSTEM, one)}
        monkeypatch.setattr(tally, "MIN_OFFSET", 1)  # every page but the first from the tally
        assert {p.subject: pages(p) for p in (SYSTEM, one)} == expected
        assert any(expected[one.subject]) and expected[one.subject] != expected[SYSTEM.subject]

    check()
    with catalog.transaction() as s:
        s.execute("DELETE FROM study_collection WHERE study_fk < 3000 AND collection = 'a'")
        s.execute("DELETE FROM study_collection WHERE study_fk BETWEEN 4000 AND 5000")
        s.execute("DELETE FROM study WHERE pk BETWEEN 4000 AND 5000")
        add(s, range(9001, 12000, 7), lambda pk: ("a",))
    check()
    for collection in (tally.EVERYONE, "a"):
        tally.compact(catalog.db, collection)
        assert not tally.needs_compaction(catalog.db, collection)
    rows = catalog.db.execute("SELECT count(*) FROM study_tally WHERE collection='a'").fetchone()[0]
    assert rows <= 12000 // tally.BLOCK + 1  # one row per block of keys once folded
    check()
    catalog.close()


@pytest.mark.elasticsearch
def test_nodes_sharing_catalog_and_elasticsearch_apply_the_outbox_once(postgresql_url, es_node, tmp_path,
                                                                       monkeypatch):
    """Two index workers (two nodes) on one PostgreSQL catalog and one Elasticsearch index: the lease
    holder applies the outbox; when it dies the other takes over from the holder's cursor."""
    from es_node import elastic_index

    from indexer import worker as worker_module
    from indexer.state import IndexState
    from indexer.worker import IndexWorker

    monkeypatch.setattr(worker_module, "LEASE_SECONDS", 3.0)
    index = elastic_index(es_node.url)
    index.ensure()
    catalogs = [Catalog(postgresql_url), Catalog(postgresql_url)]
    workers = [IndexWorker(c, index, IndexState(tmp_path / f"state{i}.sqlite"), batch_size=5)
               for i, c in enumerate(catalogs)]
    slides = [slide_headers(n, seed=9) for n in range(4)]
    for ds in slides[0] + slides[1]:
        catalogs[0].add_instance(_new(ds), "c")
    first = len(slides[0]) + len(slides[1])
    assert workers[0].catch_up() == first
    assert workers[1].step() == 0  # the other node holds the outbox
    for ds in slides[2] + slides[3]:
        catalogs[1].add_instance(_new(ds), "c")
    # node 0 dies (stops renewing); once its lease runs out node 1 continues after node 0's last event
    time.sleep(3.2)
    assert workers[1].catch_up() == len(slides[2]) + len(slides[3])
    assert workers[0].step() == 0
    index.refresh()
    assert index.count() == 4
    index.es.indices.delete(index=f"{index.alias}*", ignore_unavailable=True)
    index.close()
    for c in catalogs:
        c.close()


@pytest.mark.parametrize("section, message", [
    ('url = "mysql://db/archive"', "must be"),
    ('url = "postgresql://"', "must be"),
    ("url = 5", "must be str"),
    ("pool_size = 0", "pool_size"),
    ("pool_timeout = 0", "pool_timeout"),
    ('host = "db"', "unknown keys: host"),
])
def test_catalog_configuration_mistakes_are_named(tmp_path, section, message):
    from archive.config import ConfigError, load_settings

    path = tmp_path / "config.toml"
    path.write_text(f"[catalog]\n{section}\n")
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(path)
    assert "[catalog]" in str(raised.value)


def test_a_catalog_url_keeps_its_password_out_of_messages():
    from archive.catalog.postgresql import redacted

    assert redacted("postgresql://archive:s3cret@db.example:5432/catalog") == \
        "postgresql://archive:***@db.example:5432/catalog"
    with pytest.raises(Exception) as raised:
        Catalog("postgresql://archive:s3cret@127.0.0.1:1/catalog", pool_timeout=1)
    assert "s3cret" not in str(raised.value)


@pytest.mark.elasticsearch
def test_nodes_creating_the_elasticsearch_index_at_once_make_one_writable_index(es_node):  # noqa: F811
    """Nodes starting together each find no index and create one: the alias must end up on exactly
    one index, or every write through it fails ("no write index") and nothing is ever searchable."""
    from es_node import elastic_index

    from indexer.elastic import ElasticIndex

    first = elastic_index(es_node.url)
    nodes = [first] + [ElasticIndex(first.config) for _ in range(3)]
    barrier = threading.Barrier(len(nodes))
    errors: list[Exception] = []

    def start(index: ElasticIndex) -> None:
        barrier.wait()
        try:
            index.ensure()
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(first.es.indices.get_alias(name=first.alias)) == 1
    assert nodes[-1].upsert([{"series_uid": "1.2.826.0.1.3680043.8.498.1", "kind": "slide"}]) == []
    first.refresh()
    assert first.count() == 1
    first.es.indices.delete(index=f"{first.alias}*", ignore_unavailable=True)
    for n in nodes:
        n.close()


def test_a_patient_row_deleted_between_its_conflict_and_its_read_makes_the_store_run_again(postgresql_url,
                                                                                          monkeypatch):
    """Found by test_nodes on PostgreSQL (stores on one node, deletes on the other): the patient row an
    ``INSERT ... ON CONFLICT DO NOTHING`` conflicted with was gone by the SELECT after it (a study delete
    removing its now-empty patient, READ COMMITTED), and add_instance failed on a TypeError: a 500.
    The other node's two commits are made here at those two moments; the store now runs again."""
    import contextlib

    node, other = Catalog(postgresql_url), Catalog(postgresql_url)
    ds = slide_headers(1, seed=8)[0]
    key = (str(ds.PatientID), "")
    steps: list[str] = []

    class Interfered:
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def execute(self, sql, params=()):
            result = self.session.execute(sql, params)
            if sql.startswith("SELECT pk FROM patient") and not steps:  # none yet: another node adds it
                other.db.execute("INSERT INTO patient(patient_id, issuer_of_patient_id) VALUES (?,?)", key)
                steps.append("inserted")
            elif sql.startswith("INSERT INTO patient") and steps == ["inserted"]:  # conflicted: it deletes it
                other.db.execute("DELETE FROM patient WHERE patient_id=? AND issuer_of_patient_id=?", key)
                steps.append("deleted")
            return result

    transaction = node.db.transaction

    @contextlib.contextmanager
    def interfered():
        with transaction() as session:
            yield Interfered(session)

    monkeypatch.setattr(node.db, "transaction", interfered)
    node.add_instance(_new(ds), "c")
    assert steps == ["inserted", "deleted"]
    assert [r.sop_instance_uid for r in node.instances(str(ds.StudyInstanceUID), principal=SYSTEM)] == \
        [str(ds.SOPInstanceUID)]
    for n in (node, other):
        n.close()

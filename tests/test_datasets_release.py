"""Releases on a real catalog and storage area (in process): the manifest is the stored bytes,
bad input changes nothing, deletes mark items withdrawn."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from archive.auth.access import SYSTEM, Principal
from archive.config import load_settings
from archive.errors import Conflict, InvalidRequest, NotFound
from archive.ingest import Origin
from archive.service import Archive
from datasets import model, release
import pg_cluster
from conftest import TEST_CATALOG
from slides import SlideSpec, make_slide

KEY = b"k" * 32
BODY = {"title": "Synthetic breast biopsies", "description": "Two generated slides of two cases.",
        "license": "CC-BY-4.0", "contributors": [{"name": "Doe, Jane", "orcid": "0000-0002-1825-0097"}]}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    root = tmp_path_factory.mktemp("dsrelease")
    config = root / "config.toml"
    text = '[deid]\ndefault = "identified"\n[deid.policies.identified]\nidentified = true\n[auth]\nenabled = false\n'
    if TEST_CATALOG == "postgresql":  # the suite run against PostgreSQL
        text += f'[catalog]\nurl = "{pg_cluster.shared_cluster().create_database()}"\n'
    config.write_text(text)
    a = Archive(load_settings(config, data_dir=root / "data"))
    for seed in (1, 2, 3):
        for f in make_slide(root / f"slide{seed}", SlideSpec(seed=seed, patient_id=f"PAT-{seed}", label=False)):
            a.store_file(f, Origin("import", collection="lung" if seed < 3 else "other"))
    return a


def series_uids(a: Archive, collection: str) -> list[str]:
    db = a.catalog._db()
    return [r[0] for r in db.execute("SELECT se.series_instance_uid FROM series se JOIN study_collection c "
                                     "ON c.study_fk=se.study_fk WHERE c.collection=? ORDER BY se.pk", (collection,))]


def rows(a: Archive, table: str) -> int:
    return a.catalog._db().execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_manifest_lists_every_stored_instance_with_the_stored_bytes_checksum(archive):
    model.create(archive.catalog, dict(BODY, id="lung-v", collection="lung"), "curator")
    r = release.freeze(archive.catalog, "lung-v", principal=SYSTEM, released_by="curator", key=KEY)
    manifest = release.load_manifest(archive.catalog, r.id)
    stored = {rec.sop_instance_uid: rec for uid in series_uids(archive, "lung")
              for rec in archive.catalog.instances(archive.catalog.series_study(uid, principal=SYSTEM), uid,
                                                   principal=SYSTEM)}
    assert {i.sop_instance_uid for i in manifest.items} == set(stored)
    for item in manifest.items:
        with archive.open(stored[item.sop_instance_uid]) as f:  # through the storage backend (disk or S3)
            data = f.read()
        assert (item.size, item.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert r.version == 1 and r.id == "lung-v:v1" and r.identifier == "urn:slidearchive:dataset:lung-v:v1"
    assert r.counts["slides"] == 2 and r.counts["cases"] == 2 and r.counts["size"] == sum(i.size for i in manifest.items)
    assert r.counts["sexes"] == {"F": 2} and r.counts["anatomic_sites"] == {"Breast": 2}
    assert r.manifest_sha256 == release.manifest_digest((i.sop_instance_uid, i.size, i.sha256) for i in manifest.items)
    assert all(c["case_id"].startswith("case-") and "PAT" not in c["case_id"] for c in manifest.cases)
    # the release's studies joined its collection (what a grant authorizes)
    for uid in series_uids(archive, "lung"):
        study = archive.catalog.series_study(uid, principal=SYSTEM)
        assert "dataset:lung-v:v1" in archive.catalog.study_collections(study)
    again = release.freeze(archive.catalog, "lung-v", principal=SYSTEM, released_by="curator", key=KEY)
    assert again.version == 2 and again.manifest_sha256 == r.manifest_sha256


def test_a_curator_releases_only_what_they_may_curate(archive):
    model.create(archive.catalog, dict(BODY, id="listed", series=series_uids(archive, "lung")[:1]
                                       + series_uids(archive, "other")), "curator")
    lung_curator = Principal("c", "apikey", {"lung": frozenset({"curator"})})
    with pytest.raises(Conflict, match="no longer stored"):
        release.freeze(archive.catalog, "listed", principal=lung_curator, released_by="c", key=KEY)
    model.remove_series(archive.catalog, "listed", series_uids(archive, "other"))
    r = release.freeze(archive.catalog, "listed", principal=lung_curator, released_by="c", key=KEY)
    assert r.counts["slides"] == 1


@pytest.mark.parametrize("body, error, word", [
    ({"id": "no-title"} | {k: v for k, v in BODY.items() if k != "title"}, InvalidRequest, "title is required"),
    (dict(BODY, id="Bad Id"), InvalidRequest, "id must be"),
    (dict(BODY, id="bad-licence", license="free for all!"), InvalidRequest, "license"),
    (dict(BODY, id="no-creator", contributors=[{"name": "X", "role": "contributor"}]), InvalidRequest, "creator"),
    (dict(BODY, id="bad-orcid", contributors=[{"name": "X", "orcid": "0000-0002-1825-0098"}]), InvalidRequest,
     "check digit"),
    (dict(BODY, id="bad-search", search="colour=red"), InvalidRequest, "unknown parameter"),
    (dict(BODY, id="unknown-series", series=["1.2.3.4.5"]), NotFound, "no series 1.2.3.4.5"),
    (dict(BODY, id="unknown-collection", collection="nope"), NotFound, "no collection"),
])
def test_bad_definitions_are_refused_and_store_nothing(archive, body, error, word):
    before = rows(archive, "dataset"), rows(archive, "dataset_series")
    with pytest.raises(error, match=word):
        model.create(archive.catalog, body, "curator")
    assert (rows(archive, "dataset"), rows(archive, "dataset_series")) == before


def test_release_of_an_empty_or_unknown_dataset_changes_nothing(archive):
    model.create(archive.catalog, dict(BODY, id="empty"), "curator")
    before = rows(archive, "dataset_release"), rows(archive, "release_item"), rows(archive, "study_collection")
    with pytest.raises(Conflict, match="selects no series"):
        release.freeze(archive.catalog, "empty", principal=SYSTEM, released_by="curator", key=KEY)
    with pytest.raises(NotFound, match="no dataset"):
        release.freeze(archive.catalog, "never-made", principal=SYSTEM, released_by="curator", key=KEY)
    assert (rows(archive, "dataset_release"), rows(archive, "release_item"), rows(archive, "study_collection")) == before


def test_a_deleted_slide_is_marked_withdrawn_not_dropped(archive):
    uid = series_uids(archive, "other")[0]
    model.create(archive.catalog, dict(BODY, id="other-v", collection="other"), "curator")
    r = release.freeze(archive.catalog, "other-v", principal=SYSTEM, released_by="curator", key=KEY)
    study = archive.catalog.series_study(uid, principal=SYSTEM)
    deleted = archive.delete(study, uid, None, SYSTEM)
    manifest = release.load_manifest(archive.catalog, r.id)
    assert {i.sop_instance_uid for i in manifest.items} == {d.sop_instance_uid for d in deleted}
    assert all(i.withdrawn and i.withdrawn_reason == release.DELETED for i in manifest.items)
    assert manifest.available == [] and release.get_release(archive.catalog, r.id).manifest_sha256 == r.manifest_sha256


@pytest.mark.parametrize("text, message", [
    ('[datasets]\ndoi_prefix = "doi:10.1234"\n', "is not a DOI prefix"),
    ('[datasets]\npublisher = ""\n', "publisher must be 1-200 characters"),
    ('[datasets]\nprefix = "10.1234"\n', "unknown keys: prefix"),
    ('[datasets]\ndoi_prefix = 10\n', "doi_prefix must be str"),
    ('[datasets]\nvisa_lifetime_seconds = 10\n', "visa_lifetime_seconds must be between 60 and 2592000"),
    ('[datasets]\nvisa_lifetime_seconds = "1h"\n', "visa_lifetime_seconds must be int"),
    ('[datasets]\nvisa_issuer = "archive.example.org"\n', "is not an http"),
    ('[datasets]\nvisa_key = 1\n', "visa_key must be str"),
])
def test_dataset_configuration_mistakes_are_named(tmp_path, text, message):
    from archive.config import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_a_doi_prefix_names_releases_as_dois(archive):
    from datasets import metadata

    model.create(archive.catalog, dict(BODY, id="with-doi", collection="lung"), "curator")
    r = release.freeze(archive.catalog, "with-doi", principal=SYSTEM, released_by="c", key=KEY, doi_prefix="10.12345")
    assert r.identifier == "10.12345/slidearchive.with-doi.v1"
    doc = metadata.datacite(r, "https://archive.example", "Example")
    assert (doc["doi"], doc["prefix"], doc["suffix"]) == (r.identifier, "10.12345", "slidearchive.with-doi.v1")
    assert metadata.citation(r, "Example").endswith("https://doi.org/10.12345/slidearchive.with-doi.v1")


def test_the_dataset_tables_are_created_by_postgresql_too(postgresql_url):
    """The tables are a numbered catalog migration: a PostgreSQL catalog has them once opened, and
    the conflict-tolerant inserts a release uses run there."""
    from archive.catalog import Catalog

    catalog = Catalog(postgresql_url)
    db = catalog.db
    db.execute("INSERT INTO dataset VALUES ('d1', 't', 'd', 'CC0-1.0', '', '[]', '[]', NULL, NULL, "
               "'2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', 'me')")
    db.execute("INSERT INTO dataset_release(id, dataset_id, version, identifier, collection, released_at, "
               "released_by, metadata, counts, manifest_sha256) VALUES ('d1:v1', 'd1', 1, 'urn:x', "
               "'dataset:d1:v1', 'now', 'me', '{}', '{}', 'abc')")
    db.execute("INSERT INTO release_item(release_id, sop_instance_uid, study_uid, series_uid, sop_class_uid, "
               "case_id, kind, size, sha256) VALUES ('d1:v1', '1.2', '1', '1.1', '1.2.3', 'case-1', 'slide', "
               "?, 'ff')", (5 * 2 ** 30,))
    assert tuple(db.execute("SELECT size FROM release_item").fetchone()) == (5 * 2 ** 30,)  # BIGINT: over 2 GB
    with pytest.raises(catalog.db.dialect.unique_violation):
        db.execute("INSERT INTO dataset_release(id, dataset_id, version, identifier, collection, released_at, "
                   "released_by, metadata, counts, manifest_sha256) VALUES ('d1:v1b', 'd1', 1, 'urn:y', "
                   "'c', 'now', 'me', '{}', '{}', 'abc')")
    catalog.close()


def test_a_saved_search_release_with_the_index_down_is_503_and_changes_nothing(archive, tmp_path):
    from archive.errors import Busy
    from conftest import free_port
    from indexer.factory import from_settings

    down = {"backend": "elasticsearch", "urls": [f"http://127.0.0.1:{free_port()}"]}
    model.create(archive.catalog, dict(BODY, id="by-search-down", search="collection=lung"), "curator")
    before = rows(archive, "dataset_release"), rows(archive, "release_item")
    with pytest.raises(Busy, match="retry the release later"):
        release.freeze(archive.catalog, "by-search-down", principal=SYSTEM, released_by="c", key=KEY,
                       open_index=lambda: from_settings(down, tmp_path)[1])
    assert (rows(archive, "dataset_release"), rows(archive, "release_item")) == before


def test_an_instance_removed_behind_the_archives_back_shows_withdrawn(archive):
    """``verify --repair`` drops catalog rows through the catalog alone: the release still tells."""
    model.create(archive.catalog, dict(BODY, id="repaired", collection="lung"), "curator")
    r = release.freeze(archive.catalog, "repaired", principal=SYSTEM, released_by="c", key=KEY)
    victim = release.load_manifest(archive.catalog, r.id).items[0]
    archive.catalog.remove_instance_row(victim.sop_instance_uid)
    items = {i.sop_instance_uid: i for i in release.load_manifest(archive.catalog, r.id).items}
    assert items[victim.sop_instance_uid].withdrawn_reason == release.NOT_STORED
    assert sum(i.withdrawn for i in items.values()) == 1

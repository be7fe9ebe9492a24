"""The frame path's cache of instance rows (archive/catalog/rowcache.py) answers from memory
only while nothing was committed to the SQLite catalog, by any connection of any process.

Statements are counted with SQLite's own trace callback on the connection the lookups use;
the commits that must end a kept row come from another process, as the command line's would.
Over real sockets, test_frames_fastpath.py checks the same on a two-worker server.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from archive.auth.access import SYSTEM, Principal
from archive.catalog import Catalog
from archive.catalog.rowcache import InstanceCache
from archive.config import load_settings
from archive.ingest import Origin
from archive.service import Archive

from conftest import REPO, SHARED_DATA

READER_A = Principal("reader", "apikey", {"a": frozenset({"read"})})


@pytest.fixture
def stored(tmp_path: Path):
    config = tmp_path / "slidearchive.toml"
    config.write_text('[catalog]\nurl = ""\n[deid]\ndefault = "identified"\n'
                      '[deid.policies.identified]\nidentified = true\n')
    archive = Archive(load_settings(config, data_dir=str(tmp_path / "data")))
    source = SHARED_DATA / "sm_image.dcm"
    archive.store_file(source, Origin("import", collection="a"))
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    cache = InstanceCache.for_catalog(archive.catalog)
    assert cache is not None
    try:
        yield archive, cache, ds
    finally:
        cache.close()
        archive.catalog.close()


def _statements(archive: Archive, call) -> tuple[object, int]:
    """``call()``'s result and the SQL statements it ran on this thread's catalog connection."""
    connection = archive.catalog.db._connections.get()
    ran: list[str] = []
    connection.set_trace_callback(ran.append)
    try:
        return call(), len(ran)
    finally:
        connection.set_trace_callback(None)


def _in_another_process(archive: Archive, code: str) -> None:
    script = (f"from archive.catalog import Catalog\nfrom archive.auth.access import SYSTEM\n"
              f"catalog = Catalog({str(archive.catalog.db.path)!r})\n{code}\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=120)


def test_a_kept_row_is_answered_without_sql_until_another_process_deletes_the_instance(stored):
    archive, cache, ds = stored
    sop = ds.SOPInstanceUID
    first, ran = _statements(archive, lambda: cache.instance(sop, principal=READER_A))
    assert first is not None and first.sop_instance_uid == sop and ran == 1
    again, ran = _statements(archive, lambda: cache.instance(sop, principal=READER_A))
    assert again == first and ran == 0

    _in_another_process(archive, f"catalog.delete({ds.StudyInstanceUID!r}, principal=SYSTEM)")
    gone, ran = _statements(archive, lambda: cache.instance(sop, principal=READER_A))
    assert gone is None and ran == 1
    assert archive.catalog.instance(sop, principal=SYSTEM) is None


def test_a_collection_change_elsewhere_ends_a_readers_kept_row(stored):
    archive, cache, ds = stored
    sop, study = ds.SOPInstanceUID, ds.StudyInstanceUID
    assert cache.instance(sop, principal=READER_A) is not None
    assert cache.instance(sop, principal=SYSTEM) is not None  # kept apart: another scope
    _in_another_process(archive, f"catalog.set_study_collection({study!r}, 'b')\n"
                                 f"catalog.set_study_collection({study!r}, 'a', member=False)")
    assert cache.instance(sop, principal=READER_A) is None
    assert cache.instance(sop, principal=SYSTEM) is not None
    assert cache.instance(sop, principal=Principal("other", "apikey", {"b": frozenset({"read"})})) is not None


def test_an_unknown_instance_is_asked_for_every_time(stored):
    archive, cache, _ = stored
    for _ in range(3):
        missing, ran = _statements(archive, lambda: cache.instance("1.2.3.4", principal=SYSTEM))
        assert missing is None and ran == 1


def test_a_commit_in_this_process_ends_a_kept_row_too(stored):
    archive, cache, ds = stored
    sop = ds.SOPInstanceUID
    assert cache.instance(sop, principal=READER_A) is not None
    archive.catalog.set_study_collection(ds.StudyInstanceUID, "a", member=True)  # a commit that changes nothing
    archive.catalog.set_study_collection(ds.StudyInstanceUID, "c")
    record, ran = _statements(archive, lambda: cache.instance(sop, principal=READER_A))
    assert record is not None and ran == 1


def test_a_postgresql_catalog_gets_no_cache(postgresql_url):
    catalog = Catalog(postgresql_url)
    try:
        assert InstanceCache.for_catalog(catalog) is None
    finally:
        catalog.close()

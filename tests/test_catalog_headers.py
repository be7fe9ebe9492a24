"""The index worker's headers read from stored files equal those parsed from the catalog's JSON.

``serve`` gives the worker's Catalog the storage paths, so ``series_headers`` reads each
header lazily from its stored file instead of parsing the stored DICOM JSON; the
documents built from either must be the same.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from archive.auth.access import SYSTEM
from archive.catalog import Catalog
from archive.config import load_settings
from archive.ingest import Origin
from archive.service import Archive
from indexer.documents import build_document

from conftest import SHARED_DATA
from slides import SlideSpec, make_slide


def test_documents_from_stored_files_equal_documents_from_json(tmp_path: Path) -> None:
    archive = Archive(load_settings(None, data_dir=tmp_path / "data"))
    slide = make_slide(tmp_path / "slide", SlideSpec(width=2048, height=1536))
    stored = [archive.store_file(p, Origin("import")) for p in slide]
    stored.append(archive.store_file(SHARED_DATA / "sm_image.dcm", Origin("import")))
    series = sorted({r.series_uid for r in stored if r.series_uid})
    assert len(series) >= 2
    from_files = Catalog(archive.settings.catalog_path, archive.storage.path)
    from_json = Catalog(archive.settings.catalog_path)
    for uid in series:
        a, b = from_files.series_headers(uid), from_json.series_headers(uid)
        assert len(a) == len(b) > 0
        collection = from_json.series_collection(uid)
        assert build_document(a, collection) == build_document(b, collection)


def test_an_instance_whose_file_is_gone_is_read_from_the_catalog(tmp_path: Path) -> None:
    archive = Archive(load_settings(None, data_dir=tmp_path / "data"))
    copy = tmp_path / "sm.dcm"
    shutil.copy(SHARED_DATA / "sm_image.dcm", copy)
    result = archive.store_file(copy, Origin("import"))
    record = archive.catalog.instance(result.sop_instance_uid, principal=SYSTEM)
    archive.storage.path(record.storage_id).unlink()
    headers = Catalog(archive.settings.catalog_path, archive.storage.path).series_headers(result.series_uid)
    assert [str(h.SOPInstanceUID) for h in headers] == [result.sop_instance_uid]

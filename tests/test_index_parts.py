"""The index worker's memos of instance parts (indexer/parts.py ``_parts_key``, ``_file_key``): a
stored instance gets the parts that reading its file gives, and the worker's documents stay those
built from the catalog's DICOM JSON (where nothing is memoized)."""
from __future__ import annotations

import copy

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from es_node import store_series
from indexer import parts
from indexer.embedded import EmbeddedIndex
from indexer.state import IndexState
from indexer.synthetic import annotation_headers, code, slide_headers
from indexer.worker import IndexWorker


class _Recording(Dataset):
    """A header that notes every top-level element asked of it."""

    def __init__(self, ds: Dataset, seen: set[int]):
        super().__init__()
        self._dict.update(ds._dict)
        object.__setattr__(self, "_seen", seen)

    def __getitem__(self, key):
        if isinstance(key, int):
            self._seen.add(int(key))
        return super().__getitem__(key)


def _headers() -> list[Dataset]:
    """Slides, their annotations, a segmentation, and copies that differ in one element read."""
    slide = slide_headers(0, seed=3)
    seg = copy.deepcopy(slide[0])
    seg.SOPClassUID, seg.SOPInstanceUID = parts.SEG_SOP_CLASS, generate_uid()
    segment = Dataset()
    segment.SegmentLabel, segment.SegmentNumber, segment.SegmentAlgorithmName = "tumour", 1, "SegNet"
    segment.SegmentedPropertyTypeCodeSequence = [code("SCT", "108369006", "Tumor")]
    seg.SegmentSequence = [segment]
    seg.ReferencedSeriesSequence = [Dataset()]
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = slide[0].SeriesInstanceUID
    out = [*slide, *slide_headers(1, seed=4), *annotation_headers(slide, 1), seg]
    for keyword, value in (("PatientAge", "041Y"), ("SeriesDescription", "another"), ("Manufacturer", "Other"),
                           ("StudyDate", "20200102"), ("PatientSex", "F"), ("AccessionNumber", "A2")):
        twin = copy.deepcopy(slide[0])
        setattr(twin, keyword, value)
        twin.SOPInstanceUID = generate_uid()
        out.append(twin)
    for _ in range(3):  # copies the memo answers
        twin = copy.deepcopy(slide[0])
        twin.SOPInstanceUID, twin.InstanceNumber = generate_uid(), 99
        out.append(twin)
    return out


def test_parts_read_no_top_level_element_outside_the_memo_key():
    seen: set[int] = set()
    for ds in _headers():
        parts._read_parts(_Recording(ds, seen), memo=False)
    keys = {int(t) for t in parts._READ_TAGS}
    assert seen and seen <= keys, sorted(pydicom.datadict.keyword_for_tag(t) for t in seen - keys)


def _write(ds: Dataset, path, syntax: str = ExplicitVRLittleEndian) -> None:
    ds = copy.deepcopy(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def stored(tmp_path):
    """(headers, a catalog of them, the same catalog reading each from its stored file as serve
    does, the files' directory); both catalogs closed at teardown."""
    from archive.catalog import Catalog

    headers = _headers()
    files = tmp_path / "files"
    files.mkdir()
    for ds in headers:
        _write(ds, files / f"sid-{ds.SOPInstanceUID}")
    plain = Catalog(tmp_path / "catalog.sqlite")
    store_series(plain, headers)
    from_files = Catalog(tmp_path / "catalog.sqlite", lambda sid: files / sid)
    yield headers, plain, from_files, files
    plain.close()
    from_files.close()


def test_memoized_parts_equal_the_parts_of_the_file(stored):
    headers, _, from_files, files = stored
    parts._parts_memo.clear()
    for ds in headers:
        got = parts.instance_parts(from_files.instance_header(ds.SOPInstanceUID, f"sid-{ds.SOPInstanceUID}"),
                                   memo=True)
        assert got == parts.instance_parts(pydicom.dcmread(files / f"sid-{ds.SOPInstanceUID}"))
    assert 0 < len(parts._parts_memo) <= len(headers) - 3  # the three copies were answered by the memo


def test_worker_documents_from_files_equal_those_from_the_catalog_json(stored, tmp_path):
    headers, plain, from_files, _ = stored
    docs = []
    for name, catalog in (("json", plain), ("files", from_files)):
        index = EmbeddedIndex(tmp_path / f"{name}.sqlite")
        state = IndexState(tmp_path / f"{name}-state.sqlite")
        IndexWorker(catalog, index, state, batch_size=1).catch_up()
        docs.append({uid: index.get(uid) for uid in {ds.SeriesInstanceUID for ds in headers}})
        index.close()
        state.close()
    assert docs[0] == docs[1]
    assert all(docs[0].values())


def test_file_memo_parses_a_header_only_for_new_bytes(stored, tmp_path):
    headers, _, from_files, _ = stored
    parts._file_memo.clear()
    parsed = []

    def header(ds: Dataset) -> Dataset | None:
        parsed.append(ds.SOPInstanceUID)
        return from_files.instance_header(ds.SOPInstanceUID, f"sid-{ds.SOPInstanceUID}")

    for ds in headers:
        path = from_files.stored_path(f"sid-{ds.SOPInstanceUID}")
        got = parts.stored_parts(path, lambda: header(ds))
        assert got == parts.instance_parts(pydicom.dcmread(path))
    assert len(parsed) == len(headers) - 3  # the three copies were not parsed
    assert parts.stored_parts(tmp_path / "gone", lambda: None) is None


def test_file_key_only_for_files_the_scan_reads_as_pydicom_does(tmp_path):
    ds = _headers()[0]
    _write(ds, tmp_path / "plain")
    assert parts._file_key(tmp_path / "plain") is not None
    _write(ds, tmp_path / "implicit", ImplicitVRLittleEndian)
    _write(ds, tmp_path / "deflated", DeflatedExplicitVRLittleEndian)
    undefined = copy.deepcopy(ds)
    undefined["OpticalPathSequence"].is_undefined_length = True
    _write(undefined, tmp_path / "undefined")
    long = copy.deepcopy(ds)
    long.SpecimenDescriptionSequence[0].SpecimenDetailedDescription = "x" * parts.MEMO_KEY_BYTES
    _write(long, tmp_path / "long")
    plain = (tmp_path / "plain").read_bytes()
    for n in range(130, len(plain), 7):  # cut at an element's end, the file is as pydicom reads it
        cut = tmp_path / f"cut{n}"
        cut.write_bytes(plain[:n])
        if parts._file_key(cut) is not None:
            got = parts.stored_parts(cut, lambda cut=cut: pydicom.dcmread(cut))
            assert got == parts.instance_parts(pydicom.dcmread(cut)), n
    (tmp_path / "other").write_bytes(b"\0" * 200)
    for name in ("implicit", "deflated", "undefined", "long", "other", "missing"):
        assert parts._file_key(tmp_path / name) is None, name
    assert parts.stored_parts(tmp_path / "long", lambda: pydicom.dcmread(tmp_path / "long")) \
        == parts.instance_parts(pydicom.dcmread(tmp_path / "long"))
    assert parts.stored_parts(tmp_path / "implicit", lambda: pydicom.dcmread(tmp_path / "implicit")) \
        == parts.instance_parts(pydicom.dcmread(tmp_path / "plain"))

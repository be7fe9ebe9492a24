"""DICOM JSON converted from unparsed element bytes equals pydicom's own conversion.

``archive.dicomjson.to_json`` converts elements (and whole sequences) pydicom has not
parsed straight from their bytes, for speed; this checks the answer is the same as
when every element has been parsed by pydicom first, on the shared test data and on
pydicom's own test files (other character sets, implicit VR, private and UN elements).
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from archive import dicomjson

from conftest import SHARED_DATA

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"  # the files installed with pydicom (no download)
PYDICOM_FILES = ["test_files/CT_small.dcm", "test_files/MR_small.dcm", "test_files/MR_small_implicit.dcm",
                 "test_files/rtplan.dcm", "test_files/rtdose_rle.dcm", "test_files/nested_priv_SQ.dcm",
                 "test_files/priv_SQ.dcm", "test_files/UN_sequence.dcm", "test_files/reportsi.dcm",
                 "test_files/reportsi_with_empty_number_tags.dcm", "test_files/empty_charset_LEI.dcm",
                 "test_files/ExplVR_BigEnd.dcm", "test_files/image_dfl.dcm",
                 "charset_files/chrH31.dcm", "charset_files/chrJapMulti.dcm", "charset_files/chrX1.dcm"]


def _parse_everything(ds: pydicom.Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_everything(item)


def _files() -> list[Path]:
    files = sorted(Path(SHARED_DATA).glob("*.dcm"))
    return files + [PYDICOM_DATA / name for name in PYDICOM_FILES]


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # rtdose_rle.dcm: a UID component with a leading 0
def test_json_from_bytes_equals_pydicom(path: Path) -> None:
    unparsed = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    parsed = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    _parse_everything(parsed)
    assert dicomjson.to_json(unparsed) == dicomjson.to_json(parsed)


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_a_sequence_seen_before_gives_the_same_json(path: Path) -> None:
    """The JSON of recent raw sequences is kept (the instances of a series share them): a
    second header with the same bytes gets the same answer, and pydicom's."""
    first = dicomjson.to_json(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    again = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    parsed = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    _parse_everything(parsed)
    assert dicomjson.to_json(again) == first == dicomjson.to_json(parsed)


def test_sequences_are_converted_without_pydicom_parsing_them() -> None:
    """The fast path is taken (else this module tests nothing new): a raw sequence stays raw."""
    path = next(p for p in _files() if p.name == "sm_image.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    raw_sequences = [t for t in ds.keys() if isinstance(ds.get_item(t), pydicom.dataelem.RawDataElement)
                     and ds.get_item(t).VR == "SQ"]
    assert raw_sequences
    dicomjson.to_json(ds)
    assert all(isinstance(ds.get_item(t), pydicom.dataelem.RawDataElement) for t in raw_sequences)


def _elements(ds: pydicom.Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)


def _same(ours: dict, theirs: dict) -> bool:
    """Equal, and each value of the same type (a UID stays a UID, an int is no float)."""
    return ours == theirs and [type(v) for v in ours.get("Value", [])] == [type(v) for v in theirs.get("Value", [])]


def _made_like_deid() -> pydicom.Dataset:
    """Elements as de-identification sets them: strings, UIDs, numbers, empty values, several strings."""
    ds = pydicom.Dataset()
    ds.PatientIdentityRemoved = "YES"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyDate = None
    ds.PatientSex = ""
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.DeidentificationMethod = ["one"]  # a single value in a MultiValue: pydicom's way
    ds.ReferencedFrameNumber = []
    ds.Rows = 0
    ds.SliceThickness = 1.5  # DS: pydicom's way
    ds.add_new(0x00280030, "DS", None)
    ds.add_new(0x00189219, "FD", 2.5)
    ds.add_new(0x0018604A, "SL", -3)
    ds.ReferringPhysicianName = None
    ds.AcquisitionDateTime = "20260101"
    return ds


@pytest.mark.parametrize("path", _files() + [None], ids=lambda p: p.name if p else "made-like-deid")
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_plain_converted_values_give_pydicoms_json(path: Path | None) -> None:
    """The shortcut for converted plain values (``_simple_value``) answers what pydicom's
    ``to_json_dict`` does, value types included, for every element it takes."""
    ds = _made_like_deid() if path is None else pydicom.dcmread(path, stop_before_pixels=True, force=True)
    taken = 0
    for elem in _elements(ds):
        ours = dicomjson._simple_value(elem.VR, elem.value)
        if ours is not None:
            taken += 1
            assert _same(ours, elem.to_json_dict(None, 1 << 30)), elem.tag
    assert taken >= 10 or path is not None  # the shortcut is taken where it is meant to be

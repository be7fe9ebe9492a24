"""Which DICOM JSON elements go into the instance row's attributes (Catalog.add_instance).

The choice is made from the data set's tags, through their keywords, minus the study and
series attributes and those excluded from rows; it is looked up per tag now, and must be
what the keyword sets gave.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import keyword_for_tag

from archive import dicomjson
from archive.catalog import core
from archive.catalog.attributes import EXCLUDED_FROM_ROWS, SERIES_ATTRIBUTES, STUDY_ATTRIBUTES, tag_hex

from conftest import SHARED_DATA

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"


def _by_keywords(ds: pydicom.Dataset, header_json: dict, keywords: frozenset[str] | set[str]) -> dict:
    tags = {tag_hex(k) for k in keywords}
    return {t: v for t, v in header_json.items() if t in tags}


def _files() -> list[Path]:
    return sorted(SHARED_DATA.glob("*.dcm")) + [PYDICOM_DATA / n for n in ("CT_small.dcm", "MR_small.dcm",
                                                                           "nested_priv_SQ.dcm", "rtplan.dcm")]


@pytest.mark.parametrize("path", _files() + [None], ids=lambda p: p.name if p else "private-and-empty")
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_row_attributes_are_those_the_keyword_sets_give(path: Path | None) -> None:
    if path is None:
        ds = pydicom.dcmread(PYDICOM_DATA / "MR_small.dcm")
        ds.add_new(0x00091001, "LO", "private")  # no keyword: never in the row
        ds.add_new(0x00081140, "SQ", [])  # Referenced Image Sequence, empty
    else:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    header_json = dicomjson.to_json(ds)
    study_tags, series_tags = core._level_tags()
    assert core._subset(header_json, study_tags) == _by_keywords(ds, header_json, STUDY_ATTRIBUTES)
    assert core._subset(header_json, series_tags) == _by_keywords(ds, header_json, SERIES_ATTRIBUTES)
    rest = {kw for kw in map(keyword_for_tag, ds.keys()) if kw} - STUDY_ATTRIBUTES - SERIES_ATTRIBUTES
    expected = _by_keywords(ds, header_json, rest - EXCLUDED_FROM_ROWS)
    got = core._subset(header_json, set(map(core._instance_tag, ds._dict)))
    assert got == expected and list(got) == list(expected)


def _emptied_like_deid(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Values as de-identification leaves them: converted UIDs, type 2 attributes emptied (None or "")."""
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.UID("1.2.3.4")
    ds.PatientBirthDate = None
    ds.StudyDate = ""
    ds.PatientSex = None
    ds.AccessionNumber = ""
    ds.StudyTime = None
    ds.PatientName = ""
    ds.ReferringPhysicianName = None
    ds.ModalitiesInStudy = None
    return ds


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
@pytest.mark.parametrize("emptied", [False, True], ids=["as-read", "emptied"])
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_key_columns_from_json_equal_those_from_the_data_set(path: Path, emptied: bool) -> None:
    """``column_values`` reads what the DICOM JSON settles (UIDs, emptied values included) and
    asks the data set for the rest: the same row values as asking the data set for every key."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if emptied:
        ds = _emptied_like_deid(ds)
    got = core.column_values(ds, dicomjson.to_json(ds))
    expected = {level: {} for level in got}
    for key, _, _ in core._KEY_TAGS:
        expected[key.level][key.column] = core.column_value(ds, key)
    assert got == expected
    assert all(type(v) in (str, int, type(None)) for level in got.values() for v in level.values())

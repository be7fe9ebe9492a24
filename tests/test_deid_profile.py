"""Table E.1-1 end to end: a marker in every attribute pydicom knows, at top level, nested, private.

The Basic Profile must leave no marker in the written bytes; each option must keep
exactly the attributes its column says K or C (and nothing else the Basic Profile
removes). The expectations are computed from the same JSON table the code uses, so
the test follows the standard, not the implementation's own lists.
"""
from __future__ import annotations

import io
import json
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import DicomDictionary, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage

from deid import Option, Policy, deidentify
from deid.table import load_table

TABLE = Path(__file__).resolve().parents[1] / "deid" / "standard" / "confidentiality_profile_attributes.json"
KEY = bytes(range(32))
NESTED_SEQ = 0x00400560  # Specimen Description Sequence: not in the table, so it is walked
PRIVATE_GROUP = 0x0009
# Whole-repeating-group rows the code cannot clean automatically (documented in docs/deid.md):
# overlay / curve bitmaps are removed even under Clean Graphics.
OVERLAY_DATA, OVERLAY_COMMENTS, CURVE_DATA = 0x60003000, 0x60004000, 0x50003000


def _rows() -> list[dict]:
    rows = []
    for row in json.loads(TABLE.read_text()):
        try:
            tag = int(row["id"], 16)
        except ValueError:
            continue
        if tag in DicomDictionary and tag >> 16 not in (0x0000, 0x0002):
            rows.append(dict(row, tag_int=tag))
    return rows


ROWS = _rows()


def _vr(tag: int) -> str:
    return DicomDictionary[tag][0].split(" or ")[0]


def marker(idx: int, layer: int, vr: str):
    """A value valid for the VR and distinct for (attribute, layer)."""
    n = idx + 1000 * layer
    text = f"MK{n:04d}"
    if vr in ("LO", "SH", "CS", "AE"):
        return text
    if vr == "PN":
        return f"{text}^GIVEN"
    if vr in ("LT", "ST", "UT", "UC"):
        return f"{text} free text"
    if vr == "UR":
        return f"urn:{text}"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.10.999.{100000 + n}"
    if vr == "DA":
        return (date(1950, 1, 1) + timedelta(days=n)).strftime("%Y%m%d")
    if vr == "TM":
        return f"120000.{n:06d}"
    if vr == "DT":
        return (date(1950, 1, 1) + timedelta(days=n)).strftime("%Y%m%d") + f"120000.{n:06d}"
    if vr in ("IS", "DS"):
        return str(900000 + n)
    if vr == "AS":
        return f"{n % 1000:03d}Y"
    if vr in ("US", "SS", "UL", "SL"):
        return 30000 + n
    if vr in ("FL", "FD"):
        return 30000.5 + n
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
        return f"{text}XX".encode()
    if vr == "AT":
        return 0x00091000 + n
    raise AssertionError(vr)


def _seq_item(idx: int, layer: int) -> Dataset:
    item = Dataset()
    item.PatientAddress = f"MK{idx + 1000 * layer:04d}SQ"
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.998.{100000 + idx + 1000 * layer}"
    return item


def plant(ds: Dataset, layer: int) -> dict[int, object]:
    """Put a marker in every table attribute; return tag -> planted value."""
    planted = {}
    for idx, row in enumerate(ROWS):
        tag = row["tag_int"]
        vr = _vr(tag)
        if vr == "SQ":
            ds.add(DataElement(tag, "SQ", Sequence([_seq_item(idx, layer)])))
            planted[tag] = "SQ"
            continue
        value = marker(idx, layer, vr)
        ds.add(DataElement(tag, vr, value))
        planted[tag] = value
    creator = f"MK{layer}CREATOR"
    ds.private_block(PRIVATE_GROUP, creator, create=True).add_new(0x10, "LO", f"MK{900 + layer:04d}PRIV")
    return planted


def marked_dataset() -> tuple[Dataset, dict[int, object], dict[int, object]]:
    ds = Dataset()
    top = plant(ds, 1)
    nested = Dataset()
    inner = plant(nested, 2)
    ds.add(DataElement(NESTED_SEQ, "SQ", Sequence([nested])))
    ds.add(DataElement(OVERLAY_DATA, "OW", b"MK7001XX"))
    ds.add(DataElement(OVERLAY_COMMENTS, "LT", "MK7002 overlay"))
    ds.add(DataElement(0x60000010, "US", 2))
    ds.add(DataElement(CURVE_DATA, "OB", b"MK7003XX"))
    # The instance itself (these are in the table too, but must be valid for the walk).
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = str(ds.SOPInstanceUID)
    return ds, top, inner


def written(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _byte_markers(planted: dict[int, object]) -> list[bytes]:
    out = []
    for value in planted.values():
        if isinstance(value, str) and (value.startswith("MK") or value.startswith("urn:") or value.startswith("1.2.826")):
            out.append(value.split("^")[0].split(" ")[0].removeprefix("urn:").encode())
        elif isinstance(value, bytes):
            out.append(value[:6])
    return out


def _values_by_tag(ds: Dataset) -> dict[int, list]:
    found: dict[int, list] = {}
    for elem in ds.iterall():
        found.setdefault(int(elem.tag), []).append(elem.value)
    return found


def test_every_attribute_is_known_to_pydicom() -> None:
    """All 617 exact-tag rows are known; 3 are command/file-meta (group 0000/0002) rows."""
    assert len(ROWS) == 614


def test_basic_profile_leaves_no_marker() -> None:
    ds, top, inner = marked_dataset()
    data_in = written(ds)
    out = deidentify(ds, Policy(name="basic", key=KEY)).dataset
    data = written(out)
    markers = _byte_markers(top) + _byte_markers(inner)
    markers += [b"MK0901PRIV", b"MK0902PRIV", b"MK7001", b"MK7002", b"MK7003", b"MK1CREATOR"]
    markers += [f"1.2.826.0.1.3680043.10.998.{100000 + i + 1000 * layer}".encode()
                for i in range(len(ROWS)) for layer in (1, 2)]
    assert all(m in data_in for m in markers[:10])  # the markers really are in the input bytes
    leaked = [m for m in markers if m in data]
    assert not leaked, leaked[:20]
    # Values that are not searchable as text (dates, numbers): compare per tag, everywhere.
    values = _values_by_tag(out)
    for planted in (top, inner):
        for tag, value in planted.items():
            if value == "SQ":
                continue
            assert value not in values.get(tag, []), keyword_for_tag(tag)
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert all(not (int(t) >> 16) & 1 for t in out.keys())


def _expected_kept(option: Option, tag: int) -> bool:
    rule = load_table().by_tag[tag]
    return rule.action({option}) in ("K", "C") and rule.basic not in ("K", "C")


OPTIONS_WITH_COLUMNS = [o for o in Option if o.column]


@pytest.mark.parametrize("option", OPTIONS_WITH_COLUMNS, ids=lambda o: o.policy_name)
def test_option_keeps_exactly_its_attributes(option: Option) -> None:
    ds, top, inner = marked_dataset()
    out = deidentify(ds, Policy(name=option.policy_name, key=KEY, options=frozenset({option}))).dataset
    written(out)  # must still be writable
    nested_out = out[NESTED_SEQ].value[0]
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", option.code]
    checked = 0
    for where, planted in ((out, top), (nested_out, inner)):
        for tag, value in planted.items():
            rule = load_table().by_tag[tag]
            action = rule.action({option})
            elem = where.get(tag)
            if _expected_kept(option, tag):
                checked += 1
                assert elem is not None, f"{option.policy_name} must keep {rule.name}"
                if action == "K" and value != "SQ":
                    assert elem.value == value, rule.name
                if action == "C" and _vr(tag) in ("DA", "DT"):
                    assert elem.value != value and len(str(elem.value)) == len(value), rule.name
            elif value != "SQ" and elem is not None:
                assert elem.value != value, f"{option.policy_name} must not keep {rule.name}"
    assert checked > 0 or option is Option.RETAIN_SAFE_PRIVATE
    # Private block: kept only if the shipped safe-private list names it (it is empty).
    assert all(not (int(t) >> 16) & 1 for t in out.keys())
    # Overlays and curves: removed even under Clean Graphics (needs a person; documented).
    assert OVERLAY_DATA not in out and CURVE_DATA not in out and OVERLAY_COMMENTS not in out


def test_modified_dates_shift_consistently() -> None:
    """One per-patient offset: the interval between two dates survives the shift."""
    ds, _, _ = marked_dataset()
    ds.PatientID = "PAT-X"
    ds.StudyDate = "20240301"
    ds.SeriesDate = "20240314"
    ds.AcquisitionDateTime = "20240314101500"
    opt = Option.RETAIN_LONGITUDINAL_MODIFIED_DATES
    out = deidentify(ds, Policy(name="m", key=KEY, options=frozenset({opt}))).dataset
    study = date.fromisoformat(f"{out.StudyDate[:4]}-{out.StudyDate[4:6]}-{out.StudyDate[6:]}")
    series = date.fromisoformat(f"{out.SeriesDate[:4]}-{out.SeriesDate[4:6]}-{out.SeriesDate[6:]}")
    assert (series - study).days == 13
    assert study != date(2024, 3, 1)
    assert out.AcquisitionDateTime == out.SeriesDate + "101500"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_full_dates_kept_and_flagged() -> None:
    ds, _, _ = marked_dataset()
    ds.StudyDate = "20240301"
    out = deidentify(ds, Policy(name="f", key=KEY,
                                options=frozenset({Option.RETAIN_LONGITUDINAL_FULL_DATES}))).dataset
    assert out.StudyDate == "20240301"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_clean_descriptors_scrubs_identifiers_from_kept_text() -> None:
    ds, _, _ = marked_dataset()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PAT-0001"
    ds.StudyDescription = "Breast core biopsy DOE^JANE PAT-0001"
    out = deidentify(ds, Policy(name="c", key=KEY, options=frozenset({Option.CLEAN_DESCRIPTORS}))).dataset
    assert "Breast core biopsy" in out.StudyDescription
    assert "DOE" not in out.StudyDescription and "PAT-0001" not in out.StudyDescription


def _text_item(text: str) -> Dataset:
    item = Dataset()
    item.ValueType = "TEXT"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121106", "DCM", "Comment"
    item.ConceptNameCodeSequence = Sequence([code])
    item.TextValue = text
    return item


@pytest.mark.parametrize("options, kept", [
    (frozenset(), False),
    (frozenset({Option.CLEAN_STRUCTURED_CONTENT}), True),
], ids=["basic", "clean_structured_content"])
def test_acquisition_context_content_items(options: frozenset, kept: bool) -> None:
    ds, _, _ = marked_dataset()
    ds.PatientName = "DOE^JANE"
    ds.AcquisitionContextSequence = Sequence([_text_item("scanned for DOE^JANE, fine focus")])
    out = deidentify(ds, Policy(name="p", key=KEY, options=options)).dataset
    if not kept:
        assert len(out.AcquisitionContextSequence) == 0  # X/Z on a type 2 sequence: emptied
        return
    text = out.AcquisitionContextSequence[0].TextValue
    assert "fine focus" in text and "DOE" not in text


def test_dummy_sequence_of_person_codes_hides_the_codes() -> None:
    """D on a sequence that is not structured content: every string in it is replaced."""
    ds, _, _ = marked_dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "EMP-4711", "99HOSP", "Dr. Who"
    ds.PersonIdentificationCodeSequence = Sequence([code])
    out = deidentify(ds, Policy(name="basic", key=KEY)).dataset
    data = written(out)
    assert b"EMP-4711" not in data and b"Dr. Who" not in data and b"99HOSP" not in data
    assert len(out.PersonIdentificationCodeSequence) == 1

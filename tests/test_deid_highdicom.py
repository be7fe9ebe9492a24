"""Objects written by highdicom still link up, and still load, after de-identification.

sm_annotations.dcm and seg_image_sm_control.dcm reference sm_image.dcm. De-identified
with the same key, their references must point at the de-identified sm_image, and
highdicom's from_dataset must accept the full de-identified files.
"""
from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from deid import Policy, deidentify
from deid.uids import is_well_known_uid

KEY = b"highdicom-test-key-0123456789abc"
POLICY = Policy(name="basic", key=KEY)


def store(path: Path) -> Dataset:
    """De-identify the header, put the original pixel data element back, write, read back."""
    out = deidentify(pydicom.dcmread(path, stop_before_pixels=True), POLICY).dataset
    full = pydicom.dcmread(path)
    if "PixelData" in full:
        out.add(full.get_item(0x7FE00010))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


@pytest.fixture(scope="module")
def stored(shared_data: Path) -> dict[str, Dataset]:
    return {name: store(shared_data / f"{name}.dcm") for name in ("sm_image", "sm_annotations", "seg_image_sm_control")}


def test_annotation_references_the_deidentified_image(stored: dict[str, Dataset], shared_data: Path) -> None:
    image, ann = stored["sm_image"], stored["sm_annotations"]
    original = pydicom.dcmread(shared_data / "sm_image.dcm", stop_before_pixels=True)
    assert image.SOPInstanceUID != original.SOPInstanceUID
    ref_series = ann.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == image.SeriesInstanceUID
    assert ref_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert ann.ReferencedImageSequence[0].ReferencedSOPClassUID == image.SOPClassUID
    assert ann.StudyInstanceUID == image.StudyInstanceUID


def test_segmentation_references_the_deidentified_image(stored: dict[str, Dataset]) -> None:
    image, seg = stored["sm_image"], stored["seg_image_sm_control"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert seg.FrameOfReferenceUID == image.FrameOfReferenceUID
    refs = {
        src.ReferencedSOPInstanceUID
        for group in (list(seg.get("SharedFunctionalGroupsSequence", [])) + list(seg.PerFrameFunctionalGroupsSequence))
        for der in group.get("DerivationImageSequence", [])
        for src in der.SourceImageSequence
    }
    assert refs == {image.SOPInstanceUID}


def test_highdicom_loads_the_deidentified_objects(stored: dict[str, Dataset]) -> None:
    image = hd.Image.from_dataset(stored["sm_image"])
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(stored["sm_annotations"])
    seg = hd.seg.Segmentation.from_dataset(stored["seg_image_sm_control"])
    assert image.get_frame(1).shape[0] == image.Rows
    assert len(ann.get_annotation_groups()) >= 1
    series_uid, sop_uid = image.SeriesInstanceUID, image.SOPInstanceUID
    assert any(uid[2] == sop_uid and uid[1] == series_uid for uid in seg.get_source_image_uids())
    assert seg.get_segment_numbers()


def test_no_original_uid_survives(stored: dict[str, Dataset], shared_data: Path) -> None:
    originals = set()
    for name in stored:
        for elem in pydicom.dcmread(shared_data / f"{name}.dcm", stop_before_pixels=True).iterall():
            value = str(elem.value or "")
            if elem.VR == "UI" and value and not is_well_known_uid(value) and "ClassUID" not in elem.keyword:
                originals.add(value)
    for name, ds in stored.items():
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        leaked = [u for u in originals if u.encode() in buf.getvalue()]
        assert not leaked, (name, leaked)


def test_specimen_preparation_text_is_replaced_codes_stay(stored: dict[str, Dataset], shared_data: Path) -> None:
    """TEXT content items (specimen ids, issuers) do not leak; identifier items match the header's dummy."""
    original = pydicom.dcmread(shared_data / "sm_image.dcm", stop_before_pixels=True)
    texts = {str(e.value) for e in original.iterall() if e.keyword == "TextValue" and e.value}
    assert texts
    out = stored["sm_image"]
    spec = out.SpecimenDescriptionSequence[0]
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    assert not [t for t in texts if len(t) > 3 and t.encode() in buf.getvalue()]
    identifiers = set()
    for step in spec.SpecimenPreparationSequence:
        for item in step.SpecimenPreparationStepContentItemSequence:
            concept = item.ConceptNameCodeSequence[0].CodeValue
            if item.ValueType == "TEXT":
                if concept in ("121041", "111705"):
                    identifiers.add(item.TextValue)
                else:
                    assert item.TextValue == "ANONYMIZED"
            if item.ValueType == "CODE":
                assert item.ConceptCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert spec.SpecimenIdentifier in identifiers
    assert all(i.startswith("ID") and len(i) == 16 for i in identifiers)

"""The document builder alone: DICOM headers in, one search document out."""
from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from indexer.documents import (FIELD_BY_NAME, SEG_SOP_CLASS, DocumentError, build_document, check, flatten,
                               free_text)
from indexer.synthetic import annotation_headers, code, slide_headers


def test_slide_document_fields():
    headers = slide_headers(5)
    doc = build_document(headers, "research")
    check(doc)
    assert doc["kind"] == "slide"
    assert doc["collection"] == "research"
    assert doc["series_uid"] == headers[0].SeriesInstanceUID
    assert doc["patient"] == {"id": headers[0].PatientID, "sex": headers[0].PatientSex,
                              "age": headers[0].PatientAge, "age_years": int(headers[0].PatientAge[:3]),
                              "species_codes": ["SCT:337915000"]}  # from PatientSpeciesCodeSequence
    assert doc["specimen"]["type_codes"] == ["SCT:430856003"]  # SpecimenTypeCodeSequence of the specimen item
    assert doc["study"]["date"] == headers[0].StudyDate
    assert doc["specimen"]["anatomy_codes"] == ["SCT:71854001"]  # colon, from PrimaryAnatomicStructureSequence
    assert doc["specimen"]["stain_codes"] == ["SCT:255176008"]  # from the "Using substance" step item
    assert "SCT:431510009" in doc["specimen"]["preparation_codes"]  # formalin fixation step
    assert doc["specimen"]["processing_types"] == ["Staining"]
    assert doc["specimen"]["container_type_codes"] == ["SCT:433466003"]
    assert doc["optical"]["illumination_type_codes"] == ["DCM:111744"]
    assert doc["scanner"] == {"manufacturer": "Acme Imaging", "model": "SlideScan 400", "software_versions": ["3.5"]}
    volumes = [h for h in headers if h.ImageType[2] == "VOLUME"]
    assert doc["pyramid"]["level_count"] == len(volumes)
    assert doc["pyramid"]["width"] == max(h.TotalPixelMatrixColumns for h in volumes)
    assert doc["pixel_spacing_um"] == pytest.approx(0.25)
    assert doc["pyramid"]["has_label"] == any(h.ImageType[2] == "LABEL" for h in headers)
    assert doc["ai"] == {"present": False, "annotation_count": 0, "group_count": 0}


def test_magnification_from_objective_lens_power():
    for n in range(30):
        headers = slide_headers(n)
        power = headers[0].OpticalPathSequence[0].get("ObjectiveLensPower")
        doc = build_document(headers)
        assert doc.get("magnification") == (float(power) if power else None)


def test_patient_name_only_in_qido_keys_and_not_in_free_text():
    headers = slide_headers(2)
    doc = build_document(headers)
    name = str(headers[0].PatientName)
    flat = flatten(doc)
    assert [k for k, v in flat.items() if v == name] == ["qido.PatientName"]
    assert name.split("^")[0].lower() not in free_text(doc).lower()


def test_qido_keys_as_the_catalog_stores_them():
    from archive.catalog import column_value
    from archive.catalog.attributes import KEYS

    headers = slide_headers(7)
    doc = build_document(headers)
    for keyword, value in doc["qido"].items():
        assert column_value(headers[0], KEYS[keyword]) == value, keyword


def test_ai_summary_from_annotations_referencing_the_slide():
    slide = slide_headers(3)
    ann = annotation_headers(slide, 1, "NucleiNet", "2.1")
    other = annotation_headers(slide_headers(4), 2)  # references another slide: ignored
    doc = build_document(slide, "c", ann + other)
    assert doc["ai"]["present"] is True
    assert doc["ai"]["algorithms"] == ["NucleiNet"]
    assert doc["ai"]["algorithm_versions"] == ["2.1"]
    assert doc["ai"]["annotation_count"] == 101 + 201
    assert doc["ai"]["group_counts"] == ["nuclei=101", "tumor=201"]
    assert doc["ai"]["property_type_codes"] == ["SCT:84640000", "SCT:108369006"]
    assert doc["ai"]["series_uids"] == [ann[0].SeriesInstanceUID]
    ann_doc = build_document(ann, "c")
    assert ann_doc["kind"] == "annotation" and ann_doc["references"] == [slide[0].SeriesInstanceUID]


def test_segmentation_summary():
    slide = slide_headers(3)
    seg = Dataset()
    seg.SOPClassUID = SEG_SOP_CLASS
    seg.SeriesInstanceUID = "2.25.777"
    ref = Dataset()
    ref.SeriesInstanceUID = slide[0].SeriesInstanceUID
    seg.ReferencedSeriesSequence = Sequence([ref])
    segments = []
    for i, label in enumerate(["tumor", "stroma"]):
        s = Dataset()
        s.SegmentNumber, s.SegmentLabel, s.SegmentAlgorithmType = i + 1, label, "AUTOMATIC"
        s.SegmentAlgorithmName = "TissueSeg"
        s.SegmentedPropertyTypeCodeSequence = Sequence([code("SCT", "108369006", "Neoplasm")])
        segments.append(s)
    seg.SegmentSequence = Sequence(segments)
    doc = build_document(slide, None, [seg])
    assert doc["ai"]["algorithms"] == ["TissueSeg"]
    assert doc["ai"]["group_counts"] == ["tumor=1", "stroma=1"]
    assert doc["ai"]["group_count"] == 2


def test_check_rejects_values_that_do_not_fit_the_mapping():
    doc = build_document(slide_headers(1))
    doc["pyramid"]["width"] = "wide"
    with pytest.raises(DocumentError) as e:
        check(doc)
    assert e.value.series_uid == doc["series_uid"]
    assert "pyramid.width" in str(e.value)
    doc = build_document(slide_headers(1))
    doc["unknown"] = 1
    with pytest.raises(DocumentError):
        check(doc)


def test_every_document_field_is_in_the_field_table():
    for n in range(20):
        headers = slide_headers(n)
        doc = build_document(headers, "c", annotation_headers(headers, 1))
        assert set(flatten(doc)) - {"mapping_version"} <= set(FIELD_BY_NAME)


def test_bad_dates_and_empty_values_are_dropped_not_fatal():
    headers = slide_headers(1)
    with warnings.catch_warnings():  # pydicom may warn about the invalid DA (depending on its settings)
        warnings.simplefilter("ignore")
        headers[0].StudyDate = "2020"
    headers[0].StudyDescription = ""
    doc = build_document(headers)
    check(doc)
    assert "study" not in doc  # both study fields dropped, so the object is gone too
    assert doc["qido"]["StudyDate"] == "2020"  # QIDO still sees what the catalog holds


def test_real_slide_files_from_the_generator(tmp_path):
    import slides

    spec = slides.SlideSpec(width=600, height=400, tile=128)
    paths = slides.make_slide(tmp_path, spec)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    doc = build_document(headers, "generated")
    check(doc)
    assert doc["kind"] == "slide"
    assert doc["pyramid"]["level_count"] == len(slides.level_sizes(spec))
    assert doc["pyramid"]["width"] == 600 and doc["pyramid"]["height"] == 400
    assert doc["pyramid"]["has_label"] and doc["pyramid"]["has_overview"]
    assert doc["pixel_spacing_um"] == pytest.approx(slides.BASE_SPACING_MM * 1000)

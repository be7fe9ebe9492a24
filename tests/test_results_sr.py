"""Comprehensive 3D SR measurement reports (TID 1500, what Slim saves) on slides, over a real server.

Reports are written with highdicom (an independent SR writer), sent by STOW-RS and
C-STORE, and must come back listed, indexed by finding, filterable and as GeoJSON
in the slide's pixel coordinates; broken reports are refused with a reason.
"""
from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pynetdicom import AE

from slides import SlideSpec, make_slide
from test_results_support import api, client, stow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
NEOPLASM = CodedConcept("108369006", "SCT", "Neoplasm")
STROMA = CodedConcept("47420005", "SCT", "Stroma")


@pytest.fixture(scope="module")
def slide(server, tmp_path_factory):
    """A stored slide and its level-0 header (the one a report names as evidence)."""
    paths = make_slide(tmp_path_factory.mktemp("slide"), SlideSpec(width=1000, height=700, tile=256))
    status, body = stow(server, paths)
    assert status == 200, body
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    level0 = max((h for h in headers if h.ImageType[2] == "VOLUME"), key=lambda h: h.TotalPixelMatrixColumns)
    return level0


def to_slide(header, pixels: np.ndarray) -> np.ndarray:
    """(column, row) pixel corners -> slide (x, y, 0) mm, the forward of the viewer's affine."""
    o = [float(v) for v in header.ImageOrientationSlide]
    s = [float(v) for v in header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    origin = header.TotalPixelMatrixOriginSequence[0]
    offset = np.array([float(origin.XOffsetInSlideCoordinateSystem), float(origin.YOffsetInSlideCoordinateSystem)])
    forward = np.array([[o[0] * s[1], o[3] * s[0]], [o[1] * s[1], o[4] * s[0]]])
    xy = (pixels - 0.5) @ forward.T + offset
    return np.column_stack([xy, np.zeros(len(xy))])


def report(header, regions: list[tuple[CodedConcept, str, np.ndarray]], observer: str = "Doe^Jane",
           frame_of_reference: str | None = None) -> pydicom.Dataset:
    """A TID 1500 report naming ``header`` as evidence; regions are (finding, graphic type, pixel points)."""
    groups = []
    for i, (finding, graphic, pixels) in enumerate(regions, 1):
        region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D[graphic],
                                     graphic_data=to_slide(header, np.asarray(pixels, dtype=float)),
                                     frame_of_reference_uid=frame_of_reference or header.FrameOfReferenceUID)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"ROI #{i}"),
            referenced_region=region, finding_type=finding))
    context = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=observer)))
    content = hd.sr.MeasurementReport(observation_context=context,
                                      procedure_reported=CodedConcept("112703", "DCM", "Whole Slide Imaging"),
                                      imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(evidence=[header], content=content, series_instance_uid=hd.UID(),
                                   series_number=90, sop_instance_uid=hd.UID(), instance_number=1,
                                   manufacturer="test writer")


def _save(ds, tmp_path, name="report.dcm"):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


SQUARE = [[100, 100], [300, 100], [300, 250], [100, 250], [100, 100]]
POINT = [[512.25, 333.5]]


def test_report_stored_listed_and_exported(server, slide, tmp_path):
    ds = report(slide, [(NEOPLASM, "POLYGON", SQUARE), (NEOPLASM, "POINT", POINT), (STROMA, "POLYGON", SQUARE)])
    status, body = stow(server, [_save(ds, tmp_path)])
    assert status == 200, body
    status, listed = api(server, "GET", f"/slides/{slide.SeriesInstanceUID}/results")
    assert status == 200
    found = [r for r in listed["results"] if r["sop_instance"] == ds.SOPInstanceUID]
    assert len(found) == 1
    result = found[0]
    assert result["kind"] == "SR" and result["sop_class"] == SR_CLASS
    assert result["creator"] == "Doe^Jane" and result["current"] is True
    groups = {(g["label"], g["graphic_type"]): g["annotation_count"] for g in result["groups"]}
    assert groups == {("Neoplasm", "POLYGON"): 1, ("Neoplasm", "POINT"): 1, ("Stroma", "POLYGON"): 1}

    status, back = api(server, "GET", f"/slides/{slide.SeriesInstanceUID}/annotations?instance={ds.SOPInstanceUID}")
    assert status == 200, back
    features = back["features"]
    assert [f["geometry"]["type"] for f in features] == ["Polygon", "Point", "Polygon"]
    # SCOORD3D GraphicData is float32 millimetres: about 1e-2 pixel at 0.25 um/pixel, 30 mm from the origin.
    assert np.allclose(features[0]["geometry"]["coordinates"][0], SQUARE, atol=0.02)
    assert np.allclose(features[1]["geometry"]["coordinates"], POINT[0], atol=0.02)
    assert features[2]["properties"]["classification"]["name"] == "Stroma"

    status, hits = api(server, "GET", "/results?kind=SR&property_type=Stroma")
    assert status == 200, hits
    assert [s["series"] for s in hits["slides"]] == [slide.SeriesInstanceUID]
    status, hits = api(server, "GET", "/results?kind=SR&property_type=Stroma&min_count=2")
    assert status == 200 and hits["slides"] == []


def test_report_retrievable_as_dicom(server, slide, tmp_path):
    ds = report(slide, [(NEOPLASM, "POLYGON", SQUARE)])
    status, body = stow(server, [_save(ds, tmp_path)])
    assert status == 200, body
    back = client(server).retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    parsed = hd.sr.Comprehensive3DSR.from_dataset(back)
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID
    region = back.ContentSequence[-1].ContentSequence[0].ContentSequence
    assert any(item.get("ValueType") == "SCOORD3D" for item in region)


def test_report_over_c_store(server, slide):
    ds = report(slide, [(STROMA, "POINT", POINT)])
    ae = AE(ae_title="SRTEST")
    ae.add_requested_context(SR_CLASS, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="SLIDEARCHIVE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    status, listed = api(server, "GET", f"/slides/{slide.SeriesInstanceUID}/results")
    assert ds.SOPInstanceUID in {r["sop_instance"] for r in listed["results"]}


def _refused(server, ds, tmp_path) -> tuple[int, str, str]:
    """(HTTP status, failure reason, error comment) of a STOW-RS of ``ds``, which must not be stored."""
    status, body = stow(server, [_save(ds, tmp_path, "bad.dcm")])
    failed = body.get("00081198", {}).get("Value", [{}])[0]
    assert not client(server).search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
    comment = failed.get("00000902", {}).get("Value", [""])[0]
    return status, str(failed.get("00081197", {}).get("Value", [""])[0]), comment


def test_report_on_unknown_slide_refused(server, slide, tmp_path):
    other = copy.deepcopy(slide)
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    ds = report(other, [(NEOPLASM, "POINT", POINT)])
    status, reason, comment = _refused(server, ds, tmp_path)
    assert status == 409 and reason == str(0xA900)
    assert "not in the archive" in comment, comment


def test_report_in_another_frame_of_reference_refused(server, slide, tmp_path):
    ds = report(slide, [(NEOPLASM, "POINT", POINT)], frame_of_reference=pydicom.uid.generate_uid())
    status, reason, comment = _refused(server, ds, tmp_path)
    assert status == 409 and reason == str(0xA900)
    assert "FrameOfReferenceUID differs" in comment, comment


def test_report_with_broken_region_refused(server, slide, tmp_path):
    ds = report(slide, [(NEOPLASM, "POLYGON", SQUARE)])
    group = ds.ContentSequence[-1].ContentSequence[0]
    region = next(i for i in group.ContentSequence if i.ValueType == "SCOORD3D")
    region.GraphicData = list(region.GraphicData)[:-1]  # no longer (x, y, z) triplets
    status, reason, comment = _refused(server, ds, tmp_path)
    assert status == 409 and reason == str(0xA900)  # STOW-RS: every part failed
    assert "GraphicData is not a list of finite" in comment, comment


def test_report_without_regions_refused(server, slide, tmp_path):
    ds = report(slide, [(NEOPLASM, "POINT", POINT)])
    ds.ContentSequence[-1].ContentSequence = []
    status, reason, comment = _refused(server, ds, tmp_path)
    assert status == 409 and reason == str(0xA900)  # STOW-RS: every part failed
    assert "no region of interest" in comment, comment


def test_other_sr_is_stored_as_any_instance(server, slide, tmp_path):
    """A Comprehensive 3D SR that is no TID 1500 report is not a result: stored, not listed."""
    ds = report(slide, [(NEOPLASM, "POINT", POINT)])
    ds.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    ds.ConceptNameCodeSequence[0].CodeMeaning = "Diagnostic imaging report"
    status, body = stow(server, [_save(ds, tmp_path, "other.dcm")])
    assert status == 200, body
    status, listed = api(server, "GET", f"/slides/{slide.SeriesInstanceUID}/results")
    assert ds.SOPInstanceUID not in {r["sop_instance"] for r in listed["results"]}

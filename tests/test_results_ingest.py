"""Results from another writer (highdicom's reference objects): checked on the way in, linked, served."""
from __future__ import annotations

import base64
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import MicroscopyBulkSimpleAnnotationsStorage

from archive.auth.access import SYSTEM
from test_results_support import api, client, stow

SLIDE_SERIES = "1.2.826.0.1.3680043.9.7433.3.57084118109582350083572639456817453"
STUDY = "1.2.826.0.1.3680043.9.7433.3.82970457260936734119270346325882945"


@pytest.fixture(scope="module")
def stored(server, shared_data):
    """Order matters: the results are refused until their slide is in."""
    status, body = stow(server, [shared_data / "sm_annotations.dcm"])
    assert status == 409, body
    status, body = stow(server, [shared_data / "sm_image.dcm"])
    assert status == 200, body
    status, body = stow(server, [shared_data / "sm_annotations.dcm", shared_data / "seg_image_sm_control.dcm"])
    assert status == 200, body
    return shared_data


def test_dangling_annotation_refused_with_reason(server, shared_data, tmp_path):
    ds = pydicom.dcmread(shared_data / "sm_annotations.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.save_as(tmp_path / "dangling.dcm")
    status, body = stow(server, [tmp_path / "dangling.dcm"])
    assert status == 409
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert not client(server).search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})


def test_dangling_annotation_refused_over_c_store(server, shared_data, stored):
    ds = pydicom.dcmread(shared_data / "sm_annotations.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.6"
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.6"
    ae = AE(ae_title="RESULTSTEST")
    ae.add_requested_context(MicroscopyBulkSimpleAnnotationsStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="SLIDEARCHIVE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xA900
    good = pydicom.dcmread(shared_data / "sm_annotations.dcm")
    good.SOPInstanceUID = pydicom.uid.generate_uid()
    good.file_meta.MediaStorageSOPInstanceUID = good.SOPInstanceUID
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="SLIDEARCHIVE")
    try:
        status = assoc.send_c_store(good)
    finally:
        assoc.release()
    assert status.Status == 0x0000


def test_annotation_arrays_must_agree_with_counts(server, stored, tmp_path):
    ds = pydicom.dcmread(stored / "sm_annotations.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AnnotationGroupSequence[0].NumberOfAnnotations = 3  # two points stored
    ds.save_as(tmp_path / "bad.dcm")
    status, body = stow(server, [tmp_path / "bad.dcm"])
    assert status == 409  # STOW-RS: every part failed
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    status, found = api(server, "GET", f"/slides/{SLIDE_SERIES}/results")
    assert ds.SOPInstanceUID not in {r["sop_instance"] for r in found["results"]}


def test_links_and_summary(server, stored):
    status, body = api(server, "GET", f"/slides/{SLIDE_SERIES}/results")
    assert status == 200
    kinds = sorted(r["kind"] for r in body["results"])
    assert "ANN" in kinds and "SEG" in kinds
    seg = next(r for r in body["results"] if r["kind"] == "SEG")
    assert seg["algorithm"] == {"name": "test", "version": "v1.0", "family": "Artificial Intelligence"}
    assert seg["current"] is True
    ann = next(r for r in body["results"] if r["kind"] == "ANN")
    assert ann["groups"][0]["label"] == "nuclei"
    assert ann["groups"][0]["annotation_count"] == 2
    assert ann["groups"][0]["property_type"]["meaning"] == "Nucleus"
    assert ann["groups"][0]["measurements"] == ["Area"]
    status, found = api(server, "GET", "/results?algorithm=test&kind=SEG")
    assert [s["series"] for s in found["slides"]] == [SLIDE_SERIES]
    status, found = api(server, "GET", "/results?property_type=Nucleus&min_count=2")
    assert SLIDE_SERIES in [s["series"] for s in found["slides"]]
    status, found = api(server, "GET", "/results?property_type=84640000&min_count=1000")
    assert found["slides"] == []


def test_qido_generic_matching_finds_results(server, stored):
    c = client(server)
    studies = c.search_for_studies(search_filters={"ModalitiesInStudy": "ANN"})
    assert STUDY in [s["0020000D"]["Value"][0] for s in studies]
    series = c.search_for_series(search_filters={"Modality": "SEG"})
    assert "1.2.826.0.1.3680043.8.498.93156109993260049645272267616949982096" in \
        [s["0020000E"]["Value"][0] for s in series]


def test_annotation_bulkdata_through_metadata_and_dicomweb_client(server, stored):
    original = pydicom.dcmread(stored / "sm_annotations.dcm")
    c = client(server)
    meta = c.retrieve_instance_metadata(STUDY, original.SeriesInstanceUID, original.SOPInstanceUID)
    group = meta["006A0002"]["Value"][0]
    # 32 bytes: inlined in metadata (<= 64); the bulkdata resource serves it all the same
    assert base64.b64decode(group["00660022"]["InlineBinary"]) == \
        original.AnnotationGroupSequence[0].DoublePointCoordinatesData
    uri = f"{server.dicomweb}/studies/{STUDY}/series/{original.SeriesInstanceUID}/instances/" \
          f"{original.SOPInstanceUID}/bulkdata/006A0002/0/00660022"
    data = c.retrieve_bulkdata(uri)[0]
    assert data == original.AnnotationGroupSequence[0].DoublePointCoordinatesData
    ds = Dataset.from_json(meta, bulk_data_uri_handler=lambda tag, vr, url: c.retrieve_bulkdata(url)[0])
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds)
    points = ann.get_annotation_groups()[0].get_graphic_data("2D")
    assert np.array_equal(np.concatenate(points), np.frombuffer(data, np.float64).reshape(-1, 2))


def test_segmentation_frames_served_like_tiles(server, stored):
    original = pydicom.dcmread(stored / "seg_image_sm_control.dcm")
    c = client(server)
    study, series, sop = STUDY, original.SeriesInstanceUID, original.SOPInstanceUID
    whole = c.retrieve_instance(study, series, sop)
    seg = hd.seg.Segmentation.from_dataset(whole)
    assert seg.segmentation_type.value == "BINARY"
    frames = c.retrieve_instance_frames(study, series, sop, list(range(1, int(original.NumberOfFrames) + 1)),
                                        media_types=("application/octet-stream",))
    expected = original.pixel_array  # (frames, rows, cols), 1-bit unpacked by pydicom
    for n, data in enumerate(frames):
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: 10 * 10].reshape(10, 10)
        assert np.array_equal(bits, expected[n])
    meta = c.retrieve_instance_metadata(study, series, sop)
    assert json.dumps(meta["7FE00010"]).find("BulkDataURI") > 0


def test_results_keep_references_after_deidentification(make_server, shared_data):
    server = make_server(dimse=False)  # default policy: de-identifying
    status, body = stow(server, [shared_data / "sm_image.dcm"])
    assert status in (200, 202), body
    status, body = stow(server, [shared_data / "sm_annotations.dcm", shared_data / "seg_image_sm_control.dcm"])
    assert status in (200, 202), body  # 202: coerced (a warning), not failed
    assert "00081198" not in body
    c = client(server)
    slide = c.search_for_series(search_filters={"Modality": "SM"})
    assert len(slide) == 1
    slide_series = slide[0]["0020000E"]["Value"][0]
    assert slide_series != SLIDE_SERIES  # pseudonymised
    status, found = api(server, "GET", f"/slides/{slide_series}/results")
    assert sorted(r["kind"] for r in found["results"]) == ["ANN", "SEG"]
    slide_study = slide[0]["0020000D"]["Value"][0]
    slide_sop = c.search_for_instances(slide_study, slide_series)[0]["00080018"]["Value"][0]
    ann = next(r for r in found["results"] if r["kind"] == "ANN")
    meta = c.retrieve_instance_metadata(ann["study"], ann["series"], ann["sop_instance"])
    ref = meta["00081115"]["Value"][0]["0008114A"]["Value"][0]["00081155"]["Value"][0]
    assert ref == slide_sop
    # the GeoJSON door builds from the de-identified header and keeps the reference intact
    status, made = api(server, "POST", f"/slides/{slide_series}/annotations",
                       {"geojson": {"type": "FeatureCollection", "features": [
                           {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}, "properties": {}}]},
                        "annotator": "Reader^One"})
    assert status == 201, made
    assert made["study"] == slide_study
    status, found = api(server, "GET", f"/slides/{slide_series}/results")
    assert made["sop_instance"] in {r["sop_instance"] for r in found["results"]}


def test_segmentation_in_another_frame_of_reference_refused(server, stored, tmp_path):
    ds = pydicom.dcmread(stored / "seg_image_sm_control.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "seg.dcm")
    status, body = stow(server, [tmp_path / "seg.dcm"])
    assert status == 409
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def test_segmentation_that_highdicom_cannot_read_refused(server, stored, tmp_path):
    ds = pydicom.dcmread(stored / "seg_image_sm_control.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.SegmentSequence
    ds.save_as(tmp_path / "seg.dcm")
    status, body = stow(server, [tmp_path / "seg.dcm"])
    assert status == 409  # every part failed
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def test_warn_policy_stores_dangling_result_with_warning(make_server, shared_data):
    server = make_server('[results]\ndangling_references = "warn"\n', dimse=False)
    status, body = stow(server, [shared_data / "sm_annotations.dcm"])
    assert status == 202, body
    item = body["00081199"]["Value"][0]
    assert item["00081196"]["Value"] == [0xB007]
    assert len(client(server).search_for_series(search_filters={"Modality": "ANN"})) == 1


def test_links_repaired_after_a_crash_between_commit_and_link(shared_data, tmp_path, monkeypatch):
    """In-process: linking is skipped (as if the process died right after the catalog commit); once
    the storing node's lease on the link work runs out, the next results read links them."""
    import time

    from archive.config import load_settings
    from archive.ingest import Origin
    from archive.results import links as result_links
    from archive.service import Archive

    config = tmp_path / "config.toml"
    config.write_text('[deid]\ndefault = "identified"\n[deid.policies.identified]\nidentified = true\n')
    store = Archive(load_settings(config, data_dir=str(tmp_path / "data")))
    monkeypatch.setattr(result_links, "LINK_LEASE", 0.5)
    with monkeypatch.context() as dead:
        dead.setattr(result_links, "record", lambda catalog, ds: None)
        for name in ("sm_image", "sm_annotations", "seg_image_sm_control"):
            store.store_file(shared_data / f"{name}.dcm", Origin("import"))
    held = store.catalog.db.execute("SELECT owner FROM work_item WHERE kind=?", (result_links.LINK_WORK,)).fetchall()
    assert [r[0] for r in held] == [store.catalog.node] * 2  # one work item per result, held by this node
    time.sleep(0.6)
    found = result_links.results_for_slide(store.catalog, SLIDE_SERIES, principal=SYSTEM)  # reads run sync first
    assert sorted(r["kind"] for r in found) == ["ANN", "SEG"]
    assert result_links.sync(store.catalog) == 0
    summary = result_links.results_summary(store.catalog, SLIDE_SERIES)
    assert summary["annotation_counts"]["Nucleus"] == 2
    assert summary["algorithms"] == [{"name": "test", "version": "v1.0", "family": "Artificial Intelligence"}]

"""STOW-RS, QIDO-RS and WADO-RS against a running web_server, through dicomweb-client (a real client)."""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread

import slides
from slides import SlideSpec, make_slide

VARIANTS = [
    SlideSpec(codec="jpeg", offset_table="bot", seed=11),
    SlideSpec(codec="jpeg", offset_table="eot", seed=12),
    SlideSpec(codec="jpeg", offset_table="empty", seed=13),
    SlideSpec(codec="jpeg", offset_table="bot", fragments_per_frame=3, seed=14),
    SlideSpec(codec="jpeg", offset_table="empty", fragments_per_frame=2, seed=15),
    SlideSpec(codec="native", seed=16),
    SlideSpec(codec="jpeg2000", offset_table="eot", seed=17),
    SlideSpec(codec="jpeg", tiling="TILED_SPARSE", seed=18),
    SlideSpec(codec="jpeg", concatenation_parts=2, seed=19),
]


@pytest.fixture(scope="module")
def client(web_server) -> DICOMwebClient:
    return DICOMwebClient(url=web_server.dicomweb)


@pytest.fixture(scope="module")
def stored(client, tmp_path_factory) -> dict[int, list]:
    """Every variant stored through STOW-RS: {variant index: [datasets as written]}."""
    out = {}
    for i, spec in enumerate(VARIANTS):
        paths = make_slide(tmp_path_factory.mktemp(f"v{i}"), spec)
        datasets = [dcmread(p) for p in paths]
        client.store_instances(datasets)
        out[i] = list(zip(paths, datasets))
    return out


@pytest.mark.parametrize("variant", range(len(VARIANTS)), ids=[
    f"{s.codec}-{s.offset_table}-{s.tiling}-frag{s.fragments_per_frame}-cat{s.concatenation_parts}" for s in VARIANTS])
def test_frames_byte_for_byte(client, stored, variant):
    for path, ds in stored[variant]:
        n = int(ds.get("NumberOfFrames", 1))
        numbers = list(range(1, n + 1))
        frames = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                                 numbers, media_types=(("application/octet-stream", "*"),))
        assert len(frames) == n
        for i, data in enumerate(frames):
            assert data == slides.expected_tile(path, i), f"{path.name} frame {i + 1}"


def test_concatenation_served_as_one_level_through_its_first_part(web_server, stored):
    parts = [(p, d) for p, d in stored[8] if "ConcatenationUID" in d]
    first = next(d for _, d in parts if d.InConcatenationNumber == 1)
    total = sum(int(d.NumberOfFrames) for _, d in parts)
    url = (f"{web_server.dicomweb}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances/"
           f"{first.SOPInstanceUID}/frames/{total}")
    r = requests.get(url, headers={"Accept": "image/jpeg"})
    assert r.status_code == 200
    last_path, last = max(parts, key=lambda t: t[1].InConcatenationNumber)
    assert r.content == slides.expected_tile(last_path, int(last.NumberOfFrames) - 1)
    beyond = requests.get(url.replace(f"/frames/{total}", f"/frames/{total + 1}"), headers={"Accept": "image/jpeg"})
    assert beyond.status_code == 400


def test_qido_levels_and_slide_attributes(client, stored):
    _, ds = stored[0][0]
    studies = client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID})
    assert len(studies) == 1
    study = studies[0]
    assert study["00201208"]["Value"] == [len(stored[0])]  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["SM"]
    series = client.search_for_series(ds.StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [ds.SeriesInstanceUID]
    assert series[0]["00400512"]["Value"] == [ds.ContainerIdentifier]
    instances = client.search_for_instances(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert len(instances) == len(stored[0])
    level0 = next(i for i in instances if i["00080018"]["Value"][0] == ds.SOPInstanceUID)
    for tag in ("00080008", "00480006", "00480007", "00280010", "00280011", "00280008", "00400512", "52009229"):
        assert tag in level0, tag
    assert level0["00480006"]["Value"] == [ds.TotalPixelMatrixColumns]
    spacing = level0["52009229"]["Value"][0]["00289110"]["Value"][0]["00280030"]["Value"]
    assert spacing == pytest.approx([float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing])
    assert level0["00081190"]["Value"][0].endswith(f"/instances/{ds.SOPInstanceUID}")


@pytest.mark.parametrize("filters, expect", [
    ({"PatientName": "DOE^JANE"}, True),
    ({"PatientName": "doe*"}, True),  # person names match case-insensitively
    ({"PatientName": "D?E^*"}, True),
    ({"PatientName": "SMITH*"}, False),
    ({"PatientID": "PAT-000?"}, True),
    ({"StudyDate": "20240101-20241231"}, True),
    ({"StudyDate": "-20231231"}, False),
    ({"StudyDate": "20240314-"}, True),
    ({"StudyTime": "0900-1000"}, True),
    ({"ModalitiesInStudy": "SM"}, True),
    ({"ModalitiesInStudy": "CT"}, False),
    ({"AccessionNumber": "ACC-0001"}, True),
])
def test_qido_matching(client, stored, filters, expect):
    _, ds = stored[0][0]
    found = client.search_for_studies(search_filters=filters)
    uids = {s["0020000D"]["Value"][0] for s in found}
    assert (ds.StudyInstanceUID in uids) is expect


def test_qido_fuzzy_uid_list_limit_offset_includefield(web_server, client, stored):
    a, b = stored[0][0][1], stored[1][0][1]
    found = client.search_for_studies(search_filters={"PatientName": "jan"}, fuzzymatching=True)
    assert {a.StudyInstanceUID, b.StudyInstanceUID} <= {s["0020000D"]["Value"][0] for s in found}
    found = client.search_for_studies(search_filters={"StudyInstanceUID": [a.StudyInstanceUID, b.StudyInstanceUID]})
    assert {s["0020000D"]["Value"][0] for s in found} == {a.StudyInstanceUID, b.StudyInstanceUID}
    everything = client.search_for_studies()
    assert len(everything) >= len(VARIANTS)
    page = client.search_for_studies(limit=2, offset=1)
    assert [s["0020000D"] for s in page] == [s["0020000D"] for s in everything[1:3]]
    full = client.search_for_series(a.StudyInstanceUID, fields=["all"])
    assert "00080070" in full[0]  # Manufacturer
    some = client.search_for_studies(search_filters={"StudyInstanceUID": a.StudyInstanceUID}, fields=["StudyDescription"])
    assert "00081030" in some[0]
    # percent-encoded parameters are decoded: DOE^JANE with ^ encoded
    with urllib.request.urlopen(f"{web_server.dicomweb}/studies?PatientName=DOE%5EJANE&StudyInstanceUID={a.StudyInstanceUID}") as r:
        assert len(json.load(r)) == 1


@pytest.mark.parametrize("query, fragment", [
    ("StudyDate=2024", "YYYYMMDD"),
    ("StudyDate=20240102-20240101", "after its end"),
    ("NoSuchKeyword=1", "unknown query key"),
    ("SeriesDescription=x", "cannot be matched in a study query"),
    ("limit=-1", "limit"),
    ("fuzzymatching=maybe", "fuzzymatching"),
    ("StudyInstanceUID=1.2.abc", "invalid StudyInstanceUID"),
    ("includefield=NotAKeyword", "includefield"),
])
def test_qido_invalid_query(web_server, query, fragment):
    r = requests.get(f"{web_server.dicomweb}/studies?{query}")
    assert r.status_code == 400
    assert fragment in r.json()["message"]


def test_metadata_from_catalog_with_bulkdata_uris(web_server, client, stored):
    path, ds = stored[0][0]
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
    pixel_uri = meta["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(web_server.dicomweb + "/studies/")
    icc_uri = meta["00480105"]["Value"][0]["00282000"]["BulkDataURI"]
    icc = client.retrieve_bulkdata(icc_uri)
    assert icc[0] == ds.OpticalPathSequence[0].ICCProfile
    series_meta = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert len(series_meta) == len(stored[0])
    study_meta = client.retrieve_study_metadata(ds.StudyInstanceUID)
    assert len(study_meta) == len(stored[0])


def test_metadata_uses_forwarded_host(web_server, stored):
    _, ds = stored[0][0]
    r = requests.get(f"{web_server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                     f"{ds.SOPInstanceUID}/metadata",
                     headers={"X-Forwarded-Host": "viewer.example.org", "X-Forwarded-Proto": "https"})
    assert r.json()[0]["7FE00010"]["BulkDataURI"].startswith("https://viewer.example.org/dicomweb/studies/")


def test_bulkdata_range(web_server, stored):
    path, ds = stored[5][0]  # native: the pixel data value is plain bytes
    url = (f"{web_server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
           f"{ds.SOPInstanceUID}/bulkdata/7FE00010")
    whole = requests.get(url, headers={"Accept": "application/octet-stream"})
    assert whole.status_code == 200 and whole.content == ds.PixelData
    part = requests.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == ds.PixelData[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(ds.PixelData)}"
    bad = requests.get(url, headers={"Accept": "application/octet-stream", "Range": f"bytes={len(ds.PixelData) + 5}-"})
    assert bad.status_code == 416


def test_retrieve_instances_as_stored(client, stored):
    path, ds = stored[1][0]
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.PixelData == ds.PixelData
    series = client.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert sorted(d.SOPInstanceUID for d in series) == sorted(d.SOPInstanceUID for _, d in stored[1])


def test_frames_media_types(web_server, stored):
    path, ds = stored[0][0]
    url = (f"{web_server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
           f"{ds.SOPInstanceUID}/frames/2")
    jpeg = requests.get(url, headers={"Accept": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.headers["Content-Type"].startswith("image/jpeg")
    assert jpeg.content == slides.expected_tile(path, 1)
    multi = requests.get(url, headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert multi.status_code == 200 and multi.headers["Content-Type"].startswith("multipart/related")
    # decoded on request: uncompressed RGB of the tile
    raw = requests.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"; '
                                               'transfer-syntax=1.2.840.10008.1.2.1'})
    assert raw.status_code == 200
    body = raw.content
    assert len(body) > 256 * 256 * 3
    refused = requests.get(url, headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert refused.status_code == 406
    assert "stored as" in refused.json()["message"]


def test_frames_uncompressed_via_client(client, stored):
    path, ds = stored[0][0]
    frames = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1],
                                             media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))
    arr = np.frombuffer(frames[0], dtype=np.uint8).reshape(256, 256, 3)
    expected = np.asarray(slides.level_image(VARIANTS[0], 0).crop((0, 0, 256, 256)).convert("RGB"))
    assert np.abs(arr.astype(int) - expected.astype(int)).mean() < 6


def test_rendered_and_thumbnail(web_server, stored):
    path, ds = stored[0][0]
    base = f"{web_server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    r = requests.get(f"{base}/instances/{ds.SOPInstanceUID}/frames/1/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    r = requests.get(f"{base}/instances/{ds.SOPInstanceUID}/rendered?viewport=200,150&quality=70")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(__import__("io").BytesIO(r.content)).size) <= 200
    r = requests.get(f"{base}/thumbnail?viewport=128,128", headers={"Accept": "image/png"})
    assert r.status_code == 200
    thumb = Image.open(__import__("io").BytesIO(r.content))
    assert max(thumb.size) == 128
    r = requests.get(f"{base}/instances/{ds.SOPInstanceUID}/rendered?viewport=0,0")
    assert r.status_code == 400


def test_cors_headers(web_server):
    r = requests.options(f"{web_server.dicomweb}/studies", headers={"Origin": "http://viewer.example",
                                                                "Access-Control-Request-Method": "GET"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    r = requests.get(f"{web_server.dicomweb}/studies", headers={"Origin": "http://viewer.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_shared_objects_from_another_implementation(client, shared_data):
    datasets = [dcmread(shared_data / n) for n in ("sm_image.dcm", "sm_annotations.dcm", "seg_image_sm_control.dcm")]
    client.store_instances(datasets)
    image = datasets[0]
    frames = client.retrieve_instance_frames(image.StudyInstanceUID, image.SeriesInstanceUID, image.SOPInstanceUID,
                                             [1, 2], media_types=(("application/octet-stream", "*"),))
    frame_size = image.Rows * image.Columns * 3
    assert frames[0] == image.PixelData[:frame_size]
    assert frames[1] == image.PixelData[frame_size:2 * frame_size]
    ann = datasets[1]
    meta = client.retrieve_instance_metadata(ann.StudyInstanceUID, ann.SeriesInstanceUID, ann.SOPInstanceUID)
    assert meta["00080016"]["Value"] == [ann.SOPClassUID]
    modalities = client.search_for_studies(search_filters={"StudyInstanceUID": image.StudyInstanceUID})[0]["00080061"]
    assert {"SM", "ANN", "SEG"} <= set(modalities["Value"])


def test_overlay_elements_are_kept_as_received(client):
    """Repeating-group elements (overlays, 60xx) have a keyword pydicom cannot map back to a tag:
    the catalog once looked their tags up by keyword and failed the STOW-RS with a TypeError."""
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("examples_overlay.dcm"))
    assert 0x60000010 in ds
    client.store_instances([ds])
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["60000010"]["Value"] == [ds[0x60000010].value]
    found = client.search_for_instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, fields=["60000010"])
    assert [i["00080018"]["Value"] for i in found] == [[ds.SOPInstanceUID]]
    assert found[0]["60000010"]["Value"] == [ds[0x60000010].value]


def test_delete_levels(client, web_server, tmp_path):
    paths = make_slide(tmp_path, SlideSpec(seed=99, width=512, height=512))
    datasets = [dcmread(p) for p in paths]
    client.store_instances(datasets)
    study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    r = requests.delete(f"{web_server.dicomweb}/studies/{study}/series/{series}/instances/{datasets[0].SOPInstanceUID}")
    assert r.status_code == 204
    assert len(client.search_for_instances(study, series)) == len(datasets) - 1
    assert requests.delete(f"{web_server.dicomweb}/studies/{study}").status_code == 204
    assert client.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
    assert requests.delete(f"{web_server.dicomweb}/studies/{study}").status_code == 404

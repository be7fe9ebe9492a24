"""Elements after the pixel data go through the profile too; the pixel data is still copied raw.

Digital Signatures Sequence (FFFA,FFFA) and Data Set Trailing Padding (FFFC,FFFC), both X
in PS3.15 Table E.1-1, and private groups above 7FE0 sort after Pixel Data (7FE0,0010).
Each variant (native explicit and implicit VR, encapsulated with an Extended Offset
Table, encapsulated with several fragments per frame) goes through a real server under
the Basic Profile over STOW-RS; then the stored file, the catalog, the logs and the
DICOMweb answers must hold none of the planted values, the frames must be byte for byte
what was sent, the stored file must parse and dciodvfy must find nothing new in it.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from archive.dicomfile import read_header
from deid import Option, Policy, deidentify
from slides import SlideSpec, expected_tile, make_slide
from test_results_support import stow

DCIODVFY = shutil.which("dciodvfy") or "dciodvfy"  # installed by scripts/test.sh (dicom3tools)
MARKER = re.compile(rb"MK8[0-9]{3}|1\.2\.826\.0\.1\.3680043\.10\.998\.")
#: A standard attribute the Basic Profile keeps (retired, unlisted in Table E.1-1), after the pixel data.
COEFFICIENTS_SDVN = 0x7FE00020
KEPT_VALUE = bytes(range(256)) * 2
VARIANTS = {
    "native-explicit": (SlideSpec(width=512, height=512, codec="native", tiling="TILED_SPARSE", levels=1,
                                  label=False, overview=False), False),
    "native-implicit": (SlideSpec(width=512, height=512, codec="native", tiling="TILED_SPARSE", levels=1,
                                  label=False, overview=False), True),
    "jpeg-eot": (SlideSpec(width=768, height=512, offset_table="eot", tiling="TILED_SPARSE", levels=1,
                           label=False, overview=False), False),
    "jpeg-fragments": (SlideSpec(width=768, height=512, offset_table="bot", fragments_per_frame=3, levels=1,
                                 label=False, overview=False), False),
}


def signature_item() -> Dataset:
    """One Digital Signatures Sequence item with text, UIDs and binary values to find."""
    item = Dataset()
    item.MACIDNumber = 1
    item.DigitalSignatureUID = "1.2.826.0.1.3680043.10.998.8001"
    item.DigitalSignatureDateTime = "20240314092653"
    item.CertificateType = "X509_1993_SIG"
    item.CertificateOfSigner = b"MK8002 certificate of DOE^JANE "
    item.Signature = b"MK8003 signature"
    item.CertifiedTimestampType = "CMS_TSP"
    item.CertifiedTimestamp = b"MK8004 timestamp"
    return item


def plant_after_pixel_data(ds: Dataset, padding: int, kept: bytes = KEPT_VALUE) -> None:
    """Elements that sort after (7FE0,0010): X in the table, private, and one the profile keeps."""
    ds.add(DataElement(0xFFFAFFFA, "SQ", Sequence([signature_item()])))
    pad = b"MK8005 padding " + b"\0" * padding + b"MK8006 end of padding"
    ds.add(DataElement(0xFFFCFFFC, "OB", pad + b"\0" * (len(pad) % 2)))
    ds.add(DataElement(0x7FE10010, "LO", "MK8007 PRIVATE CREATOR"))
    ds.add(DataElement(0x7FE11001, "LO", "MK8008 private text of DOE^JANE"))
    ds.add(DataElement(0x7FE11002, "UI", "1.2.826.0.1.3680043.10.998.8009"))
    ds.add(DataElement(0x80010010, "LO", "MK8010 CREATOR"))
    ds.add(DataElement(0x80011001, "OB", b"MK8011 private blob"))
    ds.add(DataElement(COEFFICIENTS_SDVN, "OW", kept))


def make_input(tmp: Path, name: str, padding: int = 64, kept: bytes = KEPT_VALUE) -> Path:
    spec, implicit = VARIANTS[name]
    level = make_slide(tmp / name, spec)[0]
    ds = pydicom.dcmread(level)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # one instance per test
    plant_after_pixel_data(ds, padding, kept)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = tmp / f"{name}.dcm"
    ds.save_as(out, enforce_file_format=True)
    data = out.read_bytes()
    assert data.index(b"MK8005") > data.index(b"\xe0\x7f\x10\x00")  # really after the pixel data element
    return out


def fresh_level(tmp: Path) -> Path:
    """An encapsulated level with nothing after its pixel data, under a new SOP Instance UID."""
    ds = pydicom.dcmread(make_slide(tmp / "level", VARIANTS["jpeg-eot"][0])[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp / "fresh.dcm", enforce_file_format=True)
    return tmp / "fresh.dcm"


def stored_sop(response: dict) -> tuple[str, str, str]:
    item = response["00081199"]["Value"][0]
    url = item["00081190"]["Value"][0]
    study = url.split("/studies/")[1].split("/")[0]
    series = url.split("/series/")[1].split("/")[0]
    return study, series, item["00081155"]["Value"][0]


def retrieve_instance(server, study: str, series: str, sop: str) -> bytes:
    r = requests.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
                     headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200, r.text
    boundary = r.headers["Content-Type"].split("boundary=")[1].strip('"')
    part = r.content.split(f"--{boundary}".encode())[1]
    return part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


def dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"\s+", " ", line.strip()) for line in lines if line.strip().startswith("Error")}


@pytest.fixture(scope="module")
def basic_server(tmp_path_factory):
    from conftest import Server

    server = Server(tmp_path_factory.mktemp("trailing"), "", dimse=False).start()  # default policy: Basic
    yield server
    server.stop()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_elements_after_pixel_data_are_deidentified(basic_server, tmp_path: Path, name: str) -> None:
    server = basic_server
    source = make_input(tmp_path, name)
    original = pydicom.dcmread(source)
    status, response = stow(server, [source])
    assert status in (200, 202), response  # 202: coerced by de-identification (0xB000)
    study, series, sop = stored_sop(response)
    data = retrieve_instance(server, study, series, sop)
    m = MARKER.search(data)
    assert m is None, f"{m.group()!r} stored"
    for where, kept in server.kept():
        m = MARKER.search(kept)
        assert m is None, f"{m.group()!r} in {where}"

    stored = pydicom.dcmread(io.BytesIO(data))  # parses, every element (no stop before the pixels)
    assert stored.PixelData == original.PixelData  # the pixel data element copied byte for byte
    for tag in (0xFFFAFFFA, 0xFFFCFFFC, 0x7FE10010, 0x7FE11001, 0x7FE11002, 0x80010010, 0x80011001):
        assert tag not in stored, hex(tag)
    assert stored[COEFFICIENTS_SDVN].value == KEPT_VALUE  # kept by the profile, re-encoded after the pixels
    assert list(stored.keys())[-1] == COEFFICIENTS_SDVN
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert stored.PatientIdentityRemoved == "YES"

    n = int(original.NumberOfFrames)
    frames = requests.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/"
                          + ",".join(str(i) for i in range(1, n + 1)),
                          headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert frames.status_code == 200
    boundary = frames.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    parts = [p.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
             for p in frames.content.split(f"--{boundary}".encode())[1:-1]]
    assert parts == [expected_tile(original, i) for i in range(n)]
    if "ExtendedOffsetTable" in original:
        assert stored.ExtendedOffsetTable == original.ExtendedOffsetTable
        by_eot = list(generate_frames(stored.PixelData, number_of_frames=n, extended_offsets=(
            stored.ExtendedOffsetTable, stored.ExtendedOffsetTableLengths)))
        assert by_eot == [expected_tile(original, i) for i in range(n)]
    bulk = requests.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010",
                        headers={"Accept": "application/octet-stream"})
    assert bulk.status_code == 200
    assert MARKER.search(bulk.content) is None
    if not original.file_meta.TransferSyntaxUID.is_encapsulated:
        assert bulk.content == original.PixelData

    meta = requests.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/metadata").json()[0]
    assert "FFFAFFFA" not in meta and "FFFCFFFC" not in meta and "7FE11001" not in meta
    kept = requests.get(meta["7FE00020"]["BulkDataURI"], headers={"Accept": "application/octet-stream"})
    assert kept.status_code == 200 and kept.content == KEPT_VALUE  # a kept element after the pixels, as bulk data

    stored_path = tmp_path / "stored.dcm"
    stored_path.write_bytes(data)
    assert not dciodvfy_errors(stored_path) - dciodvfy_errors(source)


def test_large_values_after_pixel_data(basic_server, tmp_path: Path) -> None:
    """8 MB of Data Set Trailing Padding is removed, a 1 MB element the profile keeps is kept whole."""
    server = basic_server
    big = bytes(range(256)) * 4096
    source = make_input(tmp_path, "jpeg-eot", padding=8 << 20, kept=big)
    status, response = stow(server, [source])
    assert status in (200, 202), response  # 202: coerced by de-identification (0xB000)
    study, series, sop = stored_sop(response)
    data = retrieve_instance(server, study, series, sop)
    assert MARKER.search(data) is None
    assert len(data) < source.stat().st_size - (8 << 20)
    stored = pydicom.dcmread(io.BytesIO(data))
    assert stored.PixelData == pydicom.dcmread(source).PixelData
    assert stored[COEFFICIENTS_SDVN].value == big


@pytest.mark.parametrize("options", [frozenset(), frozenset({Option.CLEAN_DESCRIPTORS})], ids=["basic", "clean"])
def test_large_values_after_pixel_data_are_read_only_when_kept(tmp_path: Path, options) -> None:
    """The header reader leaves values over 64 KB after the pixel data unread; the profile reads what it keeps."""
    big = bytes(range(256)) * 1024
    header = read_header(make_input(tmp_path, "jpeg-eot", padding=1 << 20, kept=big))
    assert header.pixel_end is not None and header.pixel_end < header.file_size
    ds = header.complete()
    assert ds.get_item(0xFFFCFFFC, keep_deferred=True).value is None  # not read by the header reader
    out = deidentify(ds, Policy(name="basic", key=b"trailing-test-key-0123456789abcd", options=options)).dataset
    assert ds.get_item(0xFFFCFFFC, keep_deferred=True).value is None  # removed without being read
    assert 0xFFFCFFFC not in out and 0xFFFAFFFA not in out and 0x7FE11001 not in out
    assert out[COEFFICIENTS_SDVN].value == big


@pytest.mark.parametrize("tail, expected", [
    (bytes(range(1, 11)), "unreadable bytes after the pixel data"),
    (b"\x08\x00\x20\x00DA\x08\x0020240101" + b"\xff" * 10, "unreadable bytes after the pixel data"),
    (b"\xfc\xff\xfc\xffOB\x00\x00\x00\x01\x00\x00MK8099", "truncated"),
], ids=["garbage", "bad-element", "truncated"])
def test_bad_bytes_after_pixel_data_are_refused(basic_server, tmp_path: Path, tail: bytes, expected: str) -> None:
    server = basic_server
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(fresh_level(tmp_path).read_bytes() + tail)
    status, response = stow(server, [bad])
    assert status in (400, 409), response
    assert expected in str(response) or expected in server.log_path.read_text(), response
    assert requests.get(f"{server.url}/health").status_code == 200
    assert b"MK8099" not in server.log_path.read_bytes()


def test_encapsulated_pixel_data_without_delimiter_is_refused(basic_server, tmp_path: Path) -> None:
    server = basic_server
    data = fresh_level(tmp_path).read_bytes()
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-8])
    status, response = stow(server, [cut])
    assert status in (400, 409), response
    assert "encapsulated pixel data truncated" in str(response)


BLANKING = """
[deid]
default = "blank"
[deid.policies.blank]
overview = "blank"
overview_label_area = [0, 0, 200, 200]
"""


def test_blanked_overview_elements_after_pixel_data(make_server, tmp_path: Path) -> None:
    """The overview whose label is blanked is re-encoded whole: its trailing elements still go through the profile."""
    server = make_server(BLANKING, dimse=False)
    spec = SlideSpec(width=512, height=512, levels=1, label=False, overview=True)
    overview = pydicom.dcmread(make_slide(tmp_path / "slide", spec)[-1])
    assert overview.ImageType[2] == "OVERVIEW" and overview.SpecimenLabelInImage == "YES"
    plant_after_pixel_data(overview, 64)
    source = tmp_path / "overview.dcm"
    overview.save_as(source, enforce_file_format=True)
    status, response = stow(server, [source])
    assert status in (200, 202), response
    data = retrieve_instance(server, *stored_sop(response))
    assert MARKER.search(data) is None
    stored = pydicom.dcmread(io.BytesIO(data))
    assert stored.BurnedInAnnotation == "NO" and stored.PixelData != overview.PixelData  # blanked
    assert 0xFFFAFFFA not in stored and 0xFFFCFFFC not in stored and 0x7FE11001 not in stored
    assert stored[COEFFICIENTS_SDVN].value == KEPT_VALUE
    for where, kept in server.kept():
        m = MARKER.search(kept)
        assert m is None, f"{m.group()!r} in {where}"


def test_deflated_elements_after_pixel_data(basic_server, tmp_path: Path) -> None:
    """A deflated instance is parsed whole: its trailing elements go through the profile, its pixels stay."""
    server = basic_server
    spec = SlideSpec(width=256, height=256, codec="native", levels=1, label=False, overview=False)
    ds = pydicom.dcmread(make_slide(tmp_path / "slide", spec)[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    plant_after_pixel_data(ds, 64)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    source = tmp_path / "deflated.dcm"
    ds.save_as(source, enforce_file_format=True)
    status, response = stow(server, [source])
    assert status in (200, 202), response
    data = retrieve_instance(server, *stored_sop(response))
    stored = pydicom.dcmread(io.BytesIO(data))
    assert stored.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    stored.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated, to search the bytes
    inflated = io.BytesIO()
    stored.save_as(inflated, enforce_file_format=True)
    m = MARKER.search(inflated.getvalue())
    assert m is None, f"{m.group()!r} stored"
    assert stored.PixelData == ds.PixelData
    assert 0xFFFAFFFA not in stored and 0xFFFCFFFC not in stored and 0x80011001 not in stored
    assert stored[COEFFICIENTS_SDVN].value == KEPT_VALUE

"""Malformed input answers a status and a message, the server stays up, storage and catalog stay consistent."""
from __future__ import annotations

import io
import subprocess
import sys
import uuid
import warnings

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

from slides import SlideSpec, make_slide

SM = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _multipart(parts: list[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow(server, parts: list[bytes], url_suffix: str = "") -> requests.Response:
    body, ctype = _multipart(parts)
    return requests.post(f"{server.dicomweb}/studies{url_suffix}", data=body,
                         headers={"Content-Type": ctype, "Accept": "application/dicom+json"})


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _verify(server) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", "verify", "--data-dir", str(server.data_dir),
                           "--config", str(server.config_path), "--checksums"], capture_output=True, text=True)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("slide"), SlideSpec(width=512, height=512, seed=41))


def _failure_reasons(response: requests.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def test_non_dicom_and_truncated_bytes(web_server, slide):
    whole = slide[0].read_bytes()
    r = _stow(web_server, [b"this is not DICOM at all" * 10, whole[: len(whole) // 2], whole[:200]])
    assert r.status_code == 409
    assert _failure_reasons(r) == [0xC000, 0xC000, 0xC000]
    assert "not a DICOM" in r.headers["Warning"]


def test_partial_success_is_202(web_server, slide):
    r = _stow(web_server, [slide[0].read_bytes(), b"garbage"])
    assert r.status_code == 202
    assert len(r.json()["00081199"]["Value"]) == 1 and _failure_reasons(r) == [0xC000]


@pytest.mark.parametrize("mutate, reason, text", [
    (lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3.abc"), 0xA900, "malformed SOPInstanceUID"),
    (lambda ds: setattr(ds, "StudyInstanceUID", "../../etc/passwd"), 0xA900, "malformed StudyInstanceUID"),
    (lambda ds: setattr(ds, "SeriesInstanceUID", "1." + "2" * 70), 0xA900, "malformed SeriesInstanceUID"),
    (lambda ds: delattr(ds, "StudyInstanceUID"), 0xA900, "missing StudyInstanceUID"),
    (lambda ds: setattr(ds, "SOPClassUID", "1.2.3.4.5.6"), 0x0122, "not a storage SOP class"),
])
def test_malformed_uids_and_unknown_sop_class(web_server, slide, mutate, reason, text):
    ds = dcmread(slide[1])
    ds.SOPInstanceUID = generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we write on purpose
        mutate(ds)
        if "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if "SOPClassUID" in ds:
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        data = _bytes(ds)
    r = _stow(web_server, [data])
    assert r.status_code == 409
    assert _failure_reasons(r) == [reason]
    assert text in r.headers["Warning"]


def test_study_in_url_must_match(web_server, slide):
    r = _stow(web_server, [slide[0].read_bytes()], "/1.2.3.4")
    assert r.status_code == 409 and _failure_reasons(r) == [0xA900]
    r = _stow(web_server, [slide[0].read_bytes()], "/not..a..uid")
    assert r.status_code == 400


def test_multipart_errors(web_server, slide):
    url = f"{web_server.dicomweb}/studies"
    r = requests.post(url, data=slide[0].read_bytes(), headers={"Content-Type": "multipart/related; type=\"application/dicom\""})
    assert r.status_code == 400 and "boundary" in r.json()["message"]
    r = requests.post(url, data=slide[0].read_bytes(), headers={"Content-Type": "application/dicom"})
    assert r.status_code == 415
    r = requests.post(url, data=b"--abc\r\nContent-Type: application/dicom\r\n\r\n" + slide[0].read_bytes()[:500],
                      headers={"Content-Type": "multipart/related; type=\"application/dicom\"; boundary=abc"})
    assert r.status_code == 400 and "truncated" in r.json()["message"]
    r = requests.post(url, data=b"no boundary inside",
                      headers={"Content-Type": "multipart/related; type=\"application/dicom\"; boundary=abc"})
    assert r.status_code == 400
    r = requests.post(url, data=b"", headers={"Content-Type": "multipart/related; type=\"application/dicom+json\"; boundary=abc"})
    assert r.status_code == 415


def test_duplicates(web_server, slide):
    data = slide[2].read_bytes()
    first = _stow(web_server, [data])
    assert first.status_code == 200
    again = _stow(web_server, [data])
    assert again.status_code == 200  # identical bytes: not an error
    ds = dcmread(slide[2])
    ds.SeriesDescription = "something else"
    other = _stow(web_server, [_bytes(ds)])
    assert other.status_code == 409 and _failure_reasons(other) == [0x0111]
    assert "already stored" in other.headers["Warning"]


def test_series_of_another_study(web_server, slide):
    """Found by fuzzing: an instance with a new study but a series held under another study was
    answered "stored" under its own study and filed under the other one (deleted with it)."""
    assert _stow(web_server, [slide[0].read_bytes()]).status_code in (200, 202)
    ds = dcmread(slide[1])
    held_study = ds.StudyInstanceUID
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    r = _stow(web_server, [_bytes(ds)])
    assert r.status_code == 409 and _failure_reasons(r) == [0xC000]
    assert "another study" in r.headers["Warning"]
    qido = f"{web_server.dicomweb}/instances"
    assert requests.get(qido, params={"SOPInstanceUID": ds.SOPInstanceUID}).json() == []
    assert requests.get(f"{web_server.dicomweb}/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}
                        ).json() == []  # the study row made for it went with the refusal
    held = requests.get(f"{web_server.dicomweb}/studies/{held_study}/series/{ds.SeriesInstanceUID}/instances")
    assert ds.SOPInstanceUID not in held.text
    result = _verify(web_server)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_retrieve_requests(web_server, slide):
    ds = dcmread(slide[0], stop_before_pixels=True)
    assert _stow(web_server, [slide[0].read_bytes()]).status_code in (200, 202)
    base = f"{web_server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    assert requests.get(f"{base}/frames/0").status_code == 400
    r = requests.get(f"{base}/frames/99999")
    assert r.status_code == 400 and "out of range" in r.json()["message"]
    assert requests.get(f"{base}/frames/1,x").status_code == 400
    r = requests.get(f"{base}/frames/1", headers={"Accept": "text/html"})
    assert r.status_code == 406
    assert requests.get(f"{base}/metadata", headers={"Accept": "application/xml"}).status_code == 406
    r = requests.get(f"{web_server.dicomweb}/studies/1.2.3/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1")
    assert r.status_code == 404  # the instance is not in that study
    assert requests.get(f"{web_server.dicomweb}/studies/..%2F..%2Fetc/metadata").status_code in (400, 404)
    assert requests.get(f"{base}/bulkdata/zzzz").status_code == 404
    assert requests.get(f"{web_server.dicomweb}/studies/1.2.3.4.5/metadata").status_code == 404
    r = requests.get(f"{web_server.dicomweb}/studies/{ds.StudyInstanceUID}",
                     headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'})
    assert r.status_code == 406


@pytest.mark.parametrize("key, value", [("PatientID", "a\x00b"), ("PatientName", "Doe\x00*"),
                                        ("ModalitiesInStudy", "SM\x00"), ("AccessionNumber", "\x07"),
                                        ("StudyDate", "2020\x00")])
def test_control_characters_in_query_values(web_server, slide, key, value):
    """A NUL (or other C0 control) in a matching value is no DICOM string: 400 naming the key, at every
    level. PostgreSQL refuses a NUL in a text parameter, which was answered 500."""
    for level in ("studies", "series", "instances"):
        r = requests.get(f"{web_server.dicomweb}/{level}", params={key: value})
        assert r.status_code == 400, (level, r.status_code, r.text)
        assert key in r.json()["message"] and "control character U+00" in r.json()["message"], r.text
    assert requests.get(f"{web_server.dicomweb}/studies", params={"PatientName": "\x1b$B*"}).status_code == 200  # ESC: ISO 2022


@pytest.mark.parametrize("path, key", [("/api/datasets", "q"), ("/datasets", "q"), ("/api/results", "algorithm"),
                                       ("/api/results", "version"), ("/api/search", "q")])
def test_control_characters_in_any_query_parameter(web_server, path, key):
    """The same for every route's parameters (they were 500 on PostgreSQL); the message names the parameter."""
    r = requests.get(f"{web_server.url}{path}", params={key: "a\x00b"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert f"query parameter '{key}': control character U+0000" in r.json()["message"], r.text
    assert requests.get(f"{web_server.url}{path}", params={key: "a\tb"}).status_code == 200


def test_catalog_and_storage_consistent_after_bad_input(web_server):
    assert requests.get(f"{web_server.url}/health").status_code == 200
    result = _verify(web_server)
    assert result.returncode == 0, result.stdout + result.stderr

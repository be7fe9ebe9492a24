"""What STOW-RS and C-STORE answer about each instance: UIDs, reasons in the body, truncation named.

PS3.18 10.5.3: Failed SOP Sequence items carry the Referenced SOP Class / Instance UID
when known and a Failure Reason; the archive adds the reason in words as Error Comment
(0000,0902), as a C-STORE response does. A de-identified (coerced) instance is a warning
(0xB000), in the body and in a `Warning` header.
"""
from __future__ import annotations

import uuid

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from slides import SlideSpec, make_slide

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
WARNING_COERCED, CANNOT_UNDERSTAND, DUPLICATE, NOT_SUPPORTED = 0xB000, 0xC000, 0x0111, 0x0122


@pytest.fixture(scope="module")
def deidentifying(tmp_path_factory):
    """A server on the embedded defaults: Basic Profile, pseudonymous UIDs."""
    from conftest import Server

    server = Server(tmp_path_factory.mktemp("server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("slide"), SlideSpec(width=512, height=512, seed=71, label=False,
                                                                 overview=False))


def _stow(server, parts: list[bytes]) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return requests.post(f"{server.dicomweb}/studies", data=body,
                         headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                                  "Accept": "application/dicom+json"})


def test_coerced_instances_warn_in_body_and_header(deidentifying, slide):
    client = DICOMwebClient(url=deidentifying.dicomweb)
    response = client.store_instances([dcmread(slide[0])])
    (item,) = response.ReferencedSOPSequence
    assert item.WarningReason == WARNING_COERCED
    assert "de-identified" in item[0x00000902].value
    assert item.ReferencedSOPInstanceUID.startswith("2.25.")  # as stored, pseudonymous
    raw = _stow(deidentifying, [slide[1].read_bytes()])
    assert raw.status_code == 202
    assert 'part 1: de-identified by policy basic' in raw.headers["Warning"]


def test_failed_items_name_the_instance_and_the_reason(deidentifying, slide):
    client = DICOMwebClient(url=deidentifying.dicomweb)
    original = dcmread(slide[0])
    changed = dcmread(slide[0])
    pixels = bytearray(changed.PixelData)
    pixels[-20] ^= 0xFF  # inside the last JPEG fragment: a different instance, same UIDs
    changed.PixelData = bytes(pixels)
    unsupported = dcmread(slide[1])
    unsupported.SOPClassUID = unsupported.file_meta.MediaStorageSOPClassUID = generate_uid()
    fresh = dcmread(slide[1])
    fresh.SOPInstanceUID = fresh.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    client.store_instances([original])
    response = client.store_instances([changed, unsupported, fresh])  # 202: one stored
    assert len(response.ReferencedSOPSequence) == 1
    duplicate, refused = response.FailedSOPSequence
    assert duplicate.FailureReason == DUPLICATE
    assert duplicate.ReferencedSOPClassUID == VL_WSI
    assert duplicate.ReferencedSOPInstanceUID.startswith("2.25.")
    assert duplicate.ReferencedSOPInstanceUID != original.SOPInstanceUID  # never the original identifier
    assert "different instance" in duplicate[0x00000902].value
    assert refused.FailureReason == NOT_SUPPORTED
    assert refused.ReferencedSOPClassUID == unsupported.SOPClassUID
    assert refused.ReferencedSOPInstanceUID.startswith("2.25.")
    assert refused.ReferencedSOPInstanceUID != unsupported.SOPInstanceUID
    # the duplicate names the instance the archive holds under that (pseudonymous) UID
    held = client.search_for_instances(search_filters={"SOPInstanceUID": duplicate.ReferencedSOPInstanceUID})
    assert len(held) == 1


def test_truncated_parts_are_cannot_understand(deidentifying, slide):
    whole = slide[0].read_bytes()
    r = _stow(deidentifying, [whole[:700], whole[:-50]])
    assert r.status_code == 409
    items = r.json()["00081198"]["Value"]
    assert [i["00081197"]["Value"][0] for i in items] == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    for item in items:
        assert "truncated" in item["00000902"]["Value"][0]
    # cut inside the pixel data, the header told which instance it was
    assert items[1]["00081150"]["Value"] == [VL_WSI]
    assert items[1]["00081155"]["Value"][0].startswith("2.25.")
    assert "does not match SOP class" not in r.headers["Warning"]


def test_c_store_of_a_truncated_data_set_is_cannot_understand(deidentifying, slide, monkeypatch):
    """A sender whose data set ends inside an element. pynetdicom and storescu re-encode a cut file
    into a whole, shorter data set, so pynetdicom's encoder is made to hand over the cut bytes."""
    import pynetdicom.association
    from pynetdicom.dsutils import split_dataset

    header = dcmread(slide[0], stop_before_pixels=True)
    _, offset = split_dataset(slide[0])
    raw = slide[0].read_bytes()[offset:901]  # inside the header: read alone, it looks like missing UIDs
    monkeypatch.setattr(pynetdicom.association, "encode", lambda *args: raw)
    ae = AE(ae_title="NEWUSER")
    ae.add_requested_context(VL_WSI, header.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", deidentifying.dimse_port, ae_title="SLIDEARCHIVE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(header)
    finally:
        assoc.release()
    assert status.Status == CANNOT_UNDERSTAND
    assert "truncated" in status.ErrorComment

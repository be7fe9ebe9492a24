"""C-ECHO and C-STORE with DCMTK's echoscu/storescu; what was stored is found by QIDO-RS and served by WADO-RS."""
from __future__ import annotations

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from slides import SlideSpec, expected_tile, make_slide
from test_dimse_tools import PROPOSE, assert_healthy, echo_ok, needs_dcmtk, store

pytestmark = needs_dcmtk

#: WADO-RS media type that asks for frames exactly as stored.
FRAME_MEDIA = {"jpeg": ("image/jpeg", "1.2.840.10008.1.2.4.50"),
               "native": ("application/octet-stream", "1.2.840.10008.1.2.1"),
               "jpeg2000": ("image/jp2", "1.2.840.10008.1.2.4.90")}


def test_echo(server):
    assert echo_ok(server)


@pytest.mark.parametrize("codec", ["jpeg", "native", "jpeg2000"])
def test_store_slide_then_qido_and_frames(server, tmp_path, codec):
    spec = SlideSpec(width=700, height=500, codec=codec, seed=11 + len(codec),
                     patient_id=f"DIMSE-STORE-{codec}", accession=f"ST-{codec}")
    paths = make_slide(tmp_path / codec, spec)
    result = store(server, tmp_path / codec, options=PROPOSE[codec])
    assert result.returncode == 0, result.stdout + result.stderr

    client = DICOMwebClient(url=server.dicomweb)
    found = client.search_for_instances(search_filters={"PatientID": f"DIMSE-STORE-{codec}"})
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    assert {i["00080018"]["Value"][0] for i in found} == set(sent)

    level0 = pydicom.dcmread(paths[0])
    media = FRAME_MEDIA[codec]
    count = int(level0.NumberOfFrames)
    for number in sorted({1, count // 2 + 1, count}):
        frames = client.retrieve_instance_frames(level0.StudyInstanceUID, level0.SeriesInstanceUID,
                                                 level0.SOPInstanceUID, frame_numbers=[number],
                                                 media_types=(media,))
        assert frames[0] == expected_tile(level0, number - 1), f"frame {number} differs"


def test_store_received_as_sent(server, tmp_path):
    """Stored as received: the stored file's data set is byte-identical after the file meta."""
    paths = make_slide(tmp_path / "s", SlideSpec(width=300, height=300, seed=41, patient_id="DIMSE-ASIS",
                                                 label=False, overview=False))
    assert store(server, tmp_path / "s", options=PROPOSE["jpeg"]).returncode == 0
    from archive.auth.access import SYSTEM
    from archive.catalog import Catalog

    catalog = Catalog(server.catalog_location)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        record = catalog.instance(ds.SOPInstanceUID, principal=SYSTEM)
        assert record is not None and record.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert _body(server.stored_file(record.storage_id)) == _body(path)


def _body(path) -> bytes:
    """The data set bytes after the File Meta Information group."""
    data = path.read_bytes()
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value, after preamble + DICM + header
    return data[144 + meta_length:]


def test_store_shared_objects(server, shared_data):
    """Objects written by another implementation (highdicom): slide, then the annotations and
    segmentation that reference it."""
    files = [shared_data / n for n in ("sm_image.dcm", "sm_annotations.dcm", "seg_image_sm_control.dcm")]
    result = store(server, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    client = DICOMwebClient(url=server.dicomweb)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        hits = client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
        assert len(hits) == 1 and hits[0]["00080016"]["Value"][0] == ds.SOPClassUID
    assert_healthy(server)


def test_store_again_is_success(server, tmp_path):
    """Re-sending an identical instance is not an error (a scanner retrying after a lost response)."""
    make_slide(tmp_path / "s", SlideSpec(width=256, height=256, seed=43, patient_id="DIMSE-AGAIN",
                                         label=False, overview=False))
    assert store(server, tmp_path / "s", options=PROPOSE["jpeg"]).returncode == 0
    again = store(server, tmp_path / "s", options=PROPOSE["jpeg"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert_healthy(server)


def test_series_of_another_study_is_refused(server, tmp_path):
    """A new study naming a series held under another study: a failure with a reason, nothing filed."""
    make_slide(tmp_path / "s", SlideSpec(width=256, height=256, seed=44, patient_id="DIMSE-TWO-STUDIES",
                                         label=False, overview=False))
    first = sorted((tmp_path / "s").iterdir())[0]
    assert store(server, first, options=PROPOSE["jpeg"]).returncode == 0
    ds = pydicom.dcmread(first)
    ds.StudyInstanceUID, ds.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "other.dcm")
    refused = store(server, tmp_path / "other.dcm", options=[*PROPOSE["jpeg"], "-d"])
    out = refused.stdout + refused.stderr
    assert "0xc000: Error: Cannot understand" in out and "belongs to a series of another study" in out, out[-3000:]
    client = DICOMwebClient(url=server.dicomweb)
    assert not client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
    assert not client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID})
    assert_healthy(server)


def test_many_senders_at_once(server, tmp_path):
    """Several scanners sending at the same time: every association is served, every slide stored."""
    import subprocess

    from test_dimse_tools import AE as ARCHIVE_AE, DCMTK

    procs = []
    for n in range(6):
        folder = tmp_path / f"s{n}"
        make_slide(folder, SlideSpec(width=400, height=300, seed=200 + n, patient_id=f"DIMSE-MANY-{n}",
                                     overview=False))
        procs.append(subprocess.Popen([str(DCMTK / "storescu"), "-R", "+sd", "-xy", "-aet", f"SCANNER{n}",
                                       "-aec", ARCHIVE_AE, "127.0.0.1", str(server.dimse_port), str(folder)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    client = DICOMwebClient(url=server.dicomweb)
    for n in range(6):
        assert client.search_for_studies(search_filters={"PatientID": f"DIMSE-MANY-{n}"})
    assert_healthy(server)


#: (DCMTK encoder command or None, storescu option, transfer syntax the archive must store).
SYNTAXES = {
    "deflated": (None, "-xd", "1.2.840.10008.1.2.1.99"),
    "implicit": (None, "-xi", "1.2.840.10008.1.2"),
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], "-xs", "1.2.840.10008.1.2.4.70"),
    "rle": (["dcmcrle"], "-xr", "1.2.840.10008.1.2.5"),
    "jpeg-ls": (["dcmcjpls", "+el"], "-xt", "1.2.840.10008.1.2.4.80"),
    "jpeg-ls-near": (["dcmcjpls", "+en"], "-xu", "1.2.840.10008.1.2.4.81"),
}


@pytest.mark.parametrize("name", sorted(SYNTAXES))
def test_store_transfer_syntaxes(server, tmp_path, name):
    """Each syntax a DCMTK sender produces is stored in that syntax, unchanged."""
    import subprocess

    from archive.auth.access import SYSTEM
    from archive.catalog import Catalog
    from test_dimse_tools import DCMTK

    encoder, option, expected = SYNTAXES[name]
    source = make_slide(tmp_path / "src", SlideSpec(width=300, height=300, codec="native", seed=300 + len(name) * 7
                                                    + ord(name[-1]), label=False, overview=False, levels=1))[0]
    sent = source
    if encoder:
        sent = tmp_path / "out" / "encoded.dcm"
        sent.parent.mkdir()
        subprocess.run([str(DCMTK / encoder[0]), *encoder[1:], str(source), str(sent)], check=True, timeout=120)
    result = store(server, sent, options=[option])
    assert result.returncode == 0, result.stdout + result.stderr
    original = pydicom.dcmread(sent)
    record = Catalog(server.catalog_location).instance(original.SOPInstanceUID, principal=SYSTEM)
    assert record is not None and record.transfer_syntax_uid == expected
    stored_path = server.stored_file(record.storage_id)
    if encoder:
        assert _body(stored_path) == _body(sent)
    else:
        assert pydicom.dcmread(stored_path).PixelData == original.PixelData


def test_store_warnings_from_deidentification(make_server, tmp_path):
    """With the default (Basic Profile) policy: volumes are coerced (0xB000), the label is dropped (0xB006)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import VLWholeSlideMicroscopyImageStorage

    server = make_server()  # config/default.toml: [deid] default = "basic"
    paths = make_slide(tmp_path / "s", SlideSpec(width=300, height=300, seed=97, overview=False))
    ae = AE(ae_title="DEIDSCU")
    ae.add_requested_context(VLWholeSlideMicroscopyImageStorage, "1.2.840.10008.1.2.4.50")
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="SLIDEARCHIVE")
    assert assoc.is_established
    try:
        statuses = {p.name: assoc.send_c_store(pydicom.dcmread(p)).Status for p in paths}
    finally:
        assoc.release()
    assert statuses["level0.dcm"] == 0xB000
    assert statuses["label.dcm"] == 0xB006
    client = DICOMwebClient(url=server.dicomweb)
    stored = {i["00080018"]["Value"][0] for i in client.search_for_instances()}
    assert "LABEL" in pydicom.dcmread(paths[-1], stop_before_pixels=True).ImageType
    assert len(stored) == len(paths) - 1  # everything but the label
    assert_healthy(server)


def test_every_scanner_transfer_syntax_is_accepted(server):
    """Each syntax offered alone in its own context is accepted, for slides, annotations and segmentations."""
    from pynetdicom import AE, build_context
    from pynetdicom.sop_class import (MicroscopyBulkSimpleAnnotationsStorage, SegmentationStorage,
                                      VLWholeSlideMicroscopyImageStorage)

    from archive.dimse.listener import STORAGE_TRANSFER_SYNTAXES

    expected = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5"}
    assert {str(u) for u in STORAGE_TRANSFER_SYNTAXES} == expected
    for sop_class in (VLWholeSlideMicroscopyImageStorage, MicroscopyBulkSimpleAnnotationsStorage, SegmentationStorage):
        ae = AE(ae_title="NEGOTIATE")
        contexts = [build_context(sop_class, ts) for ts in sorted(expected)]
        assoc = ae.associate("127.0.0.1", server.dimse_port, contexts, ae_title="SLIDEARCHIVE")
        assert assoc.is_established
        try:
            assert {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts} == expected
        finally:
            assoc.release()

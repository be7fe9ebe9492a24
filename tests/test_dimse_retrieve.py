"""C-MOVE into a DCMTK storescp the test starts, C-GET with DCMTK's getscu and with pynetdicom."""
from __future__ import annotations

import copy
import subprocess
import time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, VLWholeSlideMicroscopyImageStorage)

from conftest import IDENTIFIED, Server, _wait_port, free_port
from slides import SlideSpec, make_slide
from test_dimse_tools import AE as ARCHIVE_AE, DCMTK, PROPOSE, assert_healthy, dcmtk, needs_dcmtk, store

pytestmark = needs_dcmtk


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    """A DCMTK storescp (AE DEST) accepting every transfer syntax, on a free port."""
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    log = open(out.parent / f"{out.name}.log", "w")
    proc = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "DEST", "+xa", "-od", str(out), str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    assert _wait_port(port, time.time() + 20)
    yield out, port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def rserver(tmp_path_factory, receiver):
    """A server that knows DEST as a C-MOVE destination (TOML [[dimse.remote]])."""
    _, port = receiver
    config = IDENTIFIED + f'\n[[dimse.remote]]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {port}\n'
    s = Server(tmp_path_factory.mktemp("rserver"), config).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slide(rserver, tmp_path_factory):
    root = tmp_path_factory.mktemp("rslide")
    paths = make_slide(root / "s", SlideSpec(width=600, height=400, seed=71, patient_id="R-1"))
    result = store(rserver, root / "s", options=PROPOSE["jpeg"])
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(p) for p in paths]


def _received(folder) -> dict[str, Dataset]:
    return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in folder.iterdir() if p.is_file())}


def test_move_study_to_storescp(rserver, receiver, slide):
    out, _ = receiver
    result = dcmtk("movescu", "-S", "-aet", "MOVESCU", "-aec", ARCHIVE_AE, "-aem", "DEST",
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={slide[0].StudyInstanceUID}",
                   "127.0.0.1", str(rserver.dimse_port))
    assert result.returncode == 0, result.stdout + result.stderr
    got = _received(out)
    for sent in slide:
        assert sent.SOPInstanceUID in got
        back = got[sent.SOPInstanceUID]
        assert back.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID  # as stored
        assert back.PixelData == sent.PixelData


def _move_statuses(server, destination: str, identifier: Dataset) -> list[Dataset]:
    ae = AE(ae_title="MOVEPY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_move(identifier, destination,
                                                           StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()


def _series(slide) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = slide[0].StudyInstanceUID
    ds.SeriesInstanceUID = slide[0].SeriesInstanceUID
    return ds


def test_move_pending_counts(rserver, slide):
    statuses = _move_statuses(rserver, "DEST", _series(slide))
    pending = [s for s in statuses if s.Status == 0xFF00]
    assert len(pending) == len(slide)
    assert [int(s.NumberOfRemainingSuboperations) for s in pending] == list(range(len(slide) - 1, -1, -1))
    final = statuses[-1]
    assert final.Status == 0x0000
    assert int(final.NumberOfCompletedSuboperations) == len(slide)
    assert int(final.NumberOfFailedSuboperations) == 0 and int(final.NumberOfWarningSuboperations) == 0


def test_move_unknown_destination(rserver, slide):
    statuses = _move_statuses(rserver, "NOWHERE", _series(slide))
    assert statuses[-1].Status == 0xA801
    result = dcmtk("movescu", "-S", "-aec", ARCHIVE_AE, "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={slide[0].StudyInstanceUID}", "127.0.0.1", str(rserver.dimse_port))
    assert "MoveDestinationUnknown" in result.stdout + result.stderr


def test_move_without_unique_key(rserver, slide):
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = slide[0].StudyInstanceUID
    assert _move_statuses(rserver, "DEST", ds)[-1].Status == 0xA900


def test_move_nothing_matches(rserver, slide):
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3.4.5.6.7.8.9"
    final = _move_statuses(rserver, "DEST", ds)[-1]
    assert final.Status == 0x0000 and int(final.NumberOfCompletedSuboperations) == 0


def test_getscu_as_stored(rserver, slide, tmp_path):
    """getscu proposing JPEG baseline receives the frames exactly as they were sent."""
    volumes = [d for d in slide if "VOLUME" in d.ImageType]
    result = dcmtk("getscu", "-S", "+xy", "-aet", "GETSCU", "-aec", ARCHIVE_AE, "-od", str(tmp_path),
                   "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={slide[0].StudyInstanceUID}",
                   "-k", f"SeriesInstanceUID={slide[0].SeriesInstanceUID}",
                   "-k", "SOPInstanceUID=" + "\\".join(d.SOPInstanceUID for d in volumes),
                   "127.0.0.1", str(rserver.dimse_port))
    assert result.returncode == 0, result.stdout + result.stderr
    got = _received(tmp_path)
    assert set(got) == {d.SOPInstanceUID for d in volumes}
    for sent in volumes:
        assert got[sent.SOPInstanceUID].file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got[sent.SOPInstanceUID].PixelData == sent.PixelData


def test_getscu_uncompressed_only(rserver, slide, tmp_path):
    """A requester that accepts only uncompressed syntaxes gets decompressed pixel data."""
    level = slide[-1]  # the overview: one small JPEG frame
    result = dcmtk("getscu", "-P", "-aec", ARCHIVE_AE, "-od", str(tmp_path),
                   "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=R-1",
                   "-k", f"StudyInstanceUID={level.StudyInstanceUID}",
                   "-k", f"SeriesInstanceUID={level.SeriesInstanceUID}",
                   "-k", f"SOPInstanceUID={level.SOPInstanceUID}", "127.0.0.1", str(rserver.dimse_port))
    assert result.returncode == 0, result.stdout + result.stderr
    got = _received(tmp_path)[level.SOPInstanceUID]
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert len(got.PixelData) == level.Rows * level.Columns * level.SamplesPerPixel
    sent = copy.deepcopy(level)
    sent.decompress(generate_instance_uid=False)
    assert np.abs(got.pixel_array.astype(int) - sent.pixel_array.astype(int)).max() <= 2


def test_get_with_pynetdicom_and_role_selection(rserver, slide):
    """The C-GET requester offers explicit VR little endian only: every instance arrives decompressed."""
    received: list[Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="GETPY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(VLWholeSlideMicroscopyImageStorage, ExplicitVRLittleEndian)
    role = build_role(VLWholeSlideMicroscopyImageStorage, scp_role=True)
    assoc = ae.associate("127.0.0.1", rserver.dimse_port, ae_title=ARCHIVE_AE, ext_neg=[role],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        statuses = [s for s, _ in assoc.send_c_get(_series(slide), StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    assert statuses[-1].Status == 0x0000, statuses[-1]
    assert int(statuses[-1].NumberOfCompletedSuboperations) == len(slide)
    assert {d.SOPInstanceUID for d in received} == {d.SOPInstanceUID for d in slide}
    level0 = next(d for d in received if d.SOPInstanceUID == slide[0].SOPInstanceUID)
    assert len(level0.PixelData) == (int(slide[0].NumberOfFrames) * slide[0].Rows * slide[0].Columns * 3)


def test_get_patient_root_needs_patient_id(rserver, slide):
    ae = AE(ae_title="GETPY")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", rserver.dimse_port, ae_title=ARCHIVE_AE)
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = ""
    try:
        statuses = [s for s, _ in assoc.send_c_get(ds, PatientRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    assert statuses[-1].Status == 0xA900


def test_healthy_after_retrieves(rserver, slide):
    assert_healthy(rserver)


def test_move_patient_level_patient_root(rserver, receiver, slide):
    out, _ = receiver
    result = dcmtk("movescu", "-P", "-aet", "MOVESCU", "-aec", ARCHIVE_AE, "-aem", "DEST",
                   "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=R-1", "127.0.0.1", str(rserver.dimse_port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {d.SOPInstanceUID for d in slide} <= set(_received(out))


def test_get_cancel(rserver, slide):
    """C-CANCEL during a C-GET: the SCP stops with Cancel (or had already finished)."""
    ae = AE(ae_title="GETPY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(VLWholeSlideMicroscopyImageStorage, "1.2.840.10008.1.2.4.50")
    role = build_role(VLWholeSlideMicroscopyImageStorage, scp_role=True)
    assoc = ae.associate("127.0.0.1", rserver.dimse_port, ae_title=ARCHIVE_AE, ext_neg=[role],
                         evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    assert assoc.is_established
    statuses = []
    try:
        for status, _ in assoc.send_c_get(_series(slide), StudyRootQueryRetrieveInformationModelGet, msg_id=9):
            statuses.append(status)
            if len(statuses) == 1:
                assoc.send_c_cancel(9, query_model=StudyRootQueryRetrieveInformationModelGet)
    finally:
        assoc.release()
    assert statuses[-1].Status in (0xFE00, 0x0000)
    if statuses[-1].Status == 0xFE00:
        assert int(statuses[-1].NumberOfRemainingSuboperations) > 0
    assert_healthy(rserver)


def test_move_to_a_destination_that_stops_answering(make_server, tmp_path):
    """The destination accepts the association but never answers the C-STORE: the sub-operation
    fails after the DIMSE timeout, the C-MOVE ends with a failure status, the SCP keeps serving."""
    from pynetdicom.sop_class import VLWholeSlideMicroscopyImageStorage as WSI

    port = free_port()
    released = __import__("threading").Event()

    def stall(event):
        released.wait(30)
        return 0x0000

    slow = AE(ae_title="SLOW")
    slow.add_supported_context(WSI, ["1.2.840.10008.1.2.4.50", ExplicitVRLittleEndian])
    scp = slow.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, stall)])
    try:
        config = (IDENTIFIED + "\n[dimse]\ndimse_timeout = 3\n"
                  + f'\n[[dimse.remote]]\nae_title = "SLOW"\nhost = "127.0.0.1"\nport = {port}\n')
        server = make_server(config=config)
        paths = make_slide(tmp_path / "s", SlideSpec(width=256, height=256, seed=77, label=False, overview=False))
        assert store(server, tmp_path / "s", options=PROPOSE["jpeg"]).returncode == 0
        sent = pydicom.dcmread(paths[0], stop_before_pixels=True)
        final = _move_statuses(server, "SLOW", _series([sent]))[-1]
        assert final.Status == 0xA702
        assert int(final.NumberOfFailedSuboperations) == len(paths)
        assert_healthy(server)
    finally:
        released.set()
        scp.shutdown()


def test_move_destination_from_command_line(make_server, receiver, tmp_path):
    """``slidearchive serve --remote AE=HOST:PORT`` adds a C-MOVE destination."""
    out, port = receiver
    server = make_server(config=IDENTIFIED, args=("--remote", f"CLIDEST=127.0.0.1:{port}"))
    paths = make_slide(tmp_path / "s", SlideSpec(width=256, height=256, seed=79, label=False, overview=False))
    assert store(server, tmp_path / "s", options=PROPOSE["jpeg"]).returncode == 0
    sent = pydicom.dcmread(paths[0], stop_before_pixels=True)
    result = dcmtk("movescu", "-S", "-aec", ARCHIVE_AE, "-aem", "CLIDEST", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={sent.StudyInstanceUID}", "127.0.0.1", str(server.dimse_port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sent.SOPInstanceUID in _received(out)

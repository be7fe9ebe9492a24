"""Storage Commitment Push Model, with pynetdicom as the requesting peer (DCMTK has no commitment SCU)."""
from __future__ import annotations

import threading

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

from conftest import IDENTIFIED, free_port
from slides import SlideSpec, make_slide
from test_dimse_tools import AE as ARCHIVE_AE, PROPOSE, assert_healthy, needs_dcmtk, store

pytestmark = needs_dcmtk
WELL_KNOWN = "1.2.840.10008.1.20.1.1"


@pytest.fixture(scope="module")
def stored(server, tmp_path_factory) -> list[Dataset]:
    root = tmp_path_factory.mktemp("commit")
    paths = make_slide(root / "s", SlideSpec(width=300, height=300, seed=81, patient_id="C-1", overview=False))
    assert store(server, root / "s", options=PROPOSE["jpeg"]).returncode == 0
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _request(stored: list[Dataset]) -> tuple[Dataset, str, str]:
    """Ask about every stored instance, one that does not exist and one with the wrong SOP class."""
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    ds.ReferencedSOPSequence = Sequence()
    for s in stored:
        item = Dataset()
        item.ReferencedSOPClassUID = s.SOPClassUID
        item.ReferencedSOPInstanceUID = s.SOPInstanceUID
        ds.ReferencedSOPSequence.append(item)
    missing = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = stored[0].SOPClassUID
    item.ReferencedSOPInstanceUID = missing
    ds.ReferencedSOPSequence.append(item)
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = stored[0].SOPInstanceUID
    ds.ReferencedSOPSequence.append(item)
    return ds, missing, stored[0].SOPInstanceUID


class _Reports:
    """Collects N-EVENT-REPORTs. ``arrived`` is set once our response to one has left, so a test that
    releases then does not race the reactor still sending that response."""

    def __init__(self):
        self.items: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()

    def handler(self, event):
        self.items.append((event.request.EventTypeID, event.event_information))
        return 0x0000, None

    def sent(self, event):
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            self.arrived.set()

    def handlers(self) -> list:
        return [(evt.EVT_N_EVENT_REPORT, self.handler), (evt.EVT_DIMSE_SENT, self.sent)]


def _check(report: tuple[int, Dataset], request: Dataset, stored: list[Dataset], missing: str, conflict: str):
    event_type, info = report
    assert event_type == 2  # some failed
    assert info.TransactionUID == request.TransactionUID
    assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == {s.SOPInstanceUID for s in stored}
    failures = {(i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID): i.FailureReason for i in info.FailedSOPSequence}
    assert failures == {(missing, stored[0].SOPClassUID): 0x0112, (conflict, CTImageStorage): 0x0119}


def test_commitment_on_same_association(server, stored):
    reports = _Reports()
    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE,
                         evt_handlers=reports.handlers())
    assert assoc.is_established
    request, missing, conflict = _request(stored)
    try:
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000
        assert reports.arrived.wait(60), "no N-EVENT-REPORT on the open association"
    finally:
        assoc.release()
    _check(reports.items[0], request, stored, missing, conflict)


def test_commitment_all_present_is_event_type_1(server, stored):
    reports = _Reports()
    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE,
                         evt_handlers=reports.handlers())
    request, _, _ = _request(stored)
    request.ReferencedSOPSequence = Sequence(list(request.ReferencedSOPSequence)[: len(stored)])
    try:
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000
        assert reports.arrived.wait(60)
    finally:
        assoc.release()
    event_type, info = reports.items[0]
    assert event_type == 1 and "FailedSOPSequence" not in info


def test_commitment_on_new_association(make_server, tmp_path):
    """The requester releases at once: the report comes on a new association to its configured address."""
    port = free_port()
    reports = _Reports()
    listener = AE(ae_title="COMMITSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    scp = listener.start_server(("127.0.0.1", port), block=False,
                                evt_handlers=reports.handlers())
    try:
        config = IDENTIFIED + f'\n[[dimse.remote]]\nae_title = "COMMITSCU"\nhost = "127.0.0.1"\nport = {port}\n'
        server = make_server(config=config)
        paths = make_slide(tmp_path / "s", SlideSpec(width=256, height=256, seed=83, label=False, overview=False))
        assert store(server, tmp_path / "s", options=PROPOSE["jpeg"]).returncode == 0
        sent = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        request, missing, conflict = _request(sent)

        ae = AE(ae_title="COMMITSCU")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
        assert assoc.is_established
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assoc.release()
        assert status.Status == 0x0000
        assert reports.arrived.wait(60), "no N-EVENT-REPORT on a new association"
        _check(reports.items[0], request, sent, missing, conflict)
        assert_healthy(server)
    finally:
        scp.shutdown()


def test_bad_action_information(server, stored):
    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
    try:
        request = Dataset()
        request.TransactionUID = generate_uid()  # no Referenced SOP Sequence
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0115
        status, _ = assoc.send_n_action(_request(stored)[0], 2, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0123
    finally:
        assoc.release()
    assert_healthy(server)

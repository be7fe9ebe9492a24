"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION is answered at once; the check against the catalog and the
N-EVENT-REPORT happen on a worker thread. The report goes over the same
association while the requester keeps it open, otherwise over a new
association to the requester's AE title as configured in ``[[dimse.remote]]``
(the archive then proposes the SCP role, PS3.4 J.3.3.1).

When nodes share a catalog, each request is also a work item in it, held by the node
that answered the N-ACTION while it reports; if that node dies first, its lease runs
out and another node's sweeper sends the report over a new association. A report that
cannot be delivered is retried with back-off, a few times. (The item holds the request's
SOP Instance UIDs until the report is delivered.)
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from archive.catalog.work import WorkItem, WorkQueue

from archive.auth.access import SYSTEM
from archive.config import RemoteAE
from archive.dimse.policy import REFUSED_NOT_AUTHORIZED, STORE, PeerPolicy, calling_ae
from archive.dimse.transport import ignores_store_responses

log = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1
EVENT_ALL_SUCCESS, EVENT_SOME_FAILED = 1, 2
#: Failure Reasons, PS3.4 J.3.5 / C.14.
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
#: N-ACTION failure statuses (PS3.7 C.5): invalid argument / no such action.
INVALID_ARGUMENT = 0x0115
NO_SUCH_ACTION_TYPE = 0x0123
#: How long the worker waits for the N-ACTION response to leave before reporting.
RESPONSE_WAIT = 10.0
#: After the response: time for a requester that releases at once to do so, so the report
#: goes on a new association instead of racing its A-RELEASE (the reactor is paused while
#: pynetdicom waits for the N-EVENT-REPORT response, so a release would go unseen).
RELEASE_GRACE = 1.0
#: A shared catalog's commitment work items: how long the answering node holds one, how often every
#: node looks for items whose node died, and how many deliveries are tried before giving up.
WORK_KIND = "storage commitment report"
LEASE_SECONDS = 30.0
SWEEP_SECONDS = 5.0
MAX_ATTEMPTS = 5


def check(catalog, action: Dataset) -> Dataset:
    """The event information: which referenced instances the archive holds, with matching SOP class."""
    report = Dataset()
    report.TransactionUID = action.TransactionUID
    done, failed = Sequence(), Sequence()
    for item in action.get("ReferencedSOPSequence", []):
        sop_class = str(item.get("ReferencedSOPClassUID", ""))
        sop = str(item.get("ReferencedSOPInstanceUID", ""))
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop
        try:
            record = catalog.instance(sop, principal=SYSTEM) if sop else None
        except Exception:  # noqa: BLE001 - reported per instance, not as a dead worker
            record, reason = None, PROCESSING_FAILURE
        else:
            reason = NO_SUCH_OBJECT_INSTANCE
        if record is not None and record.sop_class_uid == sop_class:
            done.append(ref)
            continue
        ref.FailureReason = CLASS_INSTANCE_CONFLICT if record is not None else reason
        failed.append(ref)
    if done:
        report.ReferencedSOPSequence = done
    if failed:
        report.FailedSOPSequence = failed
    return report


class Commitments:
    """Holds what the worker threads need: the catalog, the remotes and this AE's settings."""

    def __init__(self, archive, policy: PeerPolicy, remotes: dict[str, RemoteAE], ae_title: str,
                 timeouts: dict[str, float]):
        self.archive = archive
        self.policy = policy
        self.remotes = remotes
        self.ae_title = ae_title
        self.timeouts = timeouts
        self._sent: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.queue: WorkQueue | None = None
        if archive.catalog.shared:
            self.queue = WorkQueue(archive.catalog.db)
            threading.Thread(target=self._sweep, name="storage-commitment-sweeper", daemon=True).start()

    def _flag(self, assoc) -> threading.Event:
        with self._lock:
            return self._sent.setdefault(id(assoc), threading.Event())

    @ignores_store_responses
    def on_sent(self, event) -> None:
        """EVT_DIMSE_SENT: note that an N-ACTION response has left, so the report may follow."""
        if type(event.message).__name__ == "N_ACTION_RSP":
            self._flag(event.assoc).set()

    def on_closed(self, event) -> None:
        with self._lock:
            flag = self._sent.pop(id(event.assoc), None)
        if flag is not None:
            flag.set()

    def handle_action(self, event) -> tuple[Any, Dataset | None]:
        ae = calling_ae(event)
        if not self.policy.allows(ae, STORE):
            log.warning("storage commitment refused: %s may not store", ae)
            return REFUSED_NOT_AUTHORIZED, None
        if event.request.ActionTypeID != REQUEST_COMMITMENT:
            return NO_SUCH_ACTION_TYPE, None
        try:
            action = event.action_information
            if "TransactionUID" not in action or "ReferencedSOPSequence" not in action:
                return INVALID_ARGUMENT, None
        except Exception:  # noqa: BLE001 - an undecodable Action Information
            return INVALID_ARGUMENT, None
        item = None
        if self.queue is not None:  # durable before the request is acknowledged
            item = self.queue.add(WORK_KIND, {"ae": ae, "action": action.to_json_dict()}, lease=LEASE_SECONDS)
        flag = self._flag(event.assoc)
        flag.clear()
        worker = threading.Thread(target=self._report, args=(event.assoc, ae, action, flag, item),
                                  name="storage-commitment", daemon=True)
        worker.start()
        return 0x0000, None

    def _report(self, assoc, ae: str, action: Dataset, flag: threading.Event, item: WorkItem | None) -> None:
        report = check(self.archive.catalog, action)
        event_type = EVENT_SOME_FAILED if "FailedSOPSequence" in report else EVENT_ALL_SUCCESS
        flag.wait(RESPONSE_WAIT)
        time.sleep(RELEASE_GRACE)
        if assoc.is_established and self._send(assoc, report, event_type):
            self._log(ae, report, "same association")
            if item is not None:
                self.queue.done(item)
            return
        self._deliver(ae, report, event_type, item)

    def _deliver(self, ae: str, report: Dataset, event_type: int, item: WorkItem | None) -> None:
        """The report over a new association to the requester; a shared catalog's item retried on failure."""
        remote = self.remotes.get(ae)
        if remote is None:
            log.warning("storage commitment for %s: association closed and no [[dimse.remote]] for it; "
                        "report not delivered", ae)
        elif self._send_new(remote, report, event_type):
            self._log(ae, report, "new association")
        elif item is not None and item.attempts < MAX_ATTEMPTS:
            self.queue.retry(item, delay=10.0 * 2 ** item.attempts)
            return
        if item is not None:
            self.queue.done(item)

    @staticmethod
    def _log(ae: str, report: Dataset, how: str) -> None:
        log.info("storage commitment for %s: %d committed, %d failed (%s)", ae,
                 len(report.get("ReferencedSOPSequence", [])), len(report.get("FailedSOPSequence", [])), how)

    def _sweep(self) -> None:
        """Reports another node took on and did not deliver (it died, or the requester was away)."""
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                for item in self.queue.claim(WORK_KIND, limit=5, lease=LEASE_SECONDS):
                    report = check(self.archive.catalog, Dataset.from_json(item.payload["action"]))
                    event_type = EVENT_SOME_FAILED if "FailedSOPSequence" in report else EVENT_ALL_SUCCESS
                    self._deliver(item.payload["ae"], report, event_type, item)
            except Exception:  # noqa: BLE001 - the catalog down for a while: the items wait
                log.warning("storage commitment sweep failed; retrying", exc_info=True)

    @staticmethod
    def _send(assoc, report: Dataset, event_type: int) -> bool:
        try:
            status, _ = assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel,
                                                  WELL_KNOWN_INSTANCE)
        except Exception as e:  # noqa: BLE001 - e.g. no usable context; fall back to a new association
            log.warning("storage commitment report failed on the open association: %s", type(e).__name__)
            return False
        return bool(status) and status.get("Status", 0xFFFF) == 0x0000

    def _send_new(self, remote: RemoteAE, report: Dataset, event_type: int) -> bool:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = self.timeouts["acse"]
        ae.dimse_timeout = self.timeouts["dimse"]
        ae.network_timeout = self.timeouts["network"]
        context = build_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        assoc = ae.associate(remote.host, remote.port, [context], ae_title=remote.ae_title, ext_neg=[role])
        if not assoc.is_established:
            log.warning("storage commitment report: could not associate with %s", remote.ae_title)
            return False
        try:
            return self._send(assoc, report, event_type)
        finally:
            assoc.release()

    def bind(self) -> list[tuple]:
        return [(evt.EVT_N_ACTION, self.handle_action), (evt.EVT_DIMSE_SENT, self.on_sent),
                (evt.EVT_RELEASED, self.on_closed), (evt.EVT_ABORTED, self.on_closed)]

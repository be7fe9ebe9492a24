"""C-MOVE and C-GET SCP: C-STORE sub-operations that send each instance as stored.

pynetdicom runs the retrieve loop (pending responses, sub-operation counts,
C-CANCEL, the final status); its loop only hands ``Dataset`` objects to
``send_c_store``, which would decode a whole 2 GB level into memory. So the
handlers yield a ``StoredRef`` (a Dataset carrying only the UIDs) and the
association's ``send_c_store`` is wrapped to turn it into pynetdicom's chunked
send from the stored file (``STORE_SEND_CHUNKED_DATASET``). Only when the peer
accepted no context with the stored transfer syntax is the file decoded, and
decompressed when it is compressed.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification

from archive import metrics
from archive.auth.access import Principal
from archive.catalog import InstanceRecord
from archive.catalog.query import Query
from archive.config import RemoteAE
from archive.dimse import audit as dimse_audit
from archive.dimse.policy import REFUSED_NOT_AUTHORIZED, RETRIEVE, PeerPolicy, calling_ae
from archive.dimse.query import UNIQUE_KEY, plan, query_level
from archive.errors import ArchiveError, DatasetDoesNotMatchSOPClass
from archive.logs import failure_site

log = logging.getLogger(__name__)

STATUS_PENDING, STATUS_CANCEL = 0xFF00, 0xFE00
SEND_QUEUE_PDUS = 32  # at most this many P-DATA PDUs (each <= the peer's max PDU) wait for the socket
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1-255
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class StoredRef(Dataset):
    """Stands in for a stored instance in pynetdicom's retrieve loop; never holds its data."""

    def __init__(self, record: InstanceRecord, local_copy: Callable[[], ContextManager[Path]]):
        super().__init__()
        self.SOPClassUID = record.sop_class_uid
        self.SOPInstanceUID = record.sop_instance_uid
        #: A local path holding the stored file while the send lasts (an S3 object is downloaded).
        self.local_copy = local_copy
        self.stored_syntax = UID(record.transfer_syntax_uid)


def select(identifier: Dataset, sop_class: str, catalog, principal: Principal) -> list[InstanceRecord]:
    """The stored instances a C-MOVE/C-GET identifier names (same matching as C-FIND)."""
    level = query_level(identifier)
    unique = UNIQUE_KEY[level]
    if not str(identifier.get(unique, "") or "").strip():
        raise DatasetDoesNotMatchSOPClass(f"a {level} retrieve needs {unique}")
    p = plan(identifier, sop_class)
    rows = catalog.search(Query("instance", p.query.matches), principal=principal)
    records = []
    for row in rows:
        sop = (row.get("00080018", {}).get("Value") or [None])[0]
        record = catalog.instance(sop, principal=principal) if sop else None
        if record is not None:
            records.append(record)
    return records


def _accepted_syntaxes(assoc, sop_class: str) -> set[str]:
    return {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.as_scu}


def _payload(assoc, ref: StoredRef, stored_path: Path) -> Path | Dataset:
    """The stored file itself when the peer accepted its transfer syntax, else a decoded copy."""
    accepted = _accepted_syntaxes(assoc, str(ref.SOPClassUID))
    if not accepted:
        raise ValueError("the peer accepted no presentation context for this SOP class")
    if str(ref.stored_syntax) in accepted:
        return stored_path
    if not accepted & {str(u) for u in UNCOMPRESSED}:
        raise ValueError("the peer accepted neither the stored nor an uncompressed transfer syntax")
    ds = dcmread(stored_path)
    if ref.stored_syntax.is_compressed:
        ds.decompress(generate_instance_uid=False)  # same UID; sets Explicit VR Little Endian
    return ds


def route_sends(assoc) -> None:
    """Wrap ``assoc.send_c_store`` so a StoredRef is sent from its file (once per association)."""
    if getattr(assoc, "_slidearchive_routed", False):
        return
    original: Callable[..., Dataset] = assoc.send_c_store

    def send_c_store(dataset, msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        if isinstance(dataset, StoredRef):
            with dataset.local_copy() as path:
                return original(_payload(assoc, dataset, path), msg_id=msg_id, priority=priority,
                                originator_aet=originator_aet, originator_id=originator_id)
        return original(dataset, msg_id=msg_id, priority=priority, originator_aet=originator_aet,
                        originator_id=originator_id)

    assoc.send_c_store = send_c_store
    _bound_send_queue(assoc)
    assoc._slidearchive_routed = True


def _bound_send_queue(assoc, limit: int = SEND_QUEUE_PDUS) -> None:
    """Make P-DATA sends wait while ``limit`` PDUs are queued for the socket.

    pynetdicom's DUL queue is unbounded: reading a file faster than the peer
    receives it would pile the whole level up in memory.
    """
    dul = assoc.dul
    original = dul.send_pdu

    def send_pdu(primitive) -> None:
        if isinstance(primitive, P_DATA):
            while dul.to_provider_queue.qsize() >= limit and dul.is_alive() and not assoc.is_aborted:
                time.sleep(0.0005)
        original(primitive)

    dul.send_pdu = send_pdu


def move_contexts(records: list[InstanceRecord]) -> list:
    """For each SOP class: one context per stored syntax, then one uncompressed fallback."""
    exact: dict[tuple[str, str], None] = {}
    for r in records:
        exact[(r.sop_class_uid, r.transfer_syntax_uid)] = None
    contexts = [build_context(sop, [ts]) for sop, ts in exact]
    fallback = [build_context(sop, list(UNCOMPRESSED)) for sop in dict.fromkeys(r.sop_class_uid for r in records)
                if not all(ts in UNCOMPRESSED for s, ts in exact if s == sop)]
    contexts = (contexts + fallback)[:MAX_CONTEXTS]
    return contexts or [build_context(Verification)]


def _failure(status: int, message: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = message[:64]
    return ds


def _sub_operations(event, records: list[InstanceRecord], archive,
                    destination: RemoteAE | None = None) -> Iterator[tuple[Any, Dataset | None]]:
    """One pending result per instance; audited as Begin Transferring, then Transferred (C-GET) or Export (C-MOVE)."""
    studies = dimse_audit.by_study(records)
    where = {"destination": destination.ae_title, "destination_host": destination.host} if destination else {}
    for study, instances in studies.items():
        dimse_audit.record(event, archive, "BeginTransferringDICOMInstances", study=study, instances=instances,
                           detail=where)
    sent = len(records)
    for n, record in enumerate(records):
        if event.is_cancelled:
            log.info("retrieve cancelled after %d of %d sub-operations", n, len(records))
            sent = n
            break
        yield STATUS_PENDING, StoredRef(record, lambda record=record: archive.local_copy(record))
    for study, instances in studies.items():
        dimse_audit.record(event, archive, "Export" if destination else "DICOMInstancesTransferred", study=study,
                           instances=instances, outcome=0 if sent == len(records) else 4,
                           detail=where | {"description": f"{sent} of {len(records)} sub-operations started"})
    if sent < len(records):
        yield STATUS_CANCEL, None


class NotAuthorized(Exception):
    """Raised before the first yield of C-MOVE: pynetdicom then answers with a Cxxx failure."""


def handle_move(event, archive, policy: PeerPolicy, remotes: dict[str, RemoteAE],
                max_pdu: int = 0, *, who: Callable[[Any], Principal], tls: Any = None) -> Iterator[Any]:
    """Destination, then sub-operation count, then one pending result per instance."""
    ae = calling_ae(event)
    if not policy.allows(ae, RETRIEVE):
        # pynetdicom needs a destination before any status; refusing here makes it send
        # 0xC514 (Unable to process) without contacting the destination.
        log.warning("C-MOVE refused: %s may not retrieve", ae)
        raise NotAuthorized("calling AE title may not retrieve")
    destination = event.move_destination
    if isinstance(destination, bytes):
        destination = destination.decode("ascii", "replace")
    remote = remotes.get(str(destination).strip())
    if remote is None:
        log.warning("C-MOVE from %s: unknown destination", ae)
        yield None, None  # pynetdicom answers 0xA801 Move destination unknown
        return
    try:
        records = select(event.identifier, str(event.request.AffectedSOPClassUID), archive.catalog, who(event))
        error = None
    except ArchiveError as e:
        records, error = [], e
    except Exception as e:  # noqa: BLE001
        log.error("C-MOVE from %s failed: %s at %s", ae, type(e).__name__, failure_site(e))
        records, error = [], ArchiveError(f"processing failure: {type(e).__name__}")
    kwargs = {"contexts": move_contexts(records), "max_pdu": max_pdu,
              "evt_handlers": [(evt.EVT_ESTABLISHED, lambda ev: route_sends(ev.assoc))]}
    if remote.tls:
        kwargs["tls_args"] = (tls, remote.host)  # the destination's certificate must name its host
    yield remote.host, remote.port, kwargs
    if error is not None:
        metrics.error(error, "dimse")
        log.warning("C-MOVE from %s failed: 0x%04X %s", ae, error.dimse_status, error.title)
        yield 1
        yield _failure(error.dimse_status, error.message), None
        return
    log.info("C-MOVE from %s to %s: %d sub-operations", ae, remote.ae_title, len(records))
    yield len(records)
    yield from _sub_operations(event, records, archive, remote)


def handle_get(event, archive, policy: PeerPolicy, *, who: Callable[[Any], Principal]) -> Iterator[Any]:
    """Sub-operation count, then one pending result per instance, sent on this association."""
    ae = calling_ae(event)
    if not policy.allows(ae, RETRIEVE):
        log.warning("C-GET refused: %s may not retrieve", ae)
        yield 1
        yield _failure(REFUSED_NOT_AUTHORIZED, "calling AE title may not retrieve"), None
        return
    try:
        records = select(event.identifier, str(event.request.AffectedSOPClassUID), archive.catalog, who(event))
    except ArchiveError as e:
        metrics.error(e, "dimse")
        log.warning("C-GET from %s failed: 0x%04X %s", ae, e.dimse_status, e.title)
        yield 1
        yield _failure(e.dimse_status, e.message), None
        return
    except Exception as e:  # noqa: BLE001
        log.error("C-GET from %s failed: %s at %s", ae, type(e).__name__, failure_site(e))
        yield 1
        yield _failure(0xC000, f"processing failure: {type(e).__name__}"), None
        return
    route_sends(event.assoc)
    log.info("C-GET from %s: %d sub-operations", ae, len(records))
    yield len(records)
    yield from _sub_operations(event, records, archive)

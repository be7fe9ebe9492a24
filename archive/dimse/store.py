"""C-STORE SCP: every received instance goes through the one ingest path, from a spooled file.

pynetdicom writes the data set to a file as the P-DATA arrives
(``STORE_RECV_CHUNKED_DATASET``), so a 2 GB pyramid level never sits in
memory. The spool directory is inside the data directory (same filesystem), so
``store_file(owned=True)`` moves the file instead of copying it. A transfer cut
short (abort, closed socket, network timeout) leaves a partial spool file,
which ``discard_partial`` removes when the association ends.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

from pydicom.dataset import Dataset

from archive.auth.access import Principal, target_collection
from archive.dimse import audit as dimse_audit
from archive.dimse.policy import REFUSED_NOT_AUTHORIZED, STORE, PeerPolicy, calling_ae
from archive.dimse.spool import discard_spooled
from archive.errors import ArchiveError
from archive.ingest import Origin
from archive.logs import failure_site

log = logging.getLogger(__name__)

#: PS3.4 B.2.3 "Cannot understand": used when something unexpected fails.
CANNOT_UNDERSTAND = 0xC000


def prepare_spool(data_dir: Path) -> Path:
    """Create (and empty: leftovers of a crash) the spool dir and make it pynetdicom's temp dir."""
    spool = data_dir / "dimse-spool"
    spool.mkdir(parents=True, exist_ok=True)
    for leftover in spool.iterdir():
        leftover.unlink(missing_ok=True)
    # pynetdicom creates the receive file with tempfile.NamedTemporaryFile(); this
    # process only serves DIMSE, so pointing the default temp dir here is safe.
    tempfile.tempdir = str(spool)
    return spool


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO; messages name attributes, never values
    return ds


def handle_store(event, archive, policy: PeerPolicy, collection: str, who: Callable[[Any], Principal]) -> Dataset:
    """Store one instance; Success only after the catalog commit."""
    ae = calling_ae(event)
    if not policy.allows(ae, STORE):
        log.warning("C-STORE refused: %s may not store", ae)
        return _status(REFUSED_NOT_AUTHORIZED, "calling AE title may not store")
    try:
        path = Path(event.dataset_path)
    except AttributeError:
        return _status(CANNOT_UNDERSTAND, "no data set received")
    try:
        principal = who(event)
        origin = Origin("dimse", ae_title=ae, collection=target_collection(principal, None, collection),
                        writable=principal.collections("write"))
        result = archive.store_file(path, origin, owned=True)
    except ArchiveError as e:
        log.warning("C-STORE from %s failed: 0x%04X %s", ae, e.dimse_status, e.title)
        return _status(e.dimse_status, e.message)
    except Exception as e:  # noqa: BLE001 - any other failure is a DICOM status, not a dead association
        log.error("C-STORE from %s failed: %s at %s", ae, type(e).__name__, failure_site(e))
        return _status(CANNOT_UNDERSTAND, f"processing failure: {type(e).__name__}")
    finally:
        path.unlink(missing_ok=True)  # already moved when stored; removed on any failure
    if result.status == "stored":
        dimse_audit.record(event, archive, "DICOMInstancesTransferred", study=result.study_uid,
                           series=result.series_uid, instances=[(result.sop_class_uid, result.sop_instance_uid)],
                           detail={"action": "C"})
    if result.warning is not None:
        log.info("C-STORE from %s: %s, warning 0x%04X", ae, result.status, result.warning)
        return _status(result.warning, result.message or None)
    return _status(0x0000)


def discard_partial(event) -> None:
    """Remove the spool file of a C-STORE that did not arrive in full (EVT_ABORTED / EVT_CONN_CLOSE)."""
    if discard_spooled(event.assoc):
        log.warning("discarded a partial C-STORE from %s", calling_ae(event))

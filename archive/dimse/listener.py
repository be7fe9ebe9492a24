"""The DIMSE server: one pynetdicom AE, started by ``slidearchive serve`` in its own process.

Services: Verification, Storage (every storage SOP class pynetdicom knows),
Query/Retrieve FIND/MOVE/GET in the Patient Root and Study Root models, and
Storage Commitment Push Model. Each service lives in its own module
(dimse_store, dimse_query, dimse_retrieve, dimse_commit); this one wires them
to the AE and applies the association policy.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from functools import partial

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  PatientRootQueryRetrieveInformationModelMove, StorageCommitmentPushModel,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification, _STORAGE_CLASSES)
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, HTJ2K, HTJ2KLossless,
                         HTJ2KLosslessRPCL, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit,
                         JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
                         RLELossless)

from archive import metrics
from archive.auth.authn import Authenticator
from archive.config import Settings
from archive.dimse.commit import Commitments
from archive.dimse.identity import association_principal, handle_user_id
from archive.dimse.policy import PeerPolicy
from archive.dimse.query import handle_find
from archive.dimse.retrieve import handle_get, handle_move
from archive.dimse.store import discard_partial, handle_store, prepare_spool
from archive.dimse.transport import NoDelayAssociationServer, WaitingRequestHandler

log = logging.getLogger(__name__)

#: What a scanner may send; stored exactly as received (PS3.5 Section 10 / Annex A).
#: pynetdicom accepts, per context, the first syntax of this list the requestor offers:
#: compressed before uncompressed, so a sender offering its file's own syntax plus
#: fallbacks keeps its encoding, and lossless before lossy, so no sender is ever pushed
#: into a lossy re-encoding.
STORAGE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEG2000Lossless, HTJ2KLossless, HTJ2KLosslessRPCL, JPEGLSLossless, JPEGLossless, JPEGLosslessSV1,
    RLELossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000, HTJ2K, JPEGLSNearLossless,
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
)
QUERY_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
FIND_MODELS = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
RETRIEVE_MODELS = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
                   PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)


def configure_pynetdicom() -> None:
    """Chunked receive and send (bounded memory) and no identifiers in pynetdicom's own log."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def build_ae(settings: Settings) -> AE:
    """The AE with every supported context, timeouts, PDU size and the calling-AE allow-list."""
    d = settings.dimse
    ae = AE(ae_title=d.ae_title)
    ae.maximum_pdu_size = d.max_pdu
    ae.network_timeout = d.network_timeout
    ae.acse_timeout = d.acse_timeout
    ae.dimse_timeout = d.dimse_timeout
    ae.maximum_associations = d.maximum_associations
    if d.peers:
        ae.require_calling_aet = [p.ae_title for p in d.peers]
    ae.add_supported_context(Verification, list(QUERY_TRANSFER_SYNTAXES))
    for model in FIND_MODELS + RETRIEVE_MODELS:
        ae.add_supported_context(model, list(QUERY_TRANSFER_SYNTAXES))
    ae.add_supported_context(StorageCommitmentPushModel, list(QUERY_TRANSFER_SYNTAXES))
    # scp_role: a C-GET requester proposes to be the Storage SCP (PS3.7 D.3.3.4); accept it.
    for sop_class in sorted(set(_STORAGE_CLASSES.values())):
        ae.add_supported_context(sop_class, list(STORAGE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True)
    return ae


def handlers(settings: Settings, archive) -> list[tuple]:
    d = settings.dimse
    policy = PeerPolicy.from_settings(d)
    authenticator = Authenticator(settings, archive.audit, archive.catalog)
    who = partial(association_principal, authenticator=authenticator, policy=policy)
    remotes = {r.ae_title: r for r in d.remotes}
    commitments = Commitments(archive, policy, remotes, d.ae_title,
                              {"acse": d.acse_timeout, "dimse": d.dimse_timeout, "network": d.network_timeout})
    metrics.metrics()  # made before the acceptor threads start
    counted = metrics.counted
    bound = [
        (evt.EVT_C_ECHO, counted("C-ECHO", lambda event: 0x0000)),
        (evt.EVT_USER_ID, partial(handle_user_id, authenticator=authenticator)),
        (evt.EVT_C_STORE, counted("C-STORE", partial(handle_store, archive=archive, policy=policy,
                                                     collection=settings.default_collection, who=who))),
        (evt.EVT_C_FIND, counted("C-FIND", partial(handle_find, archive=archive, policy=policy,
                                                   ae_title=d.ae_title, who=who))),
        (evt.EVT_C_MOVE, counted("C-MOVE", partial(handle_move, archive=archive, policy=policy, remotes=remotes,
                                                   max_pdu=d.max_pdu, who=who, tls=_outgoing_tls(settings)))),
        (evt.EVT_C_GET, counted("C-GET", partial(handle_get, archive=archive, policy=policy, who=who))),
        (evt.EVT_ABORTED, discard_partial),
        (evt.EVT_CONN_CLOSE, discard_partial),
        (evt.EVT_REJECTED, _log_rejected),
        *[(event, counted("N-ACTION", handler) if event is evt.EVT_N_ACTION else handler)
          for event, handler in commitments.bind()],
    ]
    for event, outcome in ((evt.EVT_ACCEPTED, "accepted"), (evt.EVT_REJECTED, "rejected"),
                           (evt.EVT_ABORTED, "aborted"), (evt.EVT_RELEASED, "released")):
        bound.append((event, partial(_count_association, outcome=outcome)))
    return bound


def _count_association(event, outcome: str) -> None:
    metrics.association(outcome)


def _outgoing_tls(settings: Settings):
    """The client TLS context for remotes marked ``tls = true`` (None when there is none)."""
    if not any(r.tls for r in settings.dimse.remotes):
        return None
    from archive.tls import client_context

    return client_context(settings.tls)


def _close_transport(assoc) -> None:
    """End an association now. Not A-ABORT: pynetdicom sends that only once the peer pauses,
    which a peer streaming a large data set never does. The partial data set is discarded
    (EVT_CONN_CLOSE); a handler already storing a complete one finishes."""
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _log_rejected(event) -> None:
    log.warning("association from %s rejected", event.assoc.requestor.ae_title)


class DimseListener:
    """The AE's acceptors (plain and/or TLS), each serving in its own thread.

    ``drain`` is the graceful stop: listeners close first (new associations are
    refused), associations in progress get until the deadline, the rest are aborted
    (their partial spool files are discarded) and their handlers finish.
    """

    def __init__(self, settings: Settings):
        from archive.service import Archive

        configure_pynetdicom()
        self.archive = Archive(settings)
        self.archive.ingest.warm_up()
        prepare_spool(settings.data_dir)
        self.ae = build_ae(settings)
        self.servers: list = []
        self.threads: list[threading.Thread] = []
        self.ports: list[int] = []
        tls = settings.tls
        bound = handlers(settings, self.archive)
        addresses = []
        if tls.dimse != "only":
            addresses.append((settings.dimse.port, None))
        if tls.dimse != "off":
            from archive.tls import dimse_context

            addresses.append((tls.dimse_port if tls.dimse == "separate" else settings.dimse.port,
                              dimse_context(tls, self.archive.audit, settings.dimse.acse_timeout)))
        try:
            for port, context in addresses:
                self._listen(settings.host, port, bound, context)
        except OSError:
            self.close_listeners()
            raise

    def _listen(self, host: str, port: int, bound: list, context) -> None:
        try:
            server = self.ae.make_server((host, port), evt_handlers=bound, ssl_context=context,
                                         server_class=NoDelayAssociationServer,
                                         request_handler=WaitingRequestHandler)
        except OSError as e:
            e.port = port  # type: ignore[attr-defined]  # which of the ports, for the caller's message
            raise
        self.ae._servers.append(server)  # as AE.start_server does; its shutdown() removes it again
        thread = threading.Thread(target=server.serve_forever, name=f"dimse-acceptor-{port}", daemon=True)
        thread.start()
        self.servers.append(server)
        self.threads.append(thread)
        self.ports.append(port)
        log.info("DIMSE %s listening on %s:%d%s", self.ae.ae_title, host, port, " (TLS)" if context else "")

    def healthy(self) -> bool:
        return bool(self.threads) and all(t.is_alive() for t in self.threads)

    def associations(self) -> int:
        return len(self.ae.active_associations)

    def close_listeners(self) -> None:
        for server, thread in zip(self.servers, self.threads):
            if thread.is_alive():
                server.shutdown()  # returns once serve_forever has stopped
            server.server_close()
        self.servers, self.threads = [], []

    def drain(self, deadline: float, grace: float) -> None:
        """Stop accepting, let associations finish until ``deadline`` (monotonic), abort the rest."""
        self.close_listeners()
        # A connection that has not negotiated an association yet (or a port probe) is not waited for.
        # One released or aborted a moment ago is: its A-RELEASE-RP may still be queued for the DUL
        # thread, and closing the transport under it makes the peer see an abort after a good store.
        while any(a.is_established or a.is_released or a.is_aborted for a in self.ae.active_associations) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        remaining = self.ae.active_associations
        established = [a for a in remaining if a.is_established]
        if established:
            log.warning("stop deadline reached: closing %d association(s) still in progress", len(established))
        for assoc in remaining:
            _close_transport(assoc)
        end = time.monotonic() + grace
        for assoc in established:  # their handlers finish what they already received, or discard it
            assoc.join(max(0.0, end - time.monotonic()))
        self.archive.audit.close()

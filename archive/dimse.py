"""The DIMSE server: one pynetdicom AE, started by ``slidearchive serve`` in its own process.

Services: Verification, Storage (every storage SOP class pynetdicom knows),
Query/Retrieve FIND/MOVE/GET in the Patient Root and Study Root models, and
Storage Commitment Push Model. Each service lives in its own module
(dimse_store, dimse_query, dimse_retrieve, dimse_commit); this one wires them
to the AE and applies the association policy.
"""
from __future__ import annotations

import logging
import signal
import sys
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

from .authn import Authenticator
from .config import Settings
from .dimse_identity import association_principal, handle_user_id
from .dimse_commit import Commitments
from .dimse_policy import PeerPolicy
from .dimse_query import handle_find
from .dimse_retrieve import handle_get, handle_move
from .dimse_store import discard_partial, handle_store, prepare_spool

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
    authenticator = Authenticator(settings, archive.audit)
    who = partial(association_principal, authenticator=authenticator, policy=policy)
    remotes = {r.ae_title: r for r in d.remotes}
    commitments = Commitments(archive, policy, remotes, d.ae_title,
                              {"acse": d.acse_timeout, "dimse": d.dimse_timeout, "network": d.network_timeout})
    return [
        (evt.EVT_C_ECHO, lambda event: 0x0000),
        (evt.EVT_USER_ID, partial(handle_user_id, authenticator=authenticator)),
        (evt.EVT_C_STORE, partial(handle_store, archive=archive, policy=policy,
                                  collection=settings.default_collection, who=who)),
        (evt.EVT_C_FIND, partial(handle_find, archive=archive, policy=policy, ae_title=d.ae_title, who=who)),
        (evt.EVT_C_MOVE, partial(handle_move, archive=archive, policy=policy, remotes=remotes,
                                 max_pdu=d.max_pdu, who=who, tls=_outgoing_tls(settings))),
        (evt.EVT_C_GET, partial(handle_get, archive=archive, policy=policy, who=who)),
        (evt.EVT_ABORTED, discard_partial),
        (evt.EVT_CONN_CLOSE, discard_partial),
        (evt.EVT_REJECTED, _log_rejected),
        *commitments.bind(),
    ]


def _outgoing_tls(settings: Settings):
    """The client TLS context for remotes marked ``tls = true`` (None when there is none)."""
    if not any(r.tls for r in settings.dimse.remotes):
        return None
    from .tls import client_context

    return client_context(settings.tls)


def _log_rejected(event) -> None:
    log.warning("association from %s rejected", event.assoc.requestor.ae_title)


def run(settings: Settings) -> None:
    """Listen on settings.host:settings.dimse.port until the process is terminated."""
    from .service import Archive

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_pynetdicom()
    archive = Archive(settings)
    archive.ingest.warm_up()
    prepare_spool(settings.data_dir)
    ae = build_ae(settings)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("DIMSE %s listening on %s:%d", settings.dimse.ae_title, settings.host, settings.dimse.port)
    tls = settings.tls
    bound = handlers(settings, archive)
    context = None
    if tls.dimse != "off":
        from .tls import dimse_context

        context = dimse_context(tls, archive.audit, settings.dimse.acse_timeout)
    try:
        if tls.dimse == "separate":
            ae.start_server((settings.host, settings.dimse.port), block=False, evt_handlers=bound)
            log.info("DIMSE over TLS on %s:%d", settings.host, tls.dimse_port)
        port = tls.dimse_port if tls.dimse == "separate" else settings.dimse.port
        ae.start_server((settings.host, port), block=True, evt_handlers=bound, ssl_context=context)
    finally:
        ae.shutdown()

"""DIMSE with authentication on: user identity negotiation (API key as password, JWT) and trusted AE
titles map to the same principals as HTTP, so C-STORE, C-FIND and C-GET see the same collections."""
from __future__ import annotations

import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet

from conftest import IDENTIFIED, Server
from oidc_providers import LoopbackIssuer
from slides import SlideSpec, make_slide
from test_auth import cli, qido_studies, study_uids, with_admin_key
from test_dimse_tools import PROPOSE, dcmtk, needs_dcmtk, store

pytestmark = needs_dcmtk
SCP_AE = "SLIDEARCHIVE"


@pytest.fixture(scope="module")
def issuer():
    found = LoopbackIssuer()
    yield found
    found.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, issuer):
    config = IDENTIFIED + f"""
[auth]
enabled = true
token_cache_seconds = 1
[[auth.issuer]]
issuer = "{issuer.url}"
audience = ["slidearchive"]
[[dimse.peer]]
ae_title = "TRUSTED"
allow = ["store", "query", "retrieve"]
collections = ["a", "a:write"]
[[dimse.peer]]
ae_title = "USERS"
allow = ["store", "query", "retrieve"]
"""
    server = with_admin_key(tmp_path_factory.mktemp("auth-dimse"), config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(archive) -> dict[str, str]:
    return {"b-write": cli(archive, "keys", "create", "--name", "scanner-b", "--grant", "b:write", "--grant", "b"),
            "a-read": cli(archive, "keys", "create", "--name", "reader-a", "--grant", "a")}


def slide(tmp_path, seed: int, patient: str):
    folder = tmp_path / patient
    make_slide(folder, SlideSpec(width=256, height=256, seed=seed, patient_id=patient, label=False, overview=False))
    return folder


def patients(archive: Server) -> set[str]:
    rows = qido_studies(archive, archive.admin, includefield="PatientID").json()
    return {r["00100020"]["Value"][0] for r in rows}


def test_trusted_ae_without_identity_stores_into_its_collection(archive, keys, tmp_path):
    result = store(archive, slide(tmp_path, 501, "DIMSE-A"), calling="TRUSTED", options=PROPOSE["jpeg"])
    assert result.returncode == 0, result.stderr
    assert "DIMSE-A" in patients(archive)
    rows = qido_studies(archive, keys["a-read"], PatientID="DIMSE-A")
    assert len(study_uids(rows)) == 1


def test_user_identity_with_an_api_key_stores_into_the_keys_collection(archive, keys, tmp_path):
    result = dcmtk("storescu", "-R", "+sd", *PROPOSE["jpeg"], "-aet", "USERS", "-aec", SCP_AE, "--user", "scanner-b",
                   "--password", keys["b-write"], "127.0.0.1", str(archive.dimse_port),
                   str(slide(tmp_path, 502, "DIMSE-B")))
    assert result.returncode == 0, result.stderr
    assert study_uids(qido_studies(archive, keys["a-read"], PatientID="DIMSE-B")) == []
    assert "DIMSE-B" in patients(archive)


def test_no_identity_and_no_grant_stores_nothing(archive, tmp_path):
    store(archive, slide(tmp_path, 503, "DIMSE-NONE"), calling="USERS", options=PROPOSE["jpeg"])
    assert "DIMSE-NONE" not in patients(archive)


@pytest.mark.parametrize("password", ["wrong", "sa_0123456789ab_" + "C" * 43])
def test_a_bad_password_rejects_the_association(archive, tmp_path, password):
    result = dcmtk("storescu", "-R", "+sd", *PROPOSE["jpeg"], "-aet", "USERS", "-aec", SCP_AE, "--user", "x", "--password", password,
                   "127.0.0.1", str(archive.dimse_port), str(slide(tmp_path, 504, "DIMSE-BAD")))
    assert result.returncode != 0
    assert "DIMSE-BAD" not in patients(archive)


def _identity(kind: int, primary: str, secondary: str = "") -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary.encode()
    if secondary:
        item.secondary_field = secondary.encode()
    return item


def _find_patients(archive: Server, identity: UserIdentityNegotiation | None) -> set[str]:
    ae = AE(ae_title="USERS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=SCP_AE,
                         ext_neg=[identity] if identity else None)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "*"
    found = set()
    for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and ds is not None:
            found.add(str(ds.PatientID))
    assoc.release()
    return found


def test_c_find_sees_the_same_collections_as_http(archive, keys, issuer, tmp_path):
    store(archive, slide(tmp_path, 505, "DIMSE-A2"), calling="TRUSTED", options=PROPOSE["jpeg"])
    by_key = _find_patients(archive, _identity(2, "reader", keys["b-write"]))
    assert "DIMSE-B" in by_key and not by_key & {"DIMSE-A", "DIMSE-A2"}
    now = int(time.time())
    token = issuer.sign({"iss": issuer.url, "sub": "dimse-user", "aud": "slidearchive", "exp": now + 600,
                         "collections": ["a"]})
    by_jwt = _find_patients(archive, _identity(5, token))
    assert {"DIMSE-A", "DIMSE-A2"} <= by_jwt and "DIMSE-B" not in by_jwt
    assert _find_patients(archive, None) == set()  # USERS has no grants: nothing exists for it


def test_c_get_of_another_collections_study_sends_nothing(archive, keys, tmp_path):
    b_study = study_uids(qido_studies(archive, archive.admin, PatientID="DIMSE-B"))[0]
    received = []
    ae = AE(ae_title="USERS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    from pynetdicom.sop_class import VLWholeSlideMicroscopyImageStorage

    ae.add_requested_context(VLWholeSlideMicroscopyImageStorage, ["1.2.840.10008.1.2.4.50"])
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(event.request.AffectedSOPInstanceUID) or 0x0000)]
    roles = [build_role(VLWholeSlideMicroscopyImageStorage, scp_role=True)]
    for password, expected in ((keys["a-read"], 0), (keys["b-write"], 1)):
        received.clear()
        assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=SCP_AE, evt_handlers=handlers,
                             ext_neg=[*roles, _identity(2, "u", password)])
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = b_study
        list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
        assoc.release()
        assert (len(received) > 0) == bool(expected), password[:16]


def test_http_and_dimse_keys_are_one_principal(archive, keys):
    """The same key over HTTP sees what it stored over DIMSE."""
    assert "DIMSE-B" in {r["00100020"]["Value"][0] for r in
                         qido_studies(archive, keys["b-write"], includefield="PatientID").json()}

"""PostgreSQL restarting under a running archive: clients get a retryable status while it is down
(HTTP 503, DIMSE 0xA700), nothing half-stored is visible, and the node recovers by itself."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from pydicom.dataset import Dataset

from conftest import IDENTIFIED, REPO, Server
from pg_cluster import PgCluster
from slides import SlideSpec, make_slide
from test_dimse_tools import AE as ARCHIVE_AE

pytestmark = pytest.mark.slow


def _stow(server: Server, path) -> requests.Response:
    boundary = "catalogfault"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    return requests.post(f"{server.dicomweb}/studies", data=body, timeout=60,
                         headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def _c_store(server: Server, path) -> int:
    ae = AE(ae_title="PGFAULT")
    ae.requested_contexts = StoragePresentationContexts[:100]
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
    assert assoc.is_established
    try:
        return assoc.send_c_store(dcmread(path)).Status
    finally:
        assoc.release()


def _c_find_statuses(server: Server) -> list[int]:
    ae = AE(ae_title="PGFAULT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    try:
        return [status.Status for status, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()


def test_postgresql_restart_mid_run(tmp_path):
    cluster = PgCluster().init().start()
    paths = make_slide(tmp_path / "slide", SlideSpec(width=1024, height=1024, codec="native", levels=3, seed=61,
                                                      label=False, overview=False))
    url = cluster.create_database("archive")
    server = Server(tmp_path / "server", IDENTIFIED + f'\n[catalog]\nurl = "{url}"\npool_timeout = 2\n').start()
    try:
        assert _stow(server, paths[0]).status_code == 200
        cluster.stop()

        down = _stow(server, paths[1])
        assert down.status_code == 503, down.text
        assert "catalog" in down.text.lower()
        assert requests.get(f"{server.dicomweb}/studies", timeout=30).status_code == 503
        assert requests.get(f"{server.url}/health/ready", timeout=30).status_code == 503
        assert _c_store(server, paths[2]) == 0xA700
        assert _c_find_statuses(server)[-1] == 0xA700
        assert server.process.poll() is None  # still serving, just refusing

        cluster.start()
        studies = requests.get(f"{server.dicomweb}/studies", timeout=30)
        assert studies.status_code == 200
        instances = requests.get(f"{server.dicomweb}/instances", timeout=30).json()
        assert len(instances) == 1  # only what was stored before the outage; nothing half-written
        assert _stow(server, paths[1]).status_code == 200  # the client's retry
        assert _c_store(server, paths[2]) == 0x0000
        assert len(requests.get(f"{server.dicomweb}/instances", timeout=30).json()) == 3
        verify = subprocess.run([sys.executable, "-m", "archive.cli", "verify", "--data-dir", str(server.data_dir),
                                 "--config", str(server.config_path)], capture_output=True, text=True, cwd=REPO,
                                timeout=300)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert re.search(r"missing (files|objects): 0; \1 without catalog rows: 0; checksum mismatches: 0; "
                         r"temp files: 0", verify.stdout), verify.stdout
    finally:
        server.stop()
        cluster.destroy()


def test_a_commitment_report_left_by_a_dead_node_is_sent_by_another(tmp_path, postgresql_url):
    """A node took a storage commitment request and died before reporting: its work item stays in the
    shared catalog with its lease; once the lease runs out another node's sweeper delivers the report
    on a new association to the requester."""
    import threading
    import time

    from pydicom.sequence import Sequence
    from pynetdicom import evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    from archive.catalog import Catalog
    from archive.catalog.work import WorkQueue
    from archive.dimse.commit import WORK_KIND
    from conftest import free_port

    port, reports, arrived = free_port(), [], threading.Event()

    def on_report(event):
        reports.append((event.request.EventTypeID, event.event_information))
        arrived.set()
        return 0x0000, None

    listener = AE(ae_title="COMMITSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    scp = listener.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    paths = make_slide(tmp_path / "slide", SlideSpec(width=256, height=256, codec="native", levels=1, seed=62,
                                                      label=False, overview=False))
    config = IDENTIFIED + (f'\n[catalog]\nurl = "{postgresql_url}"\n'
                           f'\n[[dimse.remote]]\nae_title = "COMMITSCU"\nhost = "127.0.0.1"\nport = {port}\n')
    node = Server(tmp_path / "node-b", config).start()
    try:
        assert _stow(node, paths[0]).status_code == 200
        stored = dcmread(paths[0], stop_before_pixels=True)
        action = Dataset()
        action.TransactionUID = "1.2.826.0.1.3680043.10.1234.99"
        ref = Dataset()
        ref.ReferencedSOPClassUID = stored.SOPClassUID
        ref.ReferencedSOPInstanceUID = stored.SOPInstanceUID
        action.ReferencedSOPSequence = Sequence([ref])
        catalog = Catalog(postgresql_url)
        dead = WorkQueue(catalog.db, owner="node-a (dead)")
        dead.add(WORK_KIND, {"ae": "COMMITSCU", "action": action.to_json_dict()}, lease=0.5)
        time.sleep(0.6)
        assert arrived.wait(60), "no node sent the dead node's report"
        event_type, info = reports[0]
        assert event_type == 1 and info.TransactionUID == action.TransactionUID
        assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [stored.SOPInstanceUID]
        deadline = time.time() + 10
        while WorkQueue(catalog.db).pending(WORK_KIND) and time.time() < deadline:
            time.sleep(0.2)
        assert WorkQueue(catalog.db).pending(WORK_KIND) == 0  # delivered once, then gone
        catalog.close()
    finally:
        node.stop()
        scp.shutdown()


def test_two_nodes_pseudonymize_alike(tmp_path, postgresql_url):
    """The keyed pseudonyms come from the catalog's one key: the same patient sent to two nodes gets
    the same pseudonymous Patient ID, and never the original."""
    config = f'\n[catalog]\nurl = "{postgresql_url}"\n'
    nodes = [Server(tmp_path / f"node{i}", config).start() for i in range(2)]
    try:
        for i, node in enumerate(nodes):
            paths = make_slide(tmp_path / f"slide{i}", SlideSpec(width=256, height=256, codec="native", levels=1,
                                                                 seed=70 + i, label=False, overview=False,
                                                                 patient_id="SAME-PATIENT-7"))
            stored = _stow(node, paths[0])
            assert stored.status_code in (200, 202) and "00081199" in stored.json(), stored.text  # 202: de-identified
        studies = requests.get(f"{nodes[1].dicomweb}/studies", timeout=30).json()
        assert len(studies) == 2
        ids = {s["00100020"]["Value"][0] for s in studies}
        assert len(ids) == 1 and "SAME-PATIENT-7" not in ids
        for node in nodes:
            assert not (node.data_dir / "secrets" / "deid.key").exists()  # no key of its own
    finally:
        for node in nodes:
            node.stop()


def test_an_api_key_made_on_one_node_is_accepted_by_another(tmp_path, postgresql_url):
    from archive.auth.apikeys import KeyStore
    from archive.catalog.database import open_database

    one = KeyStore(tmp_path / "a", open_database(postgresql_url))
    key, text = one.create("pipeline", {"default": frozenset({"read"})})
    other = KeyStore(tmp_path / "b", open_database(postgresql_url))
    assert other.verify(text) == key
    assert one.revoke(key.id) and other.verify(text) is None
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written per node

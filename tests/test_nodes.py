"""Two ``slidearchive serve`` nodes sharing a real PostgreSQL catalog, a real S3 bucket (s3proxy) and a
real Elasticsearch node behave as one archive: what one stores every node finds and serves, over
DICOMweb and DIMSE (DCMTK); one pseudonym key for all nodes; a C-MOVE works from either; a storage
commitment asked of a node that is then killed (SIGKILL) is answered by the other (its leased work
item passes to the survivor); a node killed in the middle of a multi-instance STOW-RS leaves nothing
partial, and the client's retry on the other node completes the slide without duplicates."""
from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

import s3_server
from conftest import REPO, free_port
from dicomweb.multipart import CHUNK
from es_node import es_node  # noqa: F401  (fixture)
from nodes import Cluster, PiecewiseStow, wait_for
from slides import SlideSpec, expected_tile, make_slide
from test_auth import stow as stow_with_token
from test_dimse_tools import AE as ARCHIVE_AE, DCMTK, dcmtk, find, needs_dcmtk, store

pytestmark = [needs_dcmtk, pytest.mark.slow, pytest.mark.elasticsearch]
#: Frames as stored (no transcoding), so they can be compared with the sent tiles byte for byte.
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def stow(node, paths) -> requests.Response:
    return stow_with_token(node, paths, None, "")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    """A DCMTK storescp (AE DEST): the C-MOVE destination of both nodes."""
    out = tmp_path_factory.mktemp("dest")
    port = free_port()
    proc = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "DEST", "+xa", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield out, port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def commit_scp():
    """The storage commitment requester's own SCP, where reports on a new association arrive."""
    reports: list[tuple[int, Dataset]] = []
    arrived = threading.Event()

    def on_report(event):
        reports.append((event.request.EventTypeID, event.event_information))
        arrived.set()
        return 0x0000, None

    ae = AE(ae_title="COMMITSCU")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    yield port, reports, arrived
    server.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgresql, s3proxy, es_node, receiver, commit_scp):  # noqa: F811
    bucket = s3_server.new_bucket(s3proxy)
    shared = f"""
[catalog]
url = "{postgresql.create_database()}"
[storage]
url = "s3://{bucket}/archive"
[index]
backend = "elasticsearch"
urls = ["{es_node.url}"]
index_prefix = "nodes-{uuid.uuid4().hex[:8]}-"
[[dimse.remote]]
ae_title = "DEST"
host = "127.0.0.1"
port = {receiver[1]}
[[dimse.remote]]
ae_title = "COMMITSCU"
host = "127.0.0.1"
port = {commit_scp[0]}
"""
    c = Cluster(tmp_path_factory.mktemp("cluster"), shared, env=s3proxy.env()).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def slides(cluster, tmp_path_factory) -> dict[str, list[Path]]:
    """Slide "a" stored over STOW-RS on node 1, slide "b" over C-STORE on node 2; the same patient."""
    root = tmp_path_factory.mktemp("slides")
    a = make_slide(root / "a", SlideSpec(*SIZES["NA"], seed=501, patient_id="NODES-1", accession="NA",
                                         label=False, overview=False))
    b = make_slide(root / "b", SlideSpec(*SIZES["NB"], seed=502, patient_id="NODES-1", accession="NB",
                                         label=False, overview=False))
    r = stow(cluster[0], a)
    assert r.status_code in (200, 202), r.text
    result = store(cluster[1], root / "b", options=["-xy"])
    assert result.returncode == 0, result.stdout + result.stderr
    return {"a": a, "b": b}


def _stored_uids(node, slide: str, frames: int | None = None) -> list[dict]:
    """The instances a node lists for one of the test's slides (de-identified: their UIDs and accession
    numbers are pseudonyms), told apart by the frame count of their first level (or ``frames``)."""
    r = requests.get(f"{node.dicomweb}/instances", params={"includefield": ["00280008", "00100020"], "limit": 1000}, timeout=30)
    assert r.status_code in (200, 204), r.text
    found = r.json() if r.status_code == 200 else []
    studies = {_value(i, "0020000D") for i in found
               if i.get("00280008", {}).get("Value") == [frames or LEVEL0_FRAMES[slide]]}
    return [i for i in found if _value(i, "0020000D") in studies]


#: Level-0 frame counts (256-pixel tiles) of the test's slides: unique, so each slide can be found.
SIZES = {"NA": (900, 500), "NB": (1100, 300), "NC": (5120, 3840)}
LEVEL0_FRAMES = {k: -(-w // 256) * -(-h // 256) for k, (w, h) in SIZES.items()}


def _value(item: dict, tag: str):
    return item[tag]["Value"][0]


def test_what_one_node_stores_every_node_finds_and_serves(cluster, slides):
    for accession, paths in (("NA", slides["a"]), ("NB", slides["b"])):
        seen = [_stored_uids(node, accession) for node in cluster]
        uids = [{_value(i, "00080018") for i in found} for found in seen]
        assert len(uids[0]) == len(paths) and uids[0] == uids[1]
        level0 = pydicom.dcmread(paths[0])
        stored = next(i for i in seen[0] if _value(i, "00280008") == level0.NumberOfFrames)
        study, series, sop = (_value(stored, t) for t in ("0020000D", "0020000E", "00080018"))
        for node in cluster:
            for number in (1, int(level0.NumberOfFrames)):
                r = requests.get(f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/{number}",
                                 headers={"Accept": FRAME_ACCEPT}, timeout=30)
                assert r.status_code == 200 and expected_tile(level0, number - 1) in r.content


def test_one_pseudonymous_patient_whichever_node_received_the_slide(cluster, slides):
    patients = {(_value(i, "00100020")) for node in cluster for acc in ("NA", "NB") for i in _stored_uids(node, acc)}
    assert len(patients) == 1 and "NODES-1" not in patients  # one key for the archive, never one per node


def test_cfind_on_every_node(cluster, slides, tmp_path):
    for n, node in enumerate(cluster):
        result, found = find(node, tmp_path / f"find{n}", "STUDY", {"StudyInstanceUID": "", "PatientID": ""})
        assert result.returncode == 0, result.stderr
        expected = {_value(_stored_uids(node, slide)[0], "0020000D") for slide in ("NA", "NB")}
        assert {str(ds.StudyInstanceUID) for ds in found} >= expected


def test_a_slide_stored_on_one_node_is_found_by_search_on_the_other(cluster, slides):
    """/api/search (the shared Elasticsearch index, fed by whichever node holds the outbox lease)."""
    for stored_on, searched_on, accession in ((cluster[0], cluster[1], "NA"), (cluster[1], cluster[0], "NB")):
        instances = _stored_uids(stored_on, accession)
        study = _value(instances[0], "0020000D")
        hits = wait_for(lambda: _search(searched_on, study), 90, what=f"slide {accession} in /api/search")
        assert {h["series_uid"] for h in hits} == {_value(i, "0020000E") for i in instances}


def _search(node, study_uid: str) -> list[dict]:
    r = requests.get(f"{node.url}/api/search", params={"study_uid": study_uid}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_cmove_from_either_node(cluster, slides, receiver):
    out, _ = receiver
    for node, accession in ((cluster[0], "NB"), (cluster[1], "NA")):  # each moves what the other stored
        study = _value(_stored_uids(node, accession)[0], "0020000D")
        before = set(out.iterdir())
        result = dcmtk("movescu", "-S", "-aet", "MOVESCU", "-aec", ARCHIVE_AE, "-aem", "DEST",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                       "127.0.0.1", str(node.dimse_port))
        assert result.returncode == 0, result.stdout + result.stderr
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in set(out.iterdir()) - before]
        assert {str(ds.StudyInstanceUID) for ds in received} == {study}
        assert len(received) == len(slides["a" if accession == "NA" else "b"])


def _commitment_request(items: list[dict]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    ds.ReferencedSOPSequence = Sequence()
    for item in items:
        ref = Dataset()
        ref.ReferencedSOPClassUID = _value(item, "00080016")
        ref.ReferencedSOPInstanceUID = _value(item, "00080018")
        ds.ReferencedSOPSequence.append(ref)
    return ds


def test_storage_commitment_is_answered_when_the_asked_node_dies(cluster, slides, commit_scp, tmp_path):
    _, reports, arrived = commit_scp
    reports.clear()
    arrived.clear()
    asked = cluster[0]
    request = _commitment_request(_stored_uids(asked, "NA"))
    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", asked.dimse_port, ae_title=ARCHIVE_AE)
    assert assoc.is_established
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    assert status.Status == 0x0000
    cluster.kill(asked)  # before it could report: the N-ACTION was accepted, the node is gone
    assoc.abort()
    try:
        assert arrived.wait(120), "no N-EVENT-REPORT from the surviving node"
        event_type, info = reports[0]
        assert event_type == 1 and info.TransactionUID == request.TransactionUID
        assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == \
            {i.ReferencedSOPInstanceUID for i in request.ReferencedSOPSequence}
    finally:
        asked.start()


def _served_as_sent(node, stored: list[dict], paths: list[Path]) -> None:
    """Each stored instance is whole: its first and last frames are the sent tiles, byte for byte
    (the instances of one slide are told apart by their frame counts)."""
    sent = {int(ds.NumberOfFrames): ds for ds in map(pydicom.dcmread, paths)}
    for item in stored:
        ds = sent[_value(item, "00280008")]
        study, series, sop = (_value(item, t) for t in ("0020000D", "0020000E", "00080018"))
        for number in sorted({1, int(ds.NumberOfFrames)}):
            r = requests.get(f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/{number}",
                             headers={"Accept": FRAME_ACCEPT}, timeout=30)
            assert r.status_code == 200 and expected_tile(ds, number - 1) in r.content


def _verify(node) -> None:
    """``slidearchive verify`` on the node's configuration (the shared catalog and bucket): clean."""
    result = subprocess.run([sys.executable, "-m", "archive.cli", "verify", *node.cli_args],
                            capture_output=True, text=True, cwd=REPO, timeout=300, env=node.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"missing objects: 0; objects without catalog rows: 0; checksum mismatches: 0; "
                     r"temp files: 0; incomplete uploads: 0", result.stdout), result.stdout


def test_a_node_killed_mid_stow_leaves_nothing_partial_and_the_retry_on_the_other_completes(cluster, tmp_path):
    paths = make_slide(tmp_path / "c", SlideSpec(*SIZES["NC"], seed=503, patient_id="NODES-2", accession="NC",
                                                 label=False, overview=False))
    levels = [int(pydicom.dcmread(p, stop_before_pixels=True).NumberOfFrames) for p in paths]
    assert len(paths) >= 3 and levels[0] == LEVEL0_FRAMES["NC"]
    order = [paths[1], paths[0], *paths[2:]]  # level 1, then level 0: the large part during which the node dies
    victim, survivor = cluster
    upload = PiecewiseStow(victim, order)
    # The node reads the body CHUNK bytes at a time and stores each part once it has read the next
    # delimiter: past that, well inside the second part, the first is stored and the second arriving.
    assert len(upload.parts[1]) > CHUNK + 65536
    try:
        upload.send_parts(1)
        upload.send_partial(1, CHUNK + 32768)
        wait_for(lambda: _stored_uids(survivor, "NC", frames=levels[1]), 60,
                 what="the first part, stored by the node about to be killed")
        cluster.kill(victim)
        with pytest.raises((http.client.HTTPException, OSError)):
            upload.response()  # the client sees the connection die, not an answer
        before = _stored_uids(survivor, "NC", frames=levels[1])
        assert len(before) == 1  # what was committed; nothing of the part being received
        _served_as_sent(survivor, before, paths)

        retry = stow(survivor, paths)  # the client sends the whole slide again, to the other node
        assert retry.status_code in (200, 202), retry.text
        body = retry.json()
        assert "00081198" not in body and len(body["00081199"]["Value"]) == len(paths), body
        after = _stored_uids(survivor, "NC")
        sops = [_value(i, "00080018") for i in after]
        assert len(sops) == len(set(sops)) == len(paths)  # no duplicate, nothing missing
        assert _value(before[0], "00080018") in sops  # the first one was recognised, not stored twice
        _served_as_sent(survivor, after, paths)
        study = _value(after[0], "0020000D")
        hits = wait_for(lambda: _search(survivor, study), 90, what="the retried slide in /api/search")
        assert {h["series_uid"] for h in hits} == {_value(i, "0020000E") for i in after}
        _verify(survivor)
    finally:
        upload.close()
        if victim.process is None or victim.process.poll() is not None:
            victim.start()
    _verify(victim)  # the restarted node swept what the killed one had spooled
    assert {_value(i, "00080018") for i in _stored_uids(victim, "NC")} == set(sops)


def test_stores_on_one_node_and_deletes_on_the_other_leave_a_consistent_study(cluster, tmp_path):
    """STOW-RS into one series on both nodes while node 2 deletes the study again and again: the
    rows each transaction relies on change under it (PostgreSQL, READ COMMITTED). Found this way:
    foreign key violations answered 500 to either side. Now no 5xx, and afterwards the catalog,
    the bucket, QIDO-RS and the study's counts agree."""
    level = make_slide(tmp_path / "r", SlideSpec(256, 256, seed=504, patient_id="NODES-3", accession="NR",
                                                 label=False, overview=False))[0]
    answers: list[tuple[str, int, str]] = []
    first = stow(cluster[0], [level])
    assert first.status_code == 202, first.text  # stored, with de-identification's warning
    study = first.json()["00081199"]["Value"][0]["00081190"]["Value"][0].split("/studies/")[1].split("/")[0]

    def copy(n: int) -> Path:
        ds = pydicom.dcmread(level)  # its own file meta: the threads write copies at once
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"copy{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    def store_copies(node, start: int) -> None:
        for n in range(start, start + 25):
            r = stow(node, [copy(n)])
            answers.append(("stow", r.status_code, r.text[:300]))

    def delete_again() -> None:
        for _ in range(25):
            r = requests.delete(f"{cluster[1].dicomweb}/studies/{study}", timeout=60)
            answers.append(("delete", r.status_code, r.text[:300]))

    workers = [threading.Thread(target=store_copies, args=(cluster[0], 0)),
               threading.Thread(target=store_copies, args=(cluster[0], 100)),
               threading.Thread(target=store_copies, args=(cluster[1], 200)),
               threading.Thread(target=delete_again)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    unexpected = [a for a in answers if (a[0], a[1]) not in {("stow", 202), ("delete", 204), ("delete", 404)}]
    assert not unexpected, unexpected[:5]
    assert len(answers) == 100
    _verify(cluster[0])
    held = requests.get(f"{cluster[0].dicomweb}/studies/{study}/instances", timeout=30)
    count = len(held.json()) if held.status_code == 200 else 0
    listed = requests.get(f"{cluster[1].dicomweb}/studies", params={"StudyInstanceUID": study}, timeout=30).json()
    if count:
        assert listed and listed[0]["00201208"]["Value"] == [count], listed  # counts kept with the rows
    else:
        assert listed == [], listed

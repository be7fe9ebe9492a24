"""A real server on S3 storage (s3proxy) while S3 fails: 503 / 0xA700, nothing partial, nothing lost; verify.
A delete still succeeds: it needs the catalog only, its objects are removed once S3 is back."""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames

from conftest import IDENTIFIED, Server
from s3_faults import FaultProxy
from s3_server import S3Proxy, new_bucket
from slides import SlideSpec, make_slide

FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def s3_server(root: Path, s3: S3Proxy, bucket: str, endpoint: str | None = None, dimse: bool = False,
              storage: str = "", args: tuple[str, ...] = ()) -> Server:
    config = IDENTIFIED + f'\n[storage]\nurl = "s3://{bucket}/archive"\ntimeout = 3\n{storage}'
    server = Server(root, config, dimse=dimse, args=args)
    server.env.update(s3.env())
    if endpoint:
        server.env["AWS_ENDPOINT_URL"] = endpoint
    return server.start()


def stow(server: Server, path: Path) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    return requests.post(f"{server.dicomweb}/studies", data=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})


def frame_url(server: Server, path: Path, number: int = 1) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/{number}")


def instances(server: Server) -> set[str]:
    return {i["00080018"]["Value"][0] for i in requests.get(f"{server.dicomweb}/instances", timeout=30).json()}


def verify(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", "verify", "--data-dir", str(server.data_dir),
                           "--config", str(server.config_path), *args], capture_output=True, text=True,
                          env=server.env, timeout=120)


@pytest.fixture
def slide(tmp_path):
    return make_slide(tmp_path / "slide", SlideSpec(width=512, height=512, seed=141, label=False, overview=False))


@pytest.mark.parametrize("mode", ["503", "500", "hang"])
def test_s3_failing_means_503_and_nothing_partial(s3proxy, tmp_path, slide, mode):
    faults = FaultProxy(s3proxy.port)
    server = s3_server(tmp_path / "server", s3proxy, new_bucket(s3proxy), faults.endpoint, dimse=True)
    try:
        first, second = slide[0], slide[1]
        last = int(pydicom.dcmread(first, stop_before_pixels=True).NumberOfFrames)  # nothing to read ahead after it
        assert stow(server, first).status_code == 200
        before = requests.get(frame_url(server, first, last), headers={"Accept": FRAME_ACCEPT}, timeout=30)
        assert before.status_code == 200
        faults.set(mode)
        refused = stow(server, second)
        assert refused.status_code == 503, refused.text
        assert "Storage unavailable" in refused.headers.get("Warning", "")
        cold = requests.get(frame_url(server, first, 2), headers={"Accept": FRAME_ACCEPT}, timeout=30)
        assert cold.status_code == 503 and cold.json()["error"] == "Storage unavailable"
        assert "retry later" in cold.json()["message"]
        assert _c_store(server, second) == 0xA700
        assert instances(server) == {pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID}
        faults.set("pass")  # S3 is back: the same requests succeed, nothing was lost
        assert stow(server, second).status_code == 200
        again = requests.get(frame_url(server, first, last), headers={"Accept": FRAME_ACCEPT}, timeout=30)
        assert again.status_code == 200 and again.content.split(b"\r\n\r\n", 1)[1][:100] in before.content
        assert len(instances(server)) == 2
        faults.set(mode)  # a delete needs the catalog only: the objects go once the bucket answers again
        assert requests.delete(_study_url(server, first), timeout=30).status_code == 204
        assert instances(server) == set()
        faults.set("pass")
        result = verify(server, "--checksums")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 instances in the catalog, 2 objects in storage (2 of deleted instances, awaiting removal" \
            in result.stdout, result.stdout
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        server.stop()
        faults.close()


def test_a_frame_storage_does_not_answer_is_asked_of_it_once(s3proxy, tmp_path, slide):
    """A single frame (the fast path) costs S3 as many requests as a multi-frame request
    (Flask's path), not twice as many: the fast path hands its failure on, not the request."""
    faults = FaultProxy(s3proxy.port)
    server = s3_server(tmp_path / "server", s3proxy, new_bucket(s3proxy), faults.endpoint,
                       storage="frame_cache_mb = 0\n")
    try:
        assert stow(server, slide[0]).status_code == 200
        asked = {}
        for frames in ("2", "2,3"):
            faults.set("503")
            answer = requests.get(frame_url(server, slide[0], frames), headers={"Accept": FRAME_ACCEPT}, timeout=60)
            assert answer.status_code == 503 and answer.json()["error"] == "Storage unavailable", answer.text
            asked[frames] = faults.requests
        assert asked["2"] == asked["2,3"] > 0, asked
    finally:
        server.stop()
        faults.close()


def test_frames_of_one_request_and_the_read_ahead(s3proxy, tmp_path):
    """A multi-frame request comes back whole and in order; the frames after a missed one are read ahead
    into the cache with it (served while S3 answers nothing), a frame further on is not."""
    level = make_slide(tmp_path / "slide", SlideSpec(width=1024, height=256, tile=64, seed=142, levels=1,
                                                     label=False, overview=False))[0]
    ds = pydicom.dcmread(level)
    expected = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    # frames 2 and 41 fit a read-ahead of 8 KB; frame 60 is more than 8 KB past frame 40
    assert len(expected) == 64 and len(expected[1]) < 8192 and len(expected[40]) < 8192
    assert sum(len(f) for f in expected[40:59]) > 8192
    faults = FaultProxy(s3proxy.port)
    server = s3_server(tmp_path / "server", s3proxy, new_bucket(s3proxy), faults.endpoint,
                       storage="frame_readahead_kb = 8\n", args=("--workers", "1"))  # one worker: one cache
    try:
        assert stow(server, level).status_code == 200
        client = DICOMwebClient(url=server.dicomweb)
        media = (("application/octet-stream", "*"),)
        uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        frames = lambda *numbers: client.retrieve_instance_frames(*uids, frame_numbers=list(numbers),  # noqa: E731
                                                                  media_types=media)
        assert frames(1) == [expected[0]]
        assert frames(22, 20, 21, 40, 20) == [expected[i - 1] for i in (22, 20, 21, 40, 20)]
        faults.set("503")
        assert frames(2) == [expected[1]]  # read ahead after frame 1
        assert frames(41, 21) == [expected[40], expected[20]]  # after 40; 21 was asked for before
        cold = requests.get(frame_url(server, level, 60), headers={"Accept": FRAME_ACCEPT}, timeout=30)
        assert cold.status_code == 503 and "retry later" in cold.json()["message"]
    finally:
        server.stop()
        faults.close()


def _study_url(server: Server, path: Path) -> str:
    return f"{server.dicomweb}/studies/{pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID}"


def _c_store(server: Server, path: Path) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import VLWholeSlideMicroscopyImageStorage

    ds = pydicom.dcmread(path)
    ae = AE(ae_title="S3FAULTS")
    ae.add_requested_context(VLWholeSlideMicroscopyImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="SLIDEARCHIVE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


def test_s3_stopped_and_a_bucket_that_disappears(tmp_path, slide):
    """The real s3proxy stopped, then its bucket gone: 503 while so; back as it was afterwards."""
    s3 = S3Proxy(tmp_path / "s3").start()
    bucket = s3.create_bucket()
    server = s3_server(tmp_path / "server", s3, bucket)
    try:
        assert stow(server, slide[0]).status_code == 200
        last = int(pydicom.dcmread(slide[0], stop_before_pixels=True).NumberOfFrames)  # nothing to read ahead after it
        url = frame_url(server, slide[0], last)
        expected = requests.get(url, headers={"Accept": FRAME_ACCEPT}, timeout=30).content
        assert requests.get(f"{server.url}/health/ready", timeout=30).status_code == 200
        s3.stop()
        not_ready = requests.get(f"{server.url}/health/ready", timeout=30)
        assert not_ready.status_code == 503 and not_ready.json()["components"]["storage"]["status"] == "down"
        assert stow(server, slide[1]).status_code == 503
        assert requests.get(frame_url(server, slide[0], 2), headers={"Accept": FRAME_ACCEPT},
                            timeout=30).status_code == 503
        down = verify(server)
        assert down.returncode != 0 and "object storage unavailable" in (down.stdout + down.stderr)
        s3.start()
        (s3.data / bucket).rename(tmp_path / "hidden")  # the bucket disappears (objects kept aside)
        gone = requests.get(frame_url(server, slide[0], 3), headers={"Accept": FRAME_ACCEPT}, timeout=30)
        assert gone.status_code == 503 and f"bucket {bucket} not found" in gone.json()["message"]
        assert stow(server, slide[1]).status_code == 503
        (tmp_path / "hidden").rename(s3.data / bucket)  # and comes back
        assert stow(server, slide[1]).status_code == 200
        frames = [requests.get(frame_url(server, slide[0], n), headers={"Accept": FRAME_ACCEPT}, timeout=30)
                  for n in (1, 2, 3, last)]
        assert [f.status_code for f in frames] == [200, 200, 200, 200]
        assert frames[-1].content.split(b"\r\n\r\n", 1)[1][:100] in expected
        assert verify(server, "--checksums").returncode == 0
        assert requests.get(f"{server.url}/health/ready", timeout=30).status_code == 200
    finally:
        server.stop()
        s3.cleanup()


def test_verify_checks_the_catalog_against_the_bucket(s3proxy, tmp_path):
    slide = make_slide(tmp_path / "slide", SlideSpec(width=1024, height=1024, seed=142, label=False, overview=False))
    assert len(slide) >= 3
    bucket = new_bucket(s3proxy)
    server = s3_server(tmp_path / "server", s3proxy, bucket)
    try:
        for path in slide:
            assert stow(server, path).status_code == 200
        ok = verify(server, "--checksums")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"{len(slide)} instances in the catalog, {len(slide)} objects in storage" in ok.stdout
        client = s3proxy.client()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
        client.delete_object(Bucket=bucket, Key=keys[0])  # bytes lost
        client.put_object(Bucket=bucket, Key="archive/" + "f" * 32, Body=b"orphan")  # bytes nobody catalogued
        body = client.get_object(Bucket=bucket, Key=keys[1])["Body"].read()
        client.put_object(Bucket=bucket, Key=keys[1], Body=body[:-10] + b"XXXXXXXXXX")  # silent corruption
        client.put_object(Bucket=bucket, Key=keys[2], Body=body[:100])  # another one cut short
        quick = verify(server, "--orphans-after", "0")  # S3 has no back-dating; the orphan counts at once
        assert quick.returncode == 1
        assert "missing objects: 1; objects without catalog rows: 1; checksum mismatches: 0" in quick.stdout
        bad = verify(server, "--checksums", "--orphans-after", "0")
        assert "missing objects: 1; objects without catalog rows: 1; checksum mismatches: 2" in bad.stdout
        assert "SHA-256 differs" in bad.stdout and "100 bytes, the catalog says" in bad.stdout
        young = verify(server)
        assert "objects without catalog rows: 0" in young.stdout
        assert "no catalog row yet (stored less than 60 min ago, left alone): storage id " + "f" * 32 in young.stdout
        fixed = verify(server, "--repair", "--orphans-after", "0")
        assert "removed 1 rows without bytes, 1 orphan objects" in fixed.stdout
        assert len(instances(server)) == len(slide) - 1
        keys_after = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        assert "archive/" + "f" * 32 not in keys_after
    finally:
        server.stop()


_KILLED_UPLOAD = """
import sys
from pathlib import Path
from archive.config import StorageSettings
from archive.storage.s3 import S3Storage

storage = S3Storage(StorageSettings(url=sys.argv[1], part_size_mb=5, upload_concurrency=1), Path(sys.argv[2]))
temp = storage.new_temp()
with open(temp, "wb") as f:
    for _ in range(16):
        f.write(bytes(range(256)) * 4096 * 5)  # 80 MB: sixteen parts
print("uploading", flush=True)
storage.commit(temp)
"""


def test_verify_reports_and_repair_aborts_the_upload_of_a_node_killed_mid_upload(s3proxy, tmp_path, slide):
    """The archive's own upload (S3Storage.commit) in a process killed with SIGKILL once its first
    part is in the bucket: verify reports the open upload (left alone while younger than
    --stale-uploads-after), and verify --repair aborts it, deleting its parts."""
    import signal
    import time

    bucket = new_bucket(s3proxy)
    server = s3_server(tmp_path / "server", s3proxy, bucket)
    proxy = FaultProxy(int(s3proxy.endpoint.rsplit(":", 1)[1]))
    client = s3proxy.client()
    try:
        assert stow(server, slide[0]).status_code == 200
        env = dict(server.env, AWS_ENDPOINT_URL=proxy.endpoint)
        node = subprocess.Popen([sys.executable, "-c", _KILLED_UPLOAD, f"s3://{bucket}/archive", str(tmp_path / "t")],
                                cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.PIPE)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                uploads = client.list_multipart_uploads(Bucket=bucket, Prefix="archive/").get("Uploads", [])
                if uploads and client.list_parts(Bucket=bucket, Key=uploads[0]["Key"],
                                                 UploadId=uploads[0]["UploadId"]).get("Parts"):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the upload never started")
            proxy.set("hang")  # the node's next part never arrives...
        finally:
            node.send_signal(signal.SIGKILL)  # ...and the node dies
            node.wait(10)
        proxy.close()
        [left] = client.list_multipart_uploads(Bucket=bucket, Prefix="archive/")["Uploads"]
        storage_id = left["Key"].rsplit("/", 1)[1]

        young = verify(server)
        assert young.returncode == 0, young.stdout + young.stderr
        assert "; incomplete uploads: 0" in young.stdout
        assert f"upload in progress (left alone): storage id {storage_id}" in young.stdout
        stale = verify(server, "--stale-uploads-after", "0")
        assert stale.returncode == 1
        assert "; incomplete uploads: 1" in stale.stdout and f"incomplete upload: storage id {storage_id}" in stale.stdout
        fixed = verify(server, "--repair", "--stale-uploads-after", "0")
        assert "aborted 1 incomplete uploads" in fixed.stdout, fixed.stdout + fixed.stderr
        assert client.list_multipart_uploads(Bucket=bucket, Prefix="archive/").get("Uploads", []) == []
        clean = verify(server, "--checksums", "--stale-uploads-after", "0")
        assert clean.returncode == 0 and "; incomplete uploads: 0" in clean.stdout, clean.stdout
    finally:
        server.stop()

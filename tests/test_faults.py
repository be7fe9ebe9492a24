"""Crashes and full disks leave nothing half-stored."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from conftest import IDENTIFIED, Server
from slides import SlideSpec, make_slide


def _verify(server: Server) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", "verify", "--data-dir", str(server.data_dir),
                           "--config", str(server.config_path)], capture_output=True, text=True)


def test_kill_9_during_ingest_leaves_no_partial_instance(tmp_path):
    paths = make_slide(tmp_path / "slide", SlideSpec(width=2048, height=2048, codec="native", levels=1, seed=51))
    data = paths[0].read_bytes()
    server = Server(tmp_path / "server", IDENTIFIED, dimse=False).start()
    try:
        _kill_mid_ingest(server, data, paths)
    finally:
        server.stop()


def _kill_mid_ingest(server: Server, data: bytes, paths) -> None:
    boundary = uuid.uuid4().hex
    sent = threading.Event()

    def body():
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield data[: len(data) // 2]
        sent.set()
        time.sleep(30)  # the server dies while waiting for the rest
        yield data[len(data) // 2:]

    def post():
        try:
            requests.post(f"{server.dicomweb}/studies", data=body(), timeout=60,
                          headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        except requests.RequestException:
            pass

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    assert sent.wait(30)
    time.sleep(1)  # let the server spool what it got
    server.kill()
    leftovers = list((server.data_dir / "storage" / "tmp").iterdir())
    assert leftovers, "the test meant to kill the server mid-spool"
    server.start()
    assert requests.get(f"{server.dicomweb}/studies").json() == []
    result = _verify(server)
    assert result.returncode == 0, result.stdout
    assert "temp files: 0" in result.stdout
    # and the same instance can be sent again afterwards
    DICOMwebClient(url=server.dicomweb).store_instances([dcmread(paths[0])])
    assert len(requests.get(f"{server.dicomweb}/instances").json()) == 1


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_mid_write(tmp_path, small_disk):
    big = make_slide(tmp_path / "big", SlideSpec(width=4096, height=4096, codec="native", seed=52, levels=1,
                                                  label=False, overview=False))[0]
    small = make_slide(tmp_path / "small", SlideSpec(width=256, height=256, seed=53, label=False, overview=False))[0]
    assert big.stat().st_size > 6 * 1024 * 1024
    server = Server(small_disk, IDENTIFIED, dimse=False)
    server.log_path = tmp_path / "server.log"  # keep the log off the full disk
    server.start()
    try:
        _fill_disk(server, big, small)
    finally:
        server.stop()


def _fill_disk(server: Server, big, small) -> None:
    client = DICOMwebClient(url=server.dicomweb)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + big.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    r = requests.post(f"{server.dicomweb}/studies", data=body,
                      headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code in (409, 507)
    assert "Out of resources" in r.text or "Out of resources" in r.headers.get("Warning", "")
    assert requests.get(f"{server.url}/health").status_code == 200
    assert requests.get(f"{server.dicomweb}/studies").json() == []
    client.store_instances([dcmread(small)])  # space came back: the next instance is stored
    assert len(requests.get(f"{server.dicomweb}/instances").json()) == 1
    result = _verify(server)
    assert result.returncode == 0, result.stdout

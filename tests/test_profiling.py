"""SLIDEARCHIVE_PROFILE (dicomweb/profiling.py): a worker writes its CPU totals every DUMP_EVERY requests.

A benchmark tool, but the findings quote its figures: this checks that the totals file appears
and that its numbers hang together (store_file inside requests, requests inside the process).
"""
from __future__ import annotations

import time
import urllib.request
import uuid

import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

from conftest import IDENTIFIED, SHARED_DATA, Server
from dicomweb.profiling import DUMP_EVERY, ENV


def _small_instance(path) -> bytes:
    """The shared small SM image as a new instance (a STOW that stores, not a duplicate)."""
    ds = dcmread(SHARED_DATA / "sm_image.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _totals(text: str) -> dict[str, float]:
    """The totals file's ``name value`` lines (the per-thread lines keyed by their thread id)."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        out[" ".join(words[:-1])] = float(words[-1])
    return out


def test_worker_writes_sane_cpu_totals(tmp_path):
    profile_dir = tmp_path / "profile"
    server = Server(tmp_path / "server", IDENTIFIED, dimse=False, args=("--workers", "1"))
    server.env[ENV] = str(profile_dir)
    server.start()
    try:
        boundary = uuid.uuid4().hex
        for n in range(3):
            part = _small_instance(tmp_path / f"sm{n}.dcm")
            body = (b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part
                    + b"\r\n--" + boundary.encode() + b"--\r\n")
            r = requests.post(f"{server.dicomweb}/studies", data=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json"})
            assert r.status_code == 200, r.text
        files: list = []
        for _ in range(DUMP_EVERY):  # the start-up's health checks were requests too
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as r:
                assert r.status == 200
            files = list(profile_dir.glob("worker-*.txt"))
            if files:
                break
        deadline = time.time() + 10
        while not files and time.time() < deadline:  # written when the 50th request's body is closed
            time.sleep(0.1)
            files = list(profile_dir.glob("worker-*.txt"))
    finally:
        server.stop()
    assert len(files) == 1, "one worker, one totals file"
    totals = _totals(files[0].read_text())
    assert totals["requests"] == DUMP_EVERY
    assert 0 < totals["store_file_cpu_s"] < totals["request_cpu_s"] <= totals["process_cpu_s"]
    threads = [v for k, v in totals.items() if k.startswith("thread ")]
    assert threads and abs(sum(threads) - totals["request_cpu_s"]) < 0.01
    assert not list(profile_dir.glob("*.prof")), "no function profile unless asked for"

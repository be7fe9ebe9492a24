"""What the single-frame path remembers between requests, and what it must not: the Accept
negotiation (remembered: a pure function of the header), the multipart boundary (never: new
random bits for every body), the access log's time stamp (remembered for its second), and,
over real sockets on a two-worker server, nothing of the catalog: a collection change made by
another process and a delete answered by either worker stop the frames at once in both."""
from __future__ import annotations

import re
import time

import pydicom
import pytest
import requests

from archive.errors import InvalidRequest
from archive.logs import AccessSink, query_keys
from dicomweb import media, multipart

from conftest import IDENTIFIED
from slides import SlideSpec, make_slide
from test_auth import bearer, cli, stow, with_admin_key

JPEG = "1.2.840.10008.1.2.4.50"
SYNTAXES = [JPEG, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4"]
HEADERS = [
    None, "", "*/*", "image/jpeg", "image/png", "application/octet-stream",
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="image/jpeg"',
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
    'multipart/related; type="image/jp2", multipart/related; type="image/jpeg"; q=0.5',
    'multipart/related; type="image/jpeg"; q=0, image/jpeg',
    'multipart/related; type="image/dicom-rle", application/octet-stream; q=0.1',
    "IMAGE/JPEG",
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50' + ", */*;q=0.1" * 60,
]


@pytest.mark.parametrize("single", [True, False])
@pytest.mark.parametrize("stored", SYNTAXES)
def test_remembered_frame_format_is_the_negotiated_one(stored, single):
    media._frame_formats.clear()
    for _ in range(3):  # the first call negotiates, the next ones answer from memory
        for header in HEADERS:
            expected = media.choose_frame_format(media.parse_accept(header), stored, single)
            assert media.frame_format(header, stored, single) == expected, header


def test_a_malformed_accept_header_is_refused_every_time():
    media._frame_formats.clear()
    for _ in range(3):
        with pytest.raises(InvalidRequest, match="malformed q value"):
            media.frame_format("image/jpeg; q=high", JPEG, True)
    assert len(media._frame_formats) == 0


def test_a_long_accept_header_is_negotiated_but_not_remembered():
    media._frame_formats.clear()
    long = "image/jpeg, " + ", ".join(f"image/x-{n}" for n in range(100))
    assert len(long) > media.REMEMBERED_ACCEPT_CHARS
    assert media.frame_format(long, JPEG, True) == media.FrameChoice("image/jpeg", JPEG, False, False)
    assert len(media._frame_formats) == 0
    media.frame_format("image/jpeg", JPEG, True)
    assert len(media._frame_formats) == 1


def test_remembered_frame_formats_are_bounded():
    media._frame_formats.clear()
    for n in range(1000):
        media.frame_format(f"image/jpeg, image/x-{n}", JPEG, True)
    assert len(media._frame_formats) <= media._frame_formats.entries


def test_every_multipart_boundary_is_new_and_random():
    boundaries = [multipart.new_boundary() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", b) for b in boundaries)
    assert len(set(boundaries)) == len(boundaries)
    # 128 random bits each: every hex digit turns up at every position
    for position in range(32):
        assert len({b[position] for b in boundaries}) == 16, position


def test_access_log_stamp_follows_the_clock(tmp_path, monkeypatch):
    sink = AccessSink(tmp_path / "access.log", "text")
    try:
        now = [1_700_000_000.25]
        monkeypatch.setattr(time, "time", lambda: now[0])
        first = sink._stamp()
        assert first == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
        now[0] += 0.5
        assert sink._stamp() == first
        now[0] += 0.5  # the next second
        assert sink._stamp() == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_001))
        now[0] += 3600
        assert sink._stamp() == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_003_601))
    finally:
        monkeypatch.undo()
        sink.close()


@pytest.mark.parametrize("query, logged", [("", ""), ("PatientName=DOE^JOHN&limit=5", "PatientName=&limit="),
                                           ("&&", ""), ("flag", "flag="), ("a=1&a=2", "a=&a=")])
def test_access_log_names_query_parameters_never_their_values(query, logged):
    assert query_keys(query) == logged


def _frame_statuses(url: str, token: str, times: int) -> set[int]:
    """Statuses of ``times`` single-frame GETs, each on a new connection (granian spreads those over
    its workers), as the fast path takes them: no query string, the benchmark's Accept header."""
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    return {requests.get(url, headers={**bearer(token), "Accept": accept}, timeout=30).status_code
            for _ in range(times)}


def test_no_worker_serves_a_frame_after_access_is_removed_elsewhere_or_the_instance_deleted(tmp_path):
    server = with_admin_key(tmp_path / "server", IDENTIFIED + "[auth]\nenabled = true\n").start()
    try:
        reader = cli(server, "keys", "create", "--name", "reader", "--grant", "a:read")
        paths = make_slide(tmp_path / "slide", SlideSpec(width=512, height=512, seed=811, patient_id="FAST-1",
                                                          label=False, overview=False))
        assert stow(server, paths, "a", server.admin).status_code == 200
        ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
        study = ds.StudyInstanceUID
        url = (f"{server.dicomweb}/studies/{study}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}/frames/1")
        counted = lambda: {p.name for p in (server.data_dir / "run" / "metrics").glob("counter_*.db")}
        for _ in range(300):  # until both workers have served (and so hold this level's index and descriptor)
            assert _frame_statuses(url, reader, 1) == {200}
            if len(counted()) >= 2:
                break
        assert len(counted()) >= 2, f"frames served by one worker only: {counted()}"
        assert _frame_statuses(url, reader, 20) == {200}

        # another process (the command line) moves the study out of the reader's collection
        assert cli(server, "collection", "add", study, "b") == "a b"
        assert cli(server, "collection", "remove", study, "a") == "b"
        assert _frame_statuses(url, reader, 40) == {404}
        assert _frame_statuses(url, server.admin, 20) == {200}

        # one worker answers the delete; neither serves the frame afterwards
        r = requests.delete(url.rsplit("/frames/", 1)[0], headers=bearer(server.admin), timeout=30)
        assert r.status_code == 204, r.text
        assert _frame_statuses(url, server.admin, 40) == {404}
    finally:
        server.stop()

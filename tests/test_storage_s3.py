"""The S3 storage backend against a real S3 server (s3proxy on loopback), faults injected in front of it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from archive.config import StorageSettings
from archive.errors import StorageUnavailable
from archive.storage.cache import RangeCache
from s3_faults import FaultProxy
from s3_server import new_bucket


@pytest.fixture
def bucket(s3proxy):
    return new_bucket(s3proxy)


@pytest.fixture
def faults(s3proxy):
    proxy = FaultProxy(s3proxy.port)
    yield proxy
    proxy.close()


def make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=None, **settings):
    from archive.storage.s3 import S3Storage

    for key, value in s3proxy.env().items():
        monkeypatch.setenv(key, value)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    options = {"part_size_mb": 5, "timeout": 3.0, **settings}
    return S3Storage(StorageSettings(url=f"s3://{bucket}/archive/x", **options), tmp_path / "tmp")


def temp_with(storage, data: bytes):
    temp = storage.new_temp()
    temp.write_bytes(data)
    return temp


def test_commit_uploads_in_parts_and_reads_back(s3proxy, bucket, tmp_path, monkeypatch):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch)
    data = os.urandom(12 << 20) + b"the end"
    temp = temp_with(storage, data)
    sid = storage.commit(temp)
    assert not temp.exists()
    head = s3proxy.client().head_object(Bucket=bucket, Key=f"archive/x/{sid}")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MB parts: a multipart upload
    assert storage.size(sid) == len(data)
    assert storage.read_range(sid, 12 << 20, 7) == b"the end"
    with storage.open(sid) as f:
        f.seek(1000)
        assert f.read(5000) == data[1000:6000]
        f.seek(-7, os.SEEK_END)
        assert f.read() == b"the end"
    with storage.local_copy(sid) as path:
        assert path.read_bytes() == data
    assert not path.exists()
    assert storage.objects() == {sid: len(data)}
    storage.remove(sid)
    assert storage.objects() == {} and storage.size(sid) is None
    storage.remove(sid)  # removing twice is not an error


def test_a_missing_object_is_file_not_found(s3proxy, bucket, tmp_path, monkeypatch):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch)
    assert storage.size("0" * 32) is None
    with pytest.raises(FileNotFoundError):
        storage.read_range("0" * 32, 0, 10)
    with pytest.raises(FileNotFoundError):
        storage.open("0" * 32)


def test_upload_memory_is_bounded(s3proxy, bucket, tmp_path):
    """A 192 MB instance goes up with a few parts in memory, never whole (peak RSS of a fresh process)."""
    script = textwrap.dedent(f"""
        import os, resource, sys
        from pathlib import Path
        from archive.config import StorageSettings
        from archive.storage.s3 import S3Storage
        storage = S3Storage(StorageSettings(url="s3://{bucket}/big", part_size_mb=8), Path(sys.argv[1]))
        temp = storage.new_temp()
        block = os.urandom(1 << 20)
        with open(temp, "wb") as f:
            for i in range(192):
                f.write(block[i:] + block[:i])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sid = storage.commit(temp)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(storage.size(sid), before // 1024, after // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "tmp")], capture_output=True, text=True,
                         env={**os.environ, **s3proxy.env()}, cwd=os.getcwd(), timeout=300)
    assert out.returncode == 0, out.stderr
    size, before_mb, after_mb = map(int, out.stdout.split())
    assert size == 192 << 20
    assert after_mb - before_mb < 96, f"peak RSS grew by {after_mb - before_mb} MB uploading 192 MB"


@pytest.mark.parametrize("mode", ["500", "503", "hang", "reset"])
def test_s3_failures_are_storage_unavailable(s3proxy, bucket, tmp_path, monkeypatch, faults, mode):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=faults.endpoint, timeout=2.0,
                           frame_cache_mb=0)
    sid = storage.commit(temp_with(storage, b"x" * 1000))
    faults.set(mode)
    for call in (lambda: storage.read_range(sid, 0, 10), lambda: storage.size(sid), lambda: storage.objects(),
                 lambda: storage.commit(temp_with(storage, os.urandom(6 << 20)))):
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert "retry later" in info.value.message
        assert info.value.http_status == 503 and info.value.dimse_status == 0xA700
    faults.set("pass")
    assert storage.objects() == {sid: 1000}  # nothing half-uploaded became visible
    assert list(storage.tmp.iterdir()) == []  # and the temp files are gone


def test_s3_lost_mid_upload_leaves_no_object(s3proxy, bucket, tmp_path, monkeypatch, faults):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=faults.endpoint, timeout=2.0)
    faults.set("cut", cut_after=7 << 20)  # after the first part, S3 is gone
    with pytest.raises(StorageUnavailable):
        storage.commit(temp_with(storage, os.urandom(12 << 20)))
    faults.set("pass")
    assert storage.objects() == {}


def test_one_broken_connection_is_retried(s3proxy, bucket, tmp_path, monkeypatch, faults):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=faults.endpoint)
    data = os.urandom(12 << 20)
    faults.set("cut", cut_after=7 << 20, fail_after=-1)
    sid = storage.commit(temp_with(storage, data))
    with storage.open(sid) as f:
        assert f.read() == data


def test_a_bucket_that_disappears_is_unavailable_not_missing(s3proxy, bucket, tmp_path, monkeypatch):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch)
    sid = storage.commit(temp_with(storage, b"y" * 100))
    client = s3proxy.client()
    client.delete_object(Bucket=bucket, Key=f"archive/x/{sid}")
    client.delete_bucket(Bucket=bucket)
    for call in (lambda: storage.read_range(sid, 0, 10), lambda: storage.size(sid), lambda: storage.open(sid),
                 lambda: storage.commit(temp_with(storage, b"z")), lambda: storage.objects()):
        with pytest.raises(StorageUnavailable, match=f"bucket {bucket} not found"):
            call()


def test_hot_frames_come_from_the_cache(s3proxy, bucket, tmp_path, monkeypatch, faults):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=faults.endpoint, frame_cache_mb=1)
    sid = storage.commit(temp_with(storage, bytes(range(256)) * 400))
    first = storage.read_range(sid, 1000, 5000)
    faults.set("503")
    assert storage.read_range(sid, 1000, 5000) == first  # no request reached S3
    with pytest.raises(StorageUnavailable):
        storage.read_range(sid, 2000, 5000)  # a range not cached goes to S3
    storage.cache.forget(sid)
    with pytest.raises(StorageUnavailable):
        storage.read_range(sid, 1000, 5000)


def test_ranges_of_one_request_come_back_in_order(s3proxy, bucket, tmp_path, monkeypatch):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, frame_cache_mb=0)
    data = os.urandom(3 << 20)
    sid = storage.commit(temp_with(storage, data))
    # neighbours (coalesced into one GET), a far one (its own GET), an empty one, a repeat, the last byte
    ranges = [(5000, 100), (5100, 2000), (0, 10), (2 << 20, 300_000), (40, 0), (5000, 100), (len(data) - 1, 1)]
    assert storage.read_ranges(sid, ranges) == [data[o:o + n] for o, n in ranges]
    assert storage.readahead == 0  # nothing is read ahead without a cache to keep it in


def test_prefetched_ranges_come_from_the_cache(s3proxy, bucket, tmp_path, monkeypatch, faults):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=faults.endpoint, frame_cache_mb=1)
    data = os.urandom(200_000)
    sid = storage.commit(temp_with(storage, data))
    assert storage.read_ranges(sid, [(0, 1000)], prefetch=[(1000, 1000), (2000, 500)]) == [data[:1000]]
    faults.set("503")  # from here on S3 answers nothing
    assert storage.read_range(sid, 1000, 1000) == data[1000:2000]
    assert storage.read_ranges(sid, [(2000, 500), (0, 1000)], prefetch=[(9000, 10)]) == [data[2000:2500], data[:1000]]
    with pytest.raises(StorageUnavailable):
        storage.read_range(sid, 2500, 500)  # not read ahead: asked of S3
    with pytest.raises(StorageUnavailable):
        storage.read_ranges(sid, [(0, 1000), (3000, 10)])  # one range missing: the whole call fails


@pytest.mark.parametrize("s3_answers", ["200", "503"])
def test_concurrent_misses_share_one_fetch(s3proxy, bucket, tmp_path, monkeypatch, faults, s3_answers):
    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=faults.endpoint, frame_cache_mb=1)
    data = os.urandom(20_000)
    sid = storage.commit(temp_with(storage, data))
    tiles = [(i * 1000, 1000) for i in range(12)]
    fetch, calls, inside = storage._get_ranges, [], threading.Event()

    def slow_fetch(storage_id, ranges):  # the archive's own fetch, held so that the requests overlap
        calls.append(list(ranges))
        inside.set()
        time.sleep(2)  # time enough for the other three threads to start and ask, even on a loaded machine
        return fetch(storage_id, ranges)

    monkeypatch.setattr(storage, "_get_ranges", slow_fetch)
    if s3_answers == "503":
        faults.set("503")
    results: dict[int, object] = {}

    def ask(i: int) -> None:  # a viewer's requests for neighbouring tiles, each reading ahead
        try:
            results[i] = storage.read_ranges(sid, [tiles[i]], prefetch=tiles[i + 1:i + 9])
        except StorageUnavailable as e:
            results[i] = e

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert inside.wait(10)
    others = [threading.Thread(target=ask, args=(i,)) for i in (1, 2, 3)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(30)
    assert calls == [tiles[:9]]  # one fetch: tile 0 and the 8 read ahead; 1-3 waited for it
    if s3_answers == "200":
        assert results == {i: [data[i * 1000:(i + 1) * 1000]] for i in range(4)}
    else:  # its failure reaches every request that waited, each with an error of its own
        assert all(isinstance(results[i], StorageUnavailable) for i in range(4))
        assert len({id(results[i]) for i in range(4)}) == 4


def test_range_cache_is_bounded_in_bytes():
    cache = RangeCache(80_000)
    for i in range(20):
        cache.put(("a", i, 10_000), b"x" * 10_000)
    assert cache.bytes <= 80_000
    assert cache.get(("a", 0, 10_000)) is None and cache.get(("a", 19, 10_000)) is not None
    cache.get(("a", 12, 10_000))  # recently used: kept
    cache.put(("b", 0, 10_000), b"y" * 10_000)
    assert cache.get(("a", 12, 10_000)) is not None and cache.get(("a", 13, 10_000)) is None
    cache.put(("c", 0, 50_000), b"z" * 50_000)  # more than an eighth of the cache: not kept
    assert cache.get(("c", 0, 50_000)) is None
    cache.forget("a")
    assert cache.bytes == 10_000


def test_removals_wait_for_their_delay_and_outlast_an_outage(s3proxy, bucket, tmp_path, monkeypatch, faults):
    """archive/storage/removals.py: a due removal deletes the object once, a later one waits, and one
    the bucket refused (S3 down) stays due for a later sweep instead of leaving an orphan."""
    from archive.catalog import Catalog
    from archive.catalog.work import STORAGE_REMOVAL, WorkQueue
    from archive.storage import removals

    storage = make_storage(s3proxy, bucket, tmp_path, monkeypatch, endpoint=faults.endpoint, timeout=2.0)
    db = Catalog(tmp_path / "catalog.sqlite").db
    due, later = (storage.commit(temp_with(storage, b"x" * 1000)) for _ in range(2))
    queue = WorkQueue(db)
    queue.add(STORAGE_REMOVAL, {"storage_id": due})
    queue.add(STORAGE_REMOVAL, {"storage_id": later}, delay=300)
    assert removals.awaiting(db) == {due, later}
    faults.set("503")
    assert removals.sweep(db, storage) == 0
    faults.set("pass")
    assert set(storage.objects()) == {due, later} and removals.awaiting(db) == {due, later}
    db.execute("UPDATE work_item SET due=0 WHERE kind=? AND payload LIKE ?", (STORAGE_REMOVAL, f"%{due}%"))
    assert removals.sweep(db, storage) == 1
    assert set(storage.objects()) == {later} and removals.awaiting(db) == {later}
    assert removals.sweep(db, storage) == 0  # the other is not due for five minutes

"""The S3 storage backend: each stored instance is one object ``<prefix>/<storage id>``.

Selected by ``[storage] url = "s3://bucket/prefix"``; the endpoint, region and
credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), as every S3
tool reads them. The client is obstore (Rust's object_store): chosen by measurement,
see bench/FINDINGS.md (ranged GETs at a tenth of boto3's CPU).

- Ingest still spools each instance to a local temp file (it is parsed, checked and
  de-identified there). ``commit`` streams that file up as a multipart upload of
  ``part_size`` parts, at most ``upload_concurrency`` in flight (bounded memory),
  completed only when every part is in: no reader ever sees a partial object, and the
  catalog row is written after the object exists. A failed upload is aborted.
- A frame is one ranged GET (offset and length from the frame index), through a
  small in-node cache of hot ranges. The frames of one request are one ``get_ranges``
  call (neighbours coalesced into one GET, the rest concurrent), and a missed frame
  brings the next ``frame_readahead_kb`` of its level's frames into the cache with it.
- Every failure to reach the bucket (5xx after retries, timeouts, refused
  connections, a bucket that is gone) is ``StorageUnavailable``: HTTP 503 and DIMSE
  0xA700, retryable. A missing object is ``FileNotFoundError``, as for local files.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Iterator

from archive.config import StorageSettings, s3_location
from archive.errors import StorageUnavailable
from archive.storage.cache import InFlight, RangeCache
from archive.storage.local import sweep

READ_BUFFER = 1 << 20  # header parsing and whole-object reads: 1 MB per GET
#: Ranges of one request closer than this are read by one GET (the gap read and dropped).
COALESCE = 256 << 10


class S3Storage:
    """Objects in one bucket under one prefix; temp files in a local directory."""

    kind = "s3"

    def __init__(self, settings: StorageSettings, tmp: Path):
        self.url = settings.url
        self.bucket, self.prefix = s3_location(settings.url)
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.timeout = settings.timeout
        self.part_size = settings.part_size_mb << 20
        self.upload_concurrency = settings.upload_concurrency
        self.cache = RangeCache(settings.frame_cache_mb << 20) if settings.frame_cache_mb > 0 else None
        #: Bytes of the frames after a missed one read with it into the cache (none without a cache).
        self.readahead = settings.frame_readahead_kb << 10 if self.cache is not None else 0
        self.in_flight = InFlight()
        #: Seconds a deleted instance's object stays (archive/storage/removals.py).
        self.removal_delay = settings.removal_delay
        self._stores: dict[int, object] = {}
        self._lock = threading.Lock()

    # --- the client -----------------------------------------------------------------

    def _store(self):
        """The obstore client of this process (made after a fork: its runtime does not survive one)."""
        pid = os.getpid()
        store = self._stores.get(pid)
        if store is None:
            with self._lock:
                store = self._stores.get(pid)
                if store is None:
                    store = self._stores[pid] = self._new_store()
        return store

    def _new_store(self):
        from obstore.store import S3Store

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {"timeout": timedelta(seconds=self.timeout),
                   "connect_timeout": timedelta(seconds=min(5.0, self.timeout))}
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        config = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if endpoint:
            config["endpoint"] = endpoint
        # Few quick retries: a client waiting for a frame is better served by a 503 it can retry
        # than by minutes of backoff (obstore's default).
        retry = {"max_retries": 2, "retry_timeout": timedelta(seconds=self.timeout),
                 "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=1)}}
        return S3Store(self.bucket, prefix=self.prefix or None, config=config, client_options=options,
                       retry_config=retry)

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn a failure to reach the bucket into StorageUnavailable; a missing object stays FileNotFoundError."""
        import obstore.exceptions as oe

        try:
            yield
        except (FileNotFoundError, oe.BaseError, TimeoutError, ConnectionError) as e:
            if "NoSuchBucket" in str(e):
                raise StorageUnavailable(f"object storage: bucket {self.bucket} not found ({what})") from None
            if isinstance(e, FileNotFoundError):
                raise FileNotFoundError(f"stored object missing ({what})") from None
            raise StorageUnavailable(f"object storage unavailable ({what}: {_reason(e)}); retry later") from None

    # --- the StorageArea interface ---------------------------------------------------

    def new_temp(self) -> Path:
        """A fresh local temp path: ingest spools and rewrites instances here before commit."""
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def commit(self, temp: Path) -> str:
        """Upload ``temp`` as a new object (multipart above ``part_size``); returns its id.

        The object appears whole or not at all; ``temp`` is removed either way.
        """
        import obstore

        storage_id = uuid.uuid4().hex
        try:
            with self._calling("upload"), open(temp, "rb") as f:
                obstore.put(self._store(), storage_id, f, chunk_size=self.part_size,
                            max_concurrency=self.upload_concurrency)
        finally:
            temp.unlink(missing_ok=True)
        return storage_id

    def remove(self, storage_id: str) -> None:
        import obstore

        if self.cache is not None:
            self.cache.forget(storage_id)
        with contextlib.suppress(FileNotFoundError), self._calling("delete"):
            obstore.delete(self._store(), storage_id)

    def remove_orphans(self, storage_ids: set[str]) -> None:
        """Remove objects ``verify`` found without catalog rows."""
        for storage_id in storage_ids:
            self.remove(storage_id)

    def read_range(self, storage_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``: one ranged GET, or the hot-frame cache."""
        return self.read_ranges(storage_id, [(offset, length)])[0]

    def read_ranges(self, storage_id: str, ranges: list[tuple[int, int]],
                    prefetch: list[tuple[int, int]] = ()) -> list[bytes]:
        """Each (offset, length) of one object: hot ones from the cache, the rest in one call.

        The missing ranges and the ``prefetch`` ranges not cached yet (the frames a viewer
        will likely ask next) are fetched together: ranges less than ``COALESCE`` apart
        become one ranged GET, the others concurrent GETs; every range fetched is cached.
        S3 costs a round trip and a request's work per GET, whatever its size (FINDINGS).
        A range another request is fetching already is waited for, not fetched again.
        """
        cache = self.cache
        found = [cache.get((storage_id, o, n)) if cache is not None else None for o, n in ranges]
        missing = [r for r, data in zip(ranges, found) if data is None]
        if not missing:
            return found  # type: ignore[return-value]
        if cache is None:
            unique = list(dict.fromkeys(missing))
            fetched = dict(zip(unique, self._get_ranges(storage_id, unique)))
        else:
            fetched = self._fetch_shared(storage_id, missing, [r for r in prefetch if (storage_id, *r) not in cache])
        return [data if data is not None else fetched[r] for r, data in zip(ranges, found)]

    def _fetch_shared(self, storage_id: str, missing: list[tuple[int, int]],
                      prefetch: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Fetch and cache what no other request is fetching; wait for the rest (``InFlight``)."""
        mine, waits, future = self.in_flight.claim([(storage_id, *r) for r in missing],
                                                   [(storage_id, *r) for r in prefetch])
        try:
            data = self._get_ranges(storage_id, [k[1:] for k in mine]) if mine else []
        except BaseException as e:
            self.in_flight.settle(future, mine, None, e)
            raise
        got = dict(zip(mine, data))
        for key, value in got.items():
            self.cache.put(key, value)
        self.in_flight.settle(future, mine, got)
        for key, other in waits.items():
            got[key] = _awaited(other, key, self.timeout)
        return {key[1:]: value for key, value in got.items()}

    def _get_ranges(self, storage_id: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The ranges' bytes from the bucket (copied out: a coalesced GET's buffer is not kept whole)."""
        import obstore

        out = [b""] * len(ranges)
        todo = [i for i, (_, length) in enumerate(ranges) if length > 0]
        if not todo:
            return out
        with self._calling("read"):
            if len(todo) == 1:
                offset, length = ranges[todo[0]]
                parts = [obstore.get_range(self._store(), storage_id, start=offset, length=length)]
            else:
                parts = obstore.get_ranges(self._store(), storage_id, starts=[ranges[i][0] for i in todo],
                                           lengths=[ranges[i][1] for i in todo], coalesce=COALESCE)
        for i, data in zip(todo, parts):
            out[i] = bytes(data)
        return out

    def size(self, storage_id: str) -> int | None:
        """The object's size, or None when it does not exist."""
        import obstore

        try:
            with self._calling("head"):
                return int(obstore.head(self._store(), storage_id)["size"])
        except FileNotFoundError:
            self.check()  # HEAD has no body to tell a missing bucket from a missing key
            return None

    def open(self, storage_id: str) -> BinaryIO:
        """The object as a read-only, seekable file (1 MB ranged GETs as it is read)."""
        size = self.size(storage_id)
        if size is None:
            raise FileNotFoundError("stored object missing (open)")
        return io.BufferedReader(_ObjectReader(self, storage_id, size), READ_BUFFER)

    @contextlib.contextmanager
    def local_copy(self, storage_id: str) -> Iterator[Path]:
        """The object downloaded to a local temp file (for senders that need a path), removed after."""
        path = self.new_temp()
        try:
            with self.open(storage_id) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, READ_BUFFER)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def local_path(self, storage_id: str) -> None:
        """No local file: readers use ``open``, ``read_range`` or ``local_copy``."""
        return None

    def objects(self) -> dict[str, int]:
        """Every object under the prefix: storage id -> size (for ``verify``)."""
        import obstore

        found: dict[str, int] = {}
        with self._calling("list"):
            for chunk in obstore.list(self._store(), chunk_size=1000):
                for meta in chunk:
                    found[meta["path"]] = int(meta["size"])
        return found

    def check(self) -> None:
        """Raise StorageUnavailable unless the bucket answers (readiness, and after a 404 HEAD)."""
        import obstore

        with self._calling("list"):
            obstore.list_with_delimiter(self._store(), "readiness-probe")

    def modified(self, storage_ids: set[str]) -> dict[str, float]:
        """When each of these objects was written (seconds since the epoch): a HEAD each."""
        import obstore

        found: dict[str, float] = {}
        for sid in storage_ids:
            with contextlib.suppress(FileNotFoundError), self._calling("head"):
                found[sid] = obstore.head(self._store(), sid)["last_modified"].timestamp()
        return found

    def sweep_temp(self, older_than: float = 0.0) -> int:
        """Remove local temp files left by a crash (not written for ``older_than`` seconds); how many.

        Multipart uploads a crash left open are invisible; ``verify --repair`` aborts them
        (archive/storage/uploads.py), as does the bucket's lifecycle rule
        (AbortIncompleteMultipartUpload; docs/deployment.md).
        """
        return sweep(self.tmp, older_than)


class _ObjectReader(io.RawIOBase):
    """A seekable raw file over ranged GETs of one object (wrap in BufferedReader)."""

    def __init__(self, storage: S3Storage, storage_id: str, size: int):
        self.storage, self.storage_id, self.length, self.position = storage, storage_id, size, 0
        self.name = f"{storage.url.rstrip('/')}/{storage_id}"  # pydicom names its data sets after the file

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.length - self.position)
        if n <= 0:
            return 0
        data = self.storage._get_ranges(self.storage_id, [(self.position, n)])[0]
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def _awaited(future, key: tuple[str, int, int], timeout: float) -> bytes:
    """The bytes of ``key`` from another request's fetch; its failure raised afresh in this thread."""
    try:
        return future.result(timeout=timeout + 5)[key]
    except StorageUnavailable as e:
        raise StorageUnavailable(str(e)) from None
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e)) from None
    except TimeoutError:
        raise StorageUnavailable("object storage unavailable (read: timed out); retry later") from None


def _reason(e: Exception) -> str:
    """A short cause from obstore's long message: the HTTP status, or the kind of transport failure."""
    text = str(e)
    m = re.search(r"status code: (\d{3}[^:<]*)", text)
    if m:
        return "HTTP " + m.group(1).strip()
    for needle, reason in (("timed out", "timed out"), ("error sending request", "no answer"),
                           ("connection", "connection failed")):
        if needle in text.lower():
            return reason
    return type(e).__name__

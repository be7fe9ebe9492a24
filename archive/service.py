"""The archive as the entry points see it: ingest, frames, headers, delete.

One ``Archive`` per process. DICOMweb, DIMSE and the CLI hold one and never
touch files or SQL themselves.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Iterator

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from archive import dicomjson
from archive import metrics
from archive.audit import AuditTrail
from archive.auth.access import SYSTEM, Principal
from archive.catalog import Catalog, InstanceRecord
from archive.catalog.rowcache import InstanceCache
from archive.config import Settings
from archive.dicomfile import PIXEL_DATA_TAGS, read_header
from archive.errors import InvalidRequest, NotFound
from archive.frames import FrameIndex, _element_header, strip_items, unpack_bits
from archive.ingest import Ingest, Origin, StoreResult
from archive.storage import open_storage

log = logging.getLogger(__name__)

READAHEAD_FRAMES = 64  # at most this many frames read ahead, however small they are


class Archive:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        #: ``audit.record(event, principal=..., ...)`` at every door; see archive/audit/trail.py.
        self.audit = AuditTrail(settings.audit, settings.data_dir, settings.dimse.ae_title)
        self.storage = open_storage(settings)
        self.catalog = Catalog.open(settings)
        policies, vault = _load_deid(settings, self.catalog)
        self.ingest = Ingest(self.storage, self.catalog, policies, vault, settings.dangling_references)
        self._indexes: OrderedDict[str, FrameIndex] = OrderedDict()
        self._index_lock = threading.Lock()

    # --- ingest -----------------------------------------------------------------

    def store_file(self, path: Path, origin: Origin, owned: bool = False,
                   expected_study: str | None = None) -> StoreResult:
        """The one ingest path (archive.ingest), counted by source and outcome (archive.metrics)."""
        started = time.perf_counter()
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        try:
            result = self.ingest.store_file(path, origin, owned, expected_study)
        except Exception as e:
            metrics.ingested(origin.kind, "failed", size, time.perf_counter() - started)
            metrics.error(e, origin.kind)
            raise
        metrics.ingested(origin.kind, result.status, size, time.perf_counter() - started)
        return result

    # --- reads ------------------------------------------------------------------

    def locate(self, study: str, series: str | None, sop: str, principal: Principal,
               rows: InstanceCache | None = None) -> InstanceRecord:
        """The instance, checked to be inside the study (and series) the URL names and readable
        by ``principal``; "not found" either way, so existence does not leak. ``rows``: the
        frame path's cache of catalog rows (archive/catalog/rowcache.py), asked instead."""
        record = (rows or self.catalog).instance(sop, principal=principal)
        if record is None or record.study_uid != study or (series and record.series_uid != series):
            raise NotFound("no such instance")
        return record

    def open(self, record: InstanceRecord) -> BinaryIO:
        """The stored instance as a read-only binary file (local file or ranged GETs); FileNotFoundError
        when it is gone (the streaming retrieves skip an instance deleted meanwhile)."""
        return self.storage.open(record.storage_id)

    @contextlib.contextmanager
    def _reading(self, record: InstanceRecord) -> Iterator[None]:
        """Reads of ``record``'s bytes. Missing because the instance was deleted (and perhaps stored
        again, as other bytes) since its row was read, by a DELETE on another worker or node:
        NotFound. Missing while the catalog still lists these bytes stays FileNotFoundError, a
        fault (``slidearchive verify`` reports it)."""
        try:
            yield
        except FileNotFoundError:
            now = self.catalog.instance(record.sop_instance_uid, principal=SYSTEM)
            if now is None or now.storage_id != record.storage_id:
                raise NotFound("the instance was deleted while it was being read") from None
            raise

    def local_copy(self, record: InstanceRecord):
        """Context manager: a local path holding the stored instance (the file itself, or an S3 download)."""
        return self.storage.local_copy(record.storage_id)

    def _frame_index(self, record: InstanceRecord) -> FrameIndex:
        with self._index_lock:
            index = self._indexes.get(record.storage_id)
            if index is not None:
                self._indexes.move_to_end(record.storage_id)
                return index
        blob = self.catalog.frame_index(record.storage_id) if record.frame_layout is not None else None
        if blob is None or record.frame_layout is None:
            raise NotFound("this instance has no frames")
        index = FrameIndex.unpack(record.frame_layout, blob)
        with self._index_lock:
            self._indexes[record.storage_id] = index
            while len(self._indexes) > 64:
                self._indexes.popitem(last=False)
        return index

    def frame(self, record: InstanceRecord, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: one positioned read of the stored file."""
        return self._instance_frames(record, [number])[0]

    def frames(self, wanted: list[tuple[InstanceRecord, int]]) -> list[bytes]:
        """Frames as stored, in the order asked: (instance, 1-based number) each.

        One ``read_ranges`` call per instance, so that object storage reads neighbouring
        frames with one ranged GET and the others concurrently; with a read-ahead, the
        frames after the last one asked for come into its cache in the same call.
        """
        out: list[bytes] = [b""] * len(wanted)
        parts: dict[str, list[int]] = {}
        for i, (record, _) in enumerate(wanted):
            parts.setdefault(record.storage_id, []).append(i)
        for positions in parts.values():
            datas = self._instance_frames(wanted[positions[0]][0], [wanted[i][1] for i in positions])
            for i, data in zip(positions, datas):
                out[i] = data
        return out

    def _instance_frames(self, record: InstanceRecord, numbers: list[int]) -> list[bytes]:
        """Frames ``numbers`` of one instance, in that order, with one ``read_ranges`` call."""
        index = self._frame_index(record)
        for n in numbers:
            if not 1 <= n <= len(index):
                raise InvalidRequest(f"frame {n} out of range 1-{len(index)}")
        spans = [_frame_span(index, n) for n in numbers]
        prefetch = _following(index, max(numbers), self.storage.readahead)
        with self._reading(record):
            datas = self.storage.read_ranges(record.storage_id, spans, prefetch)
        return [_frame_bytes(index, n, data) for n, data in zip(numbers, datas)]

    def level_frames(self, record: InstanceRecord, numbers: list[int]) -> list[tuple[InstanceRecord, int]]:
        """Map frame numbers to (part, frame in part).

        A concatenation is served as the slide level it forms: its first part
        answers for the frames of every part (numbered across the level), as
        viewers that open a level through its first instance expect.
        """
        count = self.frame_count(record)
        if max(numbers) <= count or not record.concatenation_uid or record.in_concatenation_number != 1:
            return [(record, n) for n in numbers]
        parts = self.catalog.concatenation(record.concatenation_uid)
        out = []
        for n in numbers:
            part = next((p for p in parts if (p.concatenation_frame_offset or 0) < n
                         <= (p.concatenation_frame_offset or 0) + self.frame_count(p)), None)
            out.append((part, n - (part.concatenation_frame_offset or 0)) if part else (record, n))
        return out

    def frame_count(self, record: InstanceRecord) -> int:
        return len(self._frame_index(record))

    def read_range(self, record: InstanceRecord, offset: int, length: int) -> bytes:
        with self._reading(record):
            return self.storage.read_range(record.storage_id, offset, length)

    def header(self, record: InstanceRecord) -> Dataset:
        """The stored header up to the pixel data, parsed."""
        with self._reading(record), self.open(record) as f:
            return dcmread(f, stop_before_pixels=True)

    def pixel_value_range(self, record: InstanceRecord) -> tuple[int, int]:
        """(offset, length) of the stored pixel data element's value; encapsulated: its items and delimiter.

        Read from the header and the frame index, never by walking the items (one or two
        reads, also through S3): the frame index covers every fragment, the last one last.
        """
        if record.frame_layout is None:
            raise NotFound("this instance has no pixel data")
        with self._reading(record), self.open(record) as f:
            dcmread(f, stop_before_pixels=True)  # leaves ``f`` at the pixel data element's tag
            start, length = _element_header(f, UID(record.transfer_syntax_uid))
        if length != 0xFFFFFFFF:
            return start, length
        index = self._frame_index(record)
        end = int(index.offsets[-1] + index.lengths[-1]) + 8  # past the sequence delimiter
        return start, end - start

    def bulk_value(self, record: InstanceRecord, path: str) -> bytes:
        try:
            parsed = dicomjson.bulk_path(path)
            if int(parsed[0]) > min(PIXEL_DATA_TAGS):  # after the pixel data, which is stepped over
                with self._reading(record), self.local_copy(record) as stored:
                    value = dicomjson.resolve(read_header(stored).complete(), parsed).value  # read while it exists
            else:
                value = dicomjson.resolve(self.header(record), parsed).value
        except (ValueError, KeyError, IndexError, TypeError):
            raise NotFound("no such bulk data element") from None
        return value if isinstance(value, bytes) else b""

    def metadata(self, study: str, series: str | None, sop: str | None,
                 principal: Principal) -> list[tuple[InstanceRecord, str]]:
        found = list(self.catalog.headers(study, series, sop, principal=principal))
        if not found:
            raise NotFound("no such study, series or instance")
        return found

    # --- delete -----------------------------------------------------------------

    def delete(self, study: str, series: str | None, sop: str | None, principal: Principal) -> list[InstanceRecord]:
        """Remove the instances (catalog first, then bytes); returns what was deleted.

        A bucket's objects go ``removal_delay`` seconds later, removed by the background process
        of any node (archive/storage/removals.py), which tries again while the bucket is
        unreachable: so the delete needs the catalog only. Local files go at once; if that fails
        half-way, the files left behind are orphans that ``verify --repair`` removes.
        """
        delay = self.storage.removal_delay
        records = self.catalog.delete(study, series, sop, principal=principal, removal_delay=delay)
        _withdraw_from_releases(self.catalog, records)
        if delay is not None:
            return records  # the background process removes the objects when they are due
        for record in records:
            try:
                self.storage.remove(record.storage_id)
            except OSError as e:
                log.warning("removing a deleted instance's file failed (%s): storage id %s left as an orphan for "
                            "verify --repair", e.strerror or type(e).__name__, record.storage_id)
        return records


def _withdraw_from_releases(catalog: Catalog, records: list[InstanceRecord]) -> None:
    """Dataset releases keep deleted instances listed, marked withdrawn (datasets/release.py).

    A crash before the mark still shows: a release marks what is no longer stored when read."""
    try:
        from datasets.release import withdraw_deleted
    except ImportError:  # an installation without the datasets package
        return
    withdraw_deleted(catalog, [r.sop_instance_uid for r in records])


def _load_deid(settings: Settings, catalog: Catalog):
    """The de-identification policies and the broker's link vault, from the [deid] section.

    A catalog nodes share holds the pseudonym key and the vault, so every node pseudonymizes
    alike and the broker finds every link in one place; a SQLite archive keeps its files."""
    import deid
    from deid.vault import CatalogLinkVault

    if catalog.shared:
        policies = deid.load_policies(settings.deid, settings.data_dir,
                                      key_source=lambda: catalog.shared_secret("deid pseudonym key"))
        return policies, CatalogLinkVault(catalog.db, settings.data_dir / "broker" / "audit.log")
    policies = deid.load_policies(settings.deid, settings.data_dir)
    vault = deid.LinkVault(settings.data_dir / "broker" / "links.sqlite")
    return policies, vault


def _frame_span(index: FrameIndex, number: int) -> tuple[int, int]:
    """The (offset, length) of the stored file that holds frame ``number`` (1-based)."""
    i = number - 1
    offset, length = int(index.offsets[i]), int(index.lengths[i])
    if index.layout == "bits":
        start_bit = i * length
        return offset + start_bit // 8, (start_bit % 8 + length + 7) // 8
    return offset, length


def _frame_bytes(index: FrameIndex, number: int, data: bytes) -> bytes:
    """Frame ``number`` from the bytes of its span: items stripped, bits re-aligned."""
    if index.layout == "bits":
        length = int(index.lengths[number - 1])
        return unpack_bits(data, (number - 1) * length % 8, length)
    return strip_items(data) if index.layout == "fragments" else data


def _following(index: FrameIndex, number: int, budget: int) -> list[tuple[int, int]]:
    """The spans of the frames after ``number``, up to ``budget`` bytes in all (the read-ahead).

    Frames of a level are stored in tile order, row by row, so these are the tiles to
    the right of the last one asked for, which a viewer panning or filling its
    viewport asks for next; bit-packed frames share bytes and are not read ahead.
    """
    spans: list[tuple[int, int]] = []
    if budget <= 0 or index.layout == "bits":
        return spans
    for n in range(number + 1, min(len(index), number + READAHEAD_FRAMES) + 1):
        span = _frame_span(index, n)
        budget -= span[1]
        if budget < 0:
            break
        spans.append(span)
    return spans

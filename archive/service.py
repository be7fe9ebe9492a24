"""The archive as the entry points see it: ingest, frames, headers, delete.

One ``Archive`` per process. DICOMweb, DIMSE and the CLI hold one and never
touch files or SQL themselves.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from archive import dicomjson
from archive import metrics
from archive.audit import AuditTrail
from archive.auth.access import Principal
from archive.catalog import Catalog, InstanceRecord
from archive.config import Settings
from archive.dicomfile import PIXEL_DATA_TAGS, read_header
from archive.errors import InvalidRequest, NotFound
from archive.frames import FrameIndex, strip_items, unpack_bits
from archive.ingest import Ingest, Origin, StoreResult
from archive.storage import StorageArea

log = logging.getLogger(__name__)


class _FdCache:
    """Open file descriptors by storage id: a frame is one pread, no open() per request."""

    def __init__(self, size: int = 256):
        self.size = size
        self.items: OrderedDict[str, int] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, storage_id: str, path: Path) -> int:
        with self.lock:
            fd = self.items.get(storage_id)
            if fd is not None:
                self.items.move_to_end(storage_id)
                return fd
        fd = os.open(path, os.O_RDONLY)
        with self.lock:
            if storage_id in self.items:
                os.close(fd)
                return self.items[storage_id]
            self.items[storage_id] = fd
            while len(self.items) > self.size:
                _, old = self.items.popitem(last=False)
                os.close(old)
        return fd


class Archive:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        #: ``audit.record(event, principal=..., ...)`` at every door; see archive/audit/trail.py.
        self.audit = AuditTrail(settings.audit, settings.data_dir, settings.dimse.ae_title)
        self.storage = StorageArea(settings.storage_dir)
        self.catalog = Catalog.open(settings)
        policies, vault = _load_deid(settings, self.catalog)
        self.ingest = Ingest(self.storage, self.catalog, policies, vault, settings.dangling_references)
        self._fds = _FdCache()
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

    def locate(self, study: str, series: str | None, sop: str, principal: Principal) -> InstanceRecord:
        """The instance, checked to be inside the study (and series) the URL names and readable
        by ``principal``; "not found" either way, so existence does not leak."""
        record = self.catalog.instance(sop, principal=principal)
        if record is None or record.study_uid != study or (series and record.series_uid != series):
            raise NotFound("no such instance")
        return record

    def path(self, record: InstanceRecord) -> Path:
        return self.storage.path(record.storage_id)

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
        index = self._frame_index(record)
        if not 1 <= number <= len(index):
            raise InvalidRequest(f"frame {number} out of range 1-{len(index)}")
        i = number - 1
        fd = self._fds.get(record.storage_id, self.path(record))
        offset, length = int(index.offsets[i]), int(index.lengths[i])
        if index.layout == "bits":
            start_bit = i * length
            first = offset + start_bit // 8
            nbytes = (start_bit % 8 + length + 7) // 8
            return unpack_bits(os.pread(fd, nbytes, first), start_bit % 8, length)
        data = os.pread(fd, length, offset)
        return strip_items(data) if index.layout == "fragments" else data

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
        fd = self._fds.get(record.storage_id, self.path(record))
        return os.pread(fd, length, offset)

    def header(self, record: InstanceRecord) -> Dataset:
        """The stored header up to the pixel data, parsed."""
        return dcmread(self.path(record), stop_before_pixels=True)

    def bulk_value(self, record: InstanceRecord, path: str) -> bytes:
        try:
            parsed = dicomjson.bulk_path(path)
            after_pixels = int(parsed[0]) > min(PIXEL_DATA_TAGS)  # then the pixel data is stepped over
            ds = read_header(self.path(record)).complete() if after_pixels else self.header(record)
            elem = dicomjson.resolve(ds, parsed)
        except (ValueError, KeyError, IndexError, TypeError):
            raise NotFound("no such bulk data element") from None
        value = elem.value
        return value if isinstance(value, bytes) else b""

    def metadata(self, study: str, series: str | None, sop: str | None,
                 principal: Principal) -> list[tuple[InstanceRecord, str]]:
        found = list(self.catalog.headers(study, series, sop, principal=principal))
        if not found:
            raise NotFound("no such study, series or instance")
        return found

    # --- delete -----------------------------------------------------------------

    def delete(self, study: str, series: str | None, sop: str | None, principal: Principal) -> list[InstanceRecord]:
        """Remove the instances (catalog first, then bytes); returns what was deleted."""
        records = self.catalog.delete(study, series, sop, principal=principal)
        _withdraw_from_releases(self.catalog, records)
        for record in records:
            self.storage.remove(record.storage_id)
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

"""The one ingest path: every entry point (STOW-RS, C-STORE, import, API) calls ``store_instance``.

spool -> parse header -> validate -> de-identify -> write (header re-encoded,
pixel data copied raw) -> commit to storage (atomic) -> frame index -> catalog
(one transaction, with an outbox event). A failure at any step removes what
the earlier steps wrote, so nothing is ever half-stored.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
from pathlib import Path
from typing import BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID

from archive import dicomjson, headerwrite
from archive.auth.access import SYSTEM
from archive.catalog import NewInstance
from archive.dicomfile import PIXEL_DATA_TAGS, Header, read_full, read_header
from archive.encoding import mark_unchanged, value_at
from archive.errors import (WARNING_COERCED, WARNING_ELEMENTS_DISCARDED, WARNING_REFERENCE, ArchiveError,
                            DatasetDoesNotMatchSOPClass, DuplicateInstance, InvalidDataset, SOPClassNotSupported)
from archive.frames import BITS_ALLOCATED, ItemSpans, index_frames, number
from archive.results import checks as results  # AI results: checked and linked at ingest
from archive.storage import CHUNK, copy_range, raise_for_os_error, spool, stored_sha256
from archive.uids import is_valid_uid

log = logging.getLogger(__name__)


@functools.cache
def storage_sop_classes() -> frozenset[str]:
    """The storage SOP classes accepted (pynetdicom's list; imported on first use, as an
    HTTP worker that only serves frames never needs pynetdicom's 7 MB)."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    return frozenset(_STORAGE_CLASSES.values())


REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclasses.dataclass(frozen=True)
class Origin:
    """Who sent an instance: picks the de-identification policy and the collection."""

    kind: str  # stow | dimse | import | api | derived (made by the archive from stored instances)
    ae_title: str | None = None
    collection: str = "default"
    #: Collections the sender may write (None: unrestricted, e.g. the command line or auth off);
    #: an existing study outside all of them is refused (archive.catalog.Catalog.add_instance).
    writable: frozenset[str] | None = None


@dataclasses.dataclass(frozen=True)
class StoreResult:
    status: str  # stored | duplicate | dropped
    sop_class_uid: str
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    warning: int | None = None  # a PS3.4 warning status, e.g. 0xB006 when dropped by policy
    message: str = ""


#: (keyword, tag) of REQUIRED_UIDS: validate reads elements by tag, as each keyword attribute
#: is a dictionary lookup and a Dataset.__getattr__ round trip (11 of them per instance).
_REQUIRED_TAGS = tuple((keyword, tag_for_keyword(keyword)) for keyword in REQUIRED_UIDS)
_MEDIA_SOP_CLASS, _MEDIA_SOP_INSTANCE = 0x00020002, 0x00020003


def validate(ds: Dataset) -> None:
    """The checks every stored instance passes; messages name attributes, never values."""
    values = []
    for keyword, tag in _REQUIRED_TAGS:
        value = value_at(ds, tag)
        if value is None or value == "":
            raise DatasetDoesNotMatchSOPClass(f"missing {keyword}")
        if not is_valid_uid(str(value)):
            raise DatasetDoesNotMatchSOPClass(f"malformed {keyword}: expected digits and dots, at most 64 characters")
        values.append(value)
    sop_class, sop_instance = values[0], values[1]
    if sop_class not in storage_sop_classes():
        raise SOPClassNotSupported("SOP Class UID is not a storage SOP class this archive accepts")
    meta = ds.file_meta
    meta_class = value_at(meta, _MEDIA_SOP_CLASS)
    if meta_class and meta_class != sop_class:
        raise DatasetDoesNotMatchSOPClass("MediaStorageSOPClassUID differs from SOPClassUID")
    meta_instance = value_at(meta, _MEDIA_SOP_INSTANCE)
    if meta_instance and meta_instance != sop_instance:
        raise DatasetDoesNotMatchSOPClass("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    syntax = meta.TransferSyntaxUID
    if UID(syntax).name == syntax:  # unknown to pydicom
        raise InvalidDataset("unknown transfer syntax")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Ingest:
    """Holds what ingest needs; one per process, shared by all entry points."""

    def __init__(self, storage, catalog, policies=None, vault=None, dangling_references: str = "refuse"):
        self.storage = storage
        self.catalog = catalog
        self.policies = policies
        self.vault = vault
        self.dangling_references = dangling_references

    def warm_up(self) -> None:
        """Load now what the first stored instance would otherwise load: the de-identification
        modules, its rule table, pynetdicom's SOP class list and the IOD tables of whole-slide
        images, by de-identifying and encoding a made-up whole-slide header (deid.core.warm_up).

        Called by the servers before they accept work, so that the first STOW or C-STORE
        after a start does not pay 0.3-0.5 s of CPU for it; costs about 12 MB per process.
        """
        storage_sop_classes()
        if self.policies is None:
            return
        from deid.core import warm_up

        from archive.results.slide_levels import WSI_CLASS

        made_up = warm_up(WSI_CLASS)
        mark_unchanged(made_up)
        headerwrite.encode_file(made_up)
        dicomjson.to_json(made_up)

    def store_instance(self, stream: BinaryIO, origin: Origin) -> StoreResult:
        """Spool ``stream`` to disk, then store it; the stream is read in bounded chunks."""
        temp = self.storage.new_temp()
        try:
            spool(stream, temp)
            return self.store_file(temp, origin, owned=True)
        finally:
            temp.unlink(missing_ok=True)

    def store_file(self, path: Path, origin: Origin, owned: bool = False,
                   expected_study: str | None = None) -> StoreResult:
        """Store the Part 10 file at ``path`` (moved into storage when ``owned``, else copied).

        ``expected_study``: the Study Instance UID a STOW-RS URL names; the instance must belong to it.
        """
        policy = self.policies.for_origin(origin.ae_title, origin.collection) if self.policies else None
        if origin.kind == "derived":
            # Built by the archive's results API from stored, already de-identified headers:
            # de-identifying again would re-map their UIDs and break the slide references.
            policy = None
        try:
            header = read_header(path)
        except ArchiveError as e:  # e.g. pixel data cut short after a whole header that names the instance
            if getattr(e, "dataset", None) is not None:
                e.sop_class_uid, e.sop_instance_uid = _reported_uids(e.dataset, policy)
            raise
        ds = header.dataset
        try:
            return self._store(path, header, policy, origin, owned, expected_study)
        except ArchiveError as e:
            if e.sop_class_uid is None and e.sop_instance_uid is None:
                e.sop_class_uid, e.sop_instance_uid = _reported_uids(ds, policy)
            raise

    def _store(self, path: Path, header: Header, policy, origin: Origin, owned: bool,
               expected_study: str | None) -> StoreResult:
        ds = header.dataset
        validate(ds)
        if expected_study is not None and ds.StudyInstanceUID != expected_study:
            raise DatasetDoesNotMatchSOPClass("StudyInstanceUID differs from the study in the request URL")
        out = self.storage.new_temp()
        try:
            try:
                stored, written, coerced = self._deidentify(path, header, policy, out, owned)
            except _Dropped as d:
                return StoreResult("dropped", str(ds.SOPClassUID), warning=WARNING_ELEMENTS_DISCARDED,
                                   message=d.reason)
            if written.copied:
                written.spans = header.item_spans  # the received pixel data's items, walked once
            try:
                reference_warning = results.check_result(stored, self.catalog, out, self.dangling_references)
                result = self._commit(stored, header.transfer_syntax, written, out, origin)
            except ArchiveError as e:
                e.sop_class_uid, e.sop_instance_uid = str(stored.SOPClassUID), str(stored.SOPInstanceUID)
                raise
            if result.status in ("stored", "duplicate"):
                results.record(self.catalog, stored)  # link results to their slides; idempotent, never raises
            if result.status == "stored" and reference_warning:
                result = dataclasses.replace(result, warning=WARNING_REFERENCE, message=reference_warning)
            elif result.status == "stored" and coerced:
                result = dataclasses.replace(result, warning=WARNING_COERCED, message=result.message or
                                             f"de-identified by policy {policy.name}: data elements coerced")
            return result
        finally:
            out.unlink(missing_ok=True)

    def _deidentify(self, path: Path, header: Header, policy, out: Path,
                    owned: bool) -> tuple[Dataset, _Written, bool]:
        """Write the file to store at ``out``; returns (stored header, what was written, coerced).

        Every element goes through the profile, those sorting after the pixel data too;
        the pixel data element alone is copied as received (raw, in bounded chunks), or,
        for a blanked overview or a deflated file (both small), re-encoded with the rest.
        The bytes are hashed as they are written (one pass: no second read for the SHA-256).
        """
        if policy is None or getattr(policy, "identified", False):
            _place(path, out, owned)
            return header.dataset, _Written(header.pixel_offset, copied=True), False
        import deid

        try:
            outcome = deid.deidentify(header.complete(), policy, vault=self.vault)
        except deid.Dropped as d:
            raise _Dropped(str(d)) from None
        except deid.DeidentificationError as e:
            raise InvalidDataset(str(e)) from None  # its message names the policy and error type, no values
        new = outcome.dataset
        if outcome.blank_area is not None or header.transfer_syntax == DeflatedExplicitVRLittleEndian:
            full = read_full(path)
            if outcome.blank_area is not None:
                full = deid.blank_region(full, outcome.blank_area)
            for tag in PIXEL_DATA_TAGS:  # only the pixel data: every other element of `full` is the original
                if tag in full:
                    new[tag] = full[tag]
            _write(out, new)
            return new, _Written(read_header(out).pixel_offset, False), True
        if header.pixel_offset is None or header.pixel_end is None:
            _write(out, new)  # straight to the file: without pixel data, the header may be large (annotations)
            return new, _Written(None, False), True
        try:
            before, after = _split_at_pixel_data(new)
        except (ValueError, TypeError, AttributeError, KeyError) as e:  # a kept trailing value that cannot be decoded
            raise InvalidDataset(f"cannot decode an element after the pixel data: {type(e).__name__}") from None
        buffer = io.BytesIO()  # the header before the pixel data: small
        _write(buffer, before)
        head = buffer.getvalue()
        trailer = _encode_elements(after, header.transfer_syntax, new.get("SpecificCharacterSet")) if len(after) else b""
        try:
            with open(path, "rb") as src, _HashedFile(out) as dst:
                dst.write(head)
                src.seek(header.pixel_offset)
                copy_range(src, dst, header.pixel_end - header.pixel_offset)
                dst.write(trailer)
        except OSError as e:
            raise_for_os_error(e)
        return new, _Written(len(head), True, dst.hexdigest()), True

    def _commit(self, ds: Dataset, ts: UID, written: _Written, temp: Path, origin: Origin) -> StoreResult:
        """Hash (unless hashed while written), index and catalog ``temp``."""
        pixel_offset, spans = written.pixel_offset, written.spans
        sha = written.sha256 or sha256_of(temp)
        result = StoreResult("stored", str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                             str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        size = temp.stat().st_size
        layout = index_blob = None
        if pixel_offset is not None:  # before the duplicate check: a truncated re-send is 0xC000, not 0x0111
            with open(temp, "rb") as f:
                index = index_frames(f, ds, ts, pixel_offset, size, spans)
            layout, index_blob = index.layout, index.pack()
        existing = self.catalog.instance(ds.SOPInstanceUID, principal=SYSTEM)
        if existing is not None:
            return self._duplicate(existing, sha, result, temp)
        header_json = dicomjson.to_json(ds)
        if pixel_offset is not None:
            encapsulated = layout in ("fragment", "fragments")
            vr = "OB" if encapsulated or int(number(ds, BITS_ALLOCATED, 8)) <= 8 else "OW"
            header_json["7FE00010"] = {"vr": vr, "BulkDataURI": "bulkdata/7FE00010"}
        storage_id = self.storage.commit(temp)
        try:
            self.catalog.add_instance(NewInstance(ds, str(ts), storage_id, size, sha, layout, index_blob,
                                                  header_json), origin.collection, origin.writable)
        except DuplicateInstance:
            self.storage.remove(storage_id)
            existing = self.catalog.instance(ds.SOPInstanceUID, principal=SYSTEM)
            if existing is None:
                raise
            return self._duplicate(existing, sha, result, None)
        except BaseException:
            self.storage.remove(storage_id)
            raise
        return result

    def _duplicate(self, existing, sha: str, result: StoreResult, temp: Path | None) -> StoreResult:
        """An instance already held: identical bytes are success, and replace a stored copy that rotted."""
        if existing.sha256 != sha:
            raise DuplicateInstance("a different instance is already stored under this SOP Instance UID")
        if temp is not None and not self._intact(existing):
            storage_id = self.storage.commit(temp)
            if self.catalog.replace_storage(existing.sop_instance_uid, existing.storage_id, storage_id):
                self.storage.remove(existing.storage_id)
                log.warning("replaced a corrupt stored copy (storage id %s) with a re-sent identical instance",
                            existing.storage_id)
                return dataclasses.replace(result, message="replaced a corrupt or missing stored copy")
            self.storage.remove(storage_id)  # someone else replaced it first
        return dataclasses.replace(result, status="duplicate", message="identical instance already stored")

    def _intact(self, existing) -> bool:
        """Whether the stored bytes still hash to what the catalog recorded (re-sends only)."""
        try:
            return (self.storage.size(existing.storage_id) == existing.size
                    and stored_sha256(self.storage, existing.storage_id) == existing.sha256)
        except OSError:
            return False


def _reported_uids(ds: Dataset, policy) -> tuple[str | None, str | None]:
    """SOP Class / Instance UID of a refused instance, as it would have been stored.

    The instance UID is reported only when it is well formed, and pseudonymised as the
    policy would have done: a failure answer must not hand back an original identifier.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    sop_class = sop_class if is_valid_uid(sop_class) else None
    if not is_valid_uid(sop_uid):
        return sop_class, None
    if policy is not None and not getattr(policy, "identified", False):
        from deid.options import Option
        from deid.uids import Pseudonymizer, is_well_known_uid

        if Option.RETAIN_UIDS not in policy.options and not is_well_known_uid(sop_uid):
            sop_uid = Pseudonymizer(policy.key).uid(sop_uid)
    return sop_class, sop_uid


class _Dropped(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _place(src: Path, dst: Path, owned: bool) -> None:
    """Put the received file at ``dst`` unchanged: a rename when we own it, else a copy."""
    try:
        if owned:
            src.replace(dst)
        else:
            with open(src, "rb") as a, open(dst, "wb") as b:
                copy_range(a, b)
    except OSError as e:
        raise_for_os_error(e)


def _split_at_pixel_data(ds: Dataset) -> tuple[Dataset, Dataset]:
    """(the elements before the pixel data, with the file meta; those after it)."""
    first = min(PIXEL_DATA_TAGS)
    if not ds._dict or max(map(int, ds._dict)) < first:  # plain ints: a Python compare per tag otherwise
        return ds, Dataset()
    before, after = Dataset(), Dataset()
    # As read: writing then copies the unchanged elements instead of re-encoding them.
    before.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    before.file_meta = ds.file_meta
    for tag in ds.keys():
        if tag < first:
            before.add(ds.get_item(tag))
        else:
            after.add(ds[tag])  # decoded here, in the character set of the whole data set
    return before, after


def _encode_elements(ds: Dataset, ts: UID, charset) -> bytes:
    """The elements of ``ds`` encoded in transfer syntax ``ts``, in the data set's ``charset``."""
    try:
        return headerwrite.encode_elements(ds, ts, convert_encodings(charset) if charset else default_encoding)
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidDataset(f"cannot encode the de-identified elements after the pixel data: {type(e).__name__}") from None


def _write(target: Path | io.BytesIO, ds: Dataset) -> None:
    """Write preamble, file meta and ``ds`` in its transfer syntax to a file or a buffer
    (archive.headerwrite: the bytes of pydicom's dcmwrite, at a fraction of its cost)."""
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    mark_unchanged(ds)
    try:
        headerwrite.write_file(target, ds)
    except OSError as e:
        raise_for_os_error(e)
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidDataset(f"cannot encode the de-identified header: {type(e).__name__}") from None


@dataclasses.dataclass
class _Written:
    """What ``_deidentify`` wrote: where the pixel data starts, and what was learnt on the way."""

    pixel_offset: int | None
    copied: bool  # the stored pixel data element is the received one, byte for byte
    sha256: str | None = None  # of the whole file, when taken while writing it
    spans: ItemSpans | None = None  # the pixel data's item spans, when already walked


class _HashedFile:
    """A file opened for writing that hashes what is written to it (SHA-256)."""

    def __init__(self, path: Path):
        self._hash = hashlib.sha256()
        try:
            self._file = open(path, "wb")
        except OSError as e:
            raise_for_os_error(e)

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        try:
            return self._file.write(data)
        except OSError as e:
            raise_for_os_error(e)
            raise  # not reached: raise_for_os_error always raises

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def __enter__(self) -> "_HashedFile":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._file.close()
        except OSError as e:
            if exc[0] is None:
                raise_for_os_error(e)

"""Import one vendor file: convert to temporary Part 10 files, store each through the one ingest path.

De-identification (with the source's policy, LABEL / OVERVIEW rules included), the
frame index, the catalog and the search index all happen in ``Archive.store_file``,
exactly as for a C-STORE. A failure anywhere removes what was stored for the file.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from archive.auth.access import SYSTEM
from archive.errors import ArchiveError, NotASlide, OutOfResources
from archive.ingest import Origin, sha256_of

from .convert import convert
from .formats import VendorFormat, detect
from .ledger import Ledger
from .manifest import Entry

Phase = Callable[[str, int, int], None]  # (phase, done, total): "hashing", "converting", "storing"


@dataclasses.dataclass(frozen=True)
class ImportOutcome:
    status: str  # stored | duplicate (the same file was imported before)
    format: str
    lossless: bool
    stored: int = 0
    dropped: int = 0
    study_uid: str | None = None
    series_uid: str | None = None
    notes: tuple[str, ...] = ()  # e.g. why an instance was dropped (policy names, never values)


class VendorImporter:
    """One per archive; converts in ``<data_dir>/imports/work`` (same file system as storage: moves, not copies)."""

    def __init__(self, archive, workers: int = 1):
        self.archive = archive
        self.workers = workers
        root = archive.settings.data_dir / "imports"
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(root / "ledger.sqlite")

    def import_file(self, path: Path, origin: Origin, entry: Entry | None = None,
                    progress: Phase | None = None, fmt: VendorFormat | None = None) -> ImportOutcome:
        fmt = fmt or detect(path)
        if entry is not None and entry.collection:
            origin = dataclasses.replace(origin, collection=entry.collection)
        fingerprint = sha256_of(path)
        previous = self.ledger.file(fingerprint)
        if previous is not None and previous["status"] == "done" and self._all_present(fingerprint):
            return ImportOutcome("duplicate", fmt.name, fmt.lossless, previous["stored"] or 0,
                                 previous["dropped"] or 0, previous["study_uid"], previous["series_uid"])
        self._undo(fingerprint)  # a crash or failure part-way: what it stored goes first
        self.ledger.begin(fingerprint, fmt.name)
        work = Path(tempfile.mkdtemp(prefix="convert-", dir=self.work))
        try:
            try:
                files = convert(path, fmt, work, entry, fingerprint, self.workers,
                                (lambda d, t: progress("converting", d, t)) if progress else None)
            except OSError as e:
                raise _os_error(e, fmt) from None
            except ArchiveError:
                raise
            except Exception as e:  # a reader failing on a damaged file; its text may quote the file's metadata
                raise NotASlide(f"{fmt.name}: conversion failed ({type(e).__name__}; truncated or damaged?)") from None
            outcome = self._store(files, fingerprint, fmt, origin, progress)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # first: a full disk needs the space back to undo
            self._undo(fingerprint)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.ledger.done(fingerprint, outcome.study_uid, outcome.series_uid, outcome.stored, outcome.dropped)
        return outcome

    def _store(self, files: list[Path], fingerprint: str, fmt: VendorFormat, origin: Origin,
               progress: Phase | None) -> ImportOutcome:
        stored = dropped = 0
        study = series = None
        notes: list[str] = []
        for n, f in enumerate(files, start=1):
            result = self.archive.store_file(f, origin, owned=True)
            if result.status == "dropped":
                dropped += 1
                notes.append(result.message)
            else:
                stored += 1
                study, series = result.study_uid, result.series_uid
                self.ledger.stored(fingerprint, result.study_uid, result.series_uid, result.sop_instance_uid)
            if progress:
                progress("storing", n, len(files))
        if not stored:
            raise ArchiveError("every instance of the slide was dropped by the de-identification policy")
        return ImportOutcome("stored", fmt.name, fmt.lossless, stored, dropped, study, series, tuple(notes))

    def _all_present(self, fingerprint: str) -> bool:
        rows = self.ledger.instances(fingerprint)
        return bool(rows) and all(self.archive.catalog.instance(sop, principal=SYSTEM) is not None for _, _, sop in rows)

    def _undo(self, fingerprint: str) -> None:
        for study, series, sop in self.ledger.instances(fingerprint):
            if self.archive.catalog.instance(sop, principal=SYSTEM) is not None:
                self.archive.delete(study, series, sop, SYSTEM)
        self.ledger.forget(fingerprint)


def _os_error(e: OSError, fmt: VendorFormat) -> ArchiveError:
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfResources(f"converting: {os.strerror(e.errno)}")
    if e.errno is None:  # not the system's: turbojpeg raises OSError for image data it cannot decode
        return NotASlide(f"{fmt.name}: conversion failed (image data that cannot be decoded; damaged?)")
    return ArchiveError(f"converting: {os.strerror(e.errno)}")

"""The vendor part of ``slidearchive import``: manifest first, then one file at a time with its own bar."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import sys
from pathlib import Path

from archive.errors import ArchiveError

from . import manifest as manifest_mod
from .formats import is_candidate
from .run import ImportOutcome, VendorImporter

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _import_one(settings, path: Path, origin, entry, workers: int) -> "ImportOutcome | ArchiveError":
    """One slide in a pool process: its own Archive (catalog and ledger connections), no bar."""
    from archive.logs import quiet_libraries
    from archive.service import Archive

    quiet_libraries()
    try:
        return VendorImporter(Archive(settings), workers).import_file(path, origin, entry)
    except ArchiveError as e:
        return e
    except Exception as e:  # never the text: it may quote the file's metadata
        return ArchiveError(f"unexpected {type(e).__name__} while converting")


def is_vendor_file(path: Path) -> bool:
    """A file the vendor importer should take: a slide scanner's extension or TIFF bytes."""
    if is_candidate(path) and path.suffix.lower() != ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


class FileBar:
    """One bar per vendor file: redrawn on a terminal, a line per phase on a pipe."""

    WIDTH = 30

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = ("", -1)

    def __call__(self, phase: str, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if self.tty:
            filled = self.WIDTH * done // max(total, 1)
            self.stream.write(f"\r{self.label}: {phase:10} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3}%")
        elif self.last[0] != phase or (percent // 25 != self.last[1] // 25):
            self.stream.write(f"{self.label}: {phase} {percent}%\n")
        self.last = (phase, percent)
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


@dataclasses.dataclass
class Batch:
    """Counts for the summary line; ``failures`` are printed one per file."""

    archive: object
    workers: int
    manifest: manifest_mod.Manifest = dataclasses.field(default_factory=manifest_mod.Manifest)
    converted: int = 0
    already: int = 0
    failed: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    #: Slides converted at once in their own processes (``--jobs``); 1: one after another, in this process.
    jobs: int = 1
    files: list[Path] = dataclasses.field(default_factory=list)
    _pool: concurrent.futures.ProcessPoolExecutor | None = None
    _futures: dict[Path, concurrent.futures.Future] = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, archive, manifest_path: Path | None, workers: int, batch_files: list[Path],
             jobs: int = 1) -> "Batch":
        """Read and check the manifest before anything is converted; rows for files not in this batch are reported."""
        manifest = manifest_mod.load(manifest_path) if manifest_path else manifest_mod.Manifest()
        batch = cls(archive, workers, manifest, jobs=max(1, jobs), files=list(batch_files))
        wanted = {str(p.resolve()) for p in batch_files}
        for key, message in manifest.errors.items():
            if key not in wanted:  # a row naming a missing file (or no file): its own failure
                batch.failed += 1
                batch.failures.append(message)
        return batch

    is_vendor_file = staticmethod(is_vendor_file)
    _importer: VendorImporter | None = None

    def importer(self) -> VendorImporter:
        """Made on first use, so an import of DICOM files only leaves no ledger behind."""
        if self._importer is None:
            self._importer = VendorImporter(self.archive, self.workers)
        return self._importer

    def run(self, path: Path, origin, quiet: bool) -> ImportOutcome | None:
        problem = self.manifest.error_for(path)
        if problem:
            self.failed += 1
            self.failures.append(f"{path}: Invalid manifest: {problem}")
            return None
        if self.jobs > 1:
            outcome = self._parallel(path, origin, quiet)
        else:
            bar = None if quiet else FileBar(path.name)
            try:
                outcome = self.importer().import_file(path, origin, self.manifest.for_file(path), bar)
            except ArchiveError as e:
                outcome = e
            finally:
                if bar:
                    bar.close()
        if isinstance(outcome, ArchiveError):
            self.failed += 1
            self.failures.append(f"{path}: {outcome.title}: {outcome.message}")
            return None
        if outcome.status == "duplicate":
            self.already += 1
        else:
            self.converted += 1
        return outcome

    def _parallel(self, path: Path, origin, quiet: bool) -> "ImportOutcome | ArchiveError":
        """The first call hands every vendor file of the batch to a pool; each call waits for its own file."""
        if self._pool is None:
            from archive.dicomfile import looks_like_dicom

            self._pool = concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))
            for f in self.files:
                if not looks_like_dicom(f) and is_vendor_file(f) and not self.manifest.error_for(f):
                    self._futures[f] = self._pool.submit(_import_one, self.archive.settings, f, origin,
                                                         self.manifest.for_file(f), self.workers)
        try:
            outcome = self._futures.pop(path).result()
        except concurrent.futures.process.BrokenProcessPool:
            outcome = ArchiveError("the conversion process ended unexpectedly")
        if not quiet:
            sys.stderr.write(f"{path.name}: {'failed' if isinstance(outcome, ArchiveError) else outcome.status}\n")
        if not self._futures:
            self._pool.shutdown()
        return outcome

    def summary(self) -> str:
        return (f"vendor slides: {self.converted} converted, {self.already} already imported, "
                f"{self.failed} failed")


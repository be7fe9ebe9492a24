"""The vendor part of ``slidearchive import``: manifest first, then one file at a time with its own bar."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from archive.errors import ArchiveError

from . import manifest as manifest_mod
from .formats import is_candidate
from .run import ImportOutcome, VendorImporter

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


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

    importer: VendorImporter
    manifest: manifest_mod.Manifest = dataclasses.field(default_factory=manifest_mod.Manifest)
    converted: int = 0
    already: int = 0
    failed: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def open(cls, archive, manifest_path: Path | None, workers: int, batch_files: list[Path]) -> "Batch":
        """Read and check the manifest before anything is converted; rows for files not in this batch are reported."""
        manifest = manifest_mod.load(manifest_path) if manifest_path else manifest_mod.Manifest()
        batch = cls(VendorImporter(archive, workers), manifest)
        wanted = {str(p.resolve()) for p in batch_files}
        for key, message in manifest.errors.items():
            if key not in wanted:  # a row naming a missing file (or no file): its own failure
                batch.failed += 1
                batch.failures.append(message)
        return batch

    is_vendor_file = staticmethod(is_vendor_file)

    def run(self, path: Path, origin, quiet: bool) -> ImportOutcome | None:
        problem = self.manifest.error_for(path)
        if problem:
            self.failed += 1
            self.failures.append(f"{path}: Invalid manifest: {problem}")
            return None
        bar = None if quiet else FileBar(path.name)
        try:
            outcome = self.importer.import_file(path, origin, self.manifest.for_file(path), bar)
        except ArchiveError as e:
            self.failed += 1
            self.failures.append(f"{path}: {e.title}: {e.message}")
            return None
        finally:
            if bar:
                bar.close()
        if outcome.status == "duplicate":
            self.already += 1
        else:
            self.converted += 1
        return outcome

    def summary(self) -> str:
        return (f"vendor slides: {self.converted} converted, {self.already} already imported, "
                f"{self.failed} failed")


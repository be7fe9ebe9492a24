"""The ``slidearchive`` command: serve, import, verify (and the broker and index commands)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from archive.auth.access import SYSTEM
from archive.config import ConfigError, Settings, load_settings, parse_remote
from archive.errors import ArchiveError


def _settings(args: argparse.Namespace) -> Settings:
    remotes = [parse_remote(r) for r in getattr(args, "remote", None) or []]
    return load_settings(args.config, data_dir=args.data_dir, host=getattr(args, "host", None),
                         http_port=getattr(args, "http_port", None), dimse_port=getattr(args, "dimse_port", None),
                         ae_title=getattr(args, "ae_title", None), remotes=remotes,
                         workers=getattr(args, "workers", None),
                         no_dimse=True if getattr(args, "no_dimse", False) else None)


def _existing_archive(args: argparse.Namespace, need_catalog: bool = False) -> Settings:
    """Settings of an archive that must already exist: only ``serve`` creates a data directory.

    Without this a mistyped or forgotten ``--data-dir`` would create an empty archive
    and report it healthy.
    """
    settings = _settings(args)
    where = "--data-dir" if args.data_dir else ("[server] data_dir" if args.config else "the default")
    if not settings.data_dir.is_dir():
        raise UsageError(f"no archive at {settings.data_dir} (from {where}): the directory does not exist; "
                         "pass --data-dir, or run `slidearchive serve` once to create it")
    if need_catalog and not settings.catalog.url and not settings.catalog_path.is_file():
        raise UsageError(f"no archive at {settings.data_dir} (from {where}): it holds no catalog.sqlite")
    return settings


#: Commands other packages register that work on an archive ``serve`` made: whether they need its catalog.
EXISTING_ARCHIVE = {"reindex": True, "collection": True, "keys": False, "audit": False, "dataset": True}


class UsageError(Exception):
    """Bad input to a command (a path that does not exist, a key that does not load): one line, exit 2."""


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    from archive.server import serve

    settings = _settings(args)
    if args.verbose:  # -v wins over [logging] level
        settings = dataclasses.replace(settings, logging=dataclasses.replace(settings.logging, level="info"))
    return serve(settings)


def _files(paths: list[str]) -> Iterator[tuple[Path, bool]]:
    """(path, named): files given by name, then the files inside given folders (recursively)."""
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    yield Path(root) / name, False
        else:
            yield path, True


class Progress:
    """A bar redrawn in place on a terminal; on a pipe or log file, a plain line per tenth done."""

    WIDTH = 30

    def __init__(self, total: int, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = -1

    def update(self, done: int, counts: dict[str, int]) -> None:
        summary = " ".join(f"{k}={v}" for k, v in counts.items() if v)
        if self.tty:
            filled = self.WIDTH * done // max(self.total, 1)
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} {summary}")
        else:
            tenth = 10 * done // max(self.total, 1)
            if tenth == self.shown:
                return
            self.shown = tenth
            self.stream.write(f"{done}/{self.total} files {summary}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def cmd_import(args: argparse.Namespace) -> int:
    from archive.dicomfile import looks_like_dicom
    from archive.ingest import Origin
    from archive.service import Archive

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"import: not found: {missing[0]}")
    settings = _existing_archive(args)
    from archive.metrics import join_running

    join_running(settings.data_dir)  # a node serving this data directory counts these instances too
    archive = Archive(settings)
    files = list(_files(args.paths))
    origin = Origin("import", ae_title=args.source, collection=args.collection or settings.default_collection)
    counts = {"stored": 0, "duplicate": 0, "dropped": 0, "skipped": 0, "failed": 0}
    failures: list[str] = []
    vendor = _vendor_batch(archive, args, files)
    progress = None if args.quiet else Progress(len(files))
    for n, (path, named) in enumerate(files, start=1):
        if vendor and not looks_like_dicom(path) and vendor.is_vendor_file(path):
            outcome = vendor.run(path, origin, args.quiet)  # converted, then stored like any instance
            if outcome is not None:
                counts["stored" if outcome.status == "stored" else "duplicate"] += outcome.stored
                counts["dropped"] += outcome.dropped if outcome.status == "stored" else 0
        elif not named and not looks_like_dicom(path):
            counts["skipped"] += 1  # README.md, .DS_Store, DICOMDIR next to the instances
        else:
            try:
                result = archive.store_file(path, origin)
                counts[result.status] += 1
            except ArchiveError as e:
                counts["failed"] += 1
                failures.append(f"{path}: {e.title}: {e.message}")
        if progress:
            progress.update(n, counts)
    if progress:
        progress.close()
    for line in failures:
        print(line, file=sys.stderr)
    print(f"{len(files)} files: {counts['stored']} stored, {counts['duplicate']} already stored, "
          f"{counts['dropped']} dropped by policy, {counts['skipped']} skipped (not DICOM), "
          f"{counts['failed']} failed")
    if vendor:
        failures_vendor = vendor.failed
        for line in vendor.failures:
            print(line, file=sys.stderr)
        if vendor.converted or vendor.already or failures_vendor:
            print(vendor.summary())
        return 1 if counts["failed"] or failures_vendor else 0
    return 1 if counts["failed"] else 0


def _vendor_batch(archive, args: argparse.Namespace, files: list[tuple[Path, bool]]):
    """The vendor-format importer (SVS, NDPI, ...; docs/import.md), or None when it is not installed."""
    try:
        from importer.batch import Batch
    except ImportError:
        return None
    return Batch.open(archive, args.manifest, args.import_workers, [p for p, _ in files], args.jobs)


def cmd_verify(args: argparse.Namespace) -> int:
    """The catalog against storage (files or S3 objects): missing, orphaned, and with --checksums corrupt."""
    from archive.service import Archive
    from archive.storage import removals, stored_sha256
    from archive.storage.local import leftovers

    archive = Archive(_existing_archive(args, need_catalog=True))
    rows = archive.catalog.storage_ids()
    # Before the listing: a removal's item goes only after its object, so an object listed then
    # that was awaiting removal is among these, though a node removed it meanwhile.
    awaiting = removals.awaiting(archive.catalog.db)
    stored = archive.storage.objects()  # storage id -> size
    kind = "objects" if archive.storage.kind == "s3" else "files"
    missing = [sid for sid in rows if sid not in stored]
    unlisted = set(stored) - set(rows)
    awaiting &= unlisted  # deleted, not orphans
    orphans, young = _orphans(archive, sorted(unlisted - awaiting), args.orphans_after * 60)
    corrupt: dict[str, str] = {}
    if args.checksums:
        for sid, uid in rows.items():
            record = archive.catalog.instance(uid, principal=SYSTEM)
            if record is None or sid not in stored:
                continue
            if stored[sid] != record.size:
                corrupt[sid] = f"{stored[sid]} bytes, the catalog says {record.size}"
            elif stored_sha256(archive.storage, sid) != record.sha256:
                corrupt[sid] = "SHA-256 differs from the catalog's"
    temps = len(leftovers(archive.storage.tmp, args.orphans_after * 60))
    open_uploads, stale = _open_uploads(archive, args.stale_uploads_after)
    print(f"{len(rows)} instances in the catalog, {len(stored)} {kind} in storage"
          + (f" ({len(awaiting)} of deleted instances, awaiting removal: [storage] removal_delay)" if awaiting else ""))
    print(f"missing {kind}: {len(missing)}; {kind} without catalog rows: {len(orphans)}; "
          f"checksum mismatches: {len(corrupt)}; temp files: {temps}"
          + (f"; incomplete uploads: {len(stale)}" if archive.storage.kind == "s3" else ""))
    for u in open_uploads:
        state = "incomplete upload" if u in stale else "upload in progress (left alone)"
        print(f"  {state}: storage id {u.storage_id}, started {u.initiated:%Y-%m-%dT%H:%M:%SZ}")
    for sid in missing:
        print(f"  missing: {_describe(archive, rows[sid])} (storage id {sid})")
    for sid in orphans:
        print(f"  orphan: storage id {sid}")
    for sid in young:
        print(f"  no catalog row yet (stored less than {args.orphans_after:g} min ago, left alone): storage id {sid}")
    for sid, why in corrupt.items():
        print(f"  corrupt: {_describe(archive, rows[sid])} (storage id {sid}; {why})")
    problems = len(missing) + len(orphans) + len(corrupt) + temps + len(stale)
    if args.repair and problems:
        for sid in missing:
            archive.catalog.remove_instance_row(rows[sid])
        archive.storage.remove_orphans(set(orphans))
        archive.storage.sweep_temp(older_than=args.orphans_after * 60)
        if stale:
            from archive.storage import uploads

            uploads.abort(archive.storage, stale)
        print(f"repaired: removed {len(missing)} rows without bytes, {len(orphans)} orphan {kind}, {temps} temp files"
              + (f", aborted {len(stale)} incomplete uploads" if stale else "")
              + (f"; {len(corrupt)} corrupt instance(s) left for you to re-send (import or send the original "
                 "again: an identical instance replaces its corrupt copy)" if corrupt else ""))
        return 1 if corrupt else 0
    return 1 if problems else 0


def _orphans(archive, candidates: list[str], grace: float) -> tuple[list[str], list[str]]:
    """(orphans, too young to tell) among stored ids without catalog rows. A running archive writes
    an instance's bytes moments before its catalog row commits (on another node, perhaps), so bytes
    younger than ``grace`` seconds may be an instance being stored right now, not an orphan."""
    if not candidates or grace <= 0:
        return candidates, []
    written = archive.storage.modified(set(candidates))  # without those removed since the listing
    present = [sid for sid in candidates if sid in written]
    young = [sid for sid in present if time.time() - written[sid] < grace]
    return [sid for sid in present if sid not in young], young


def _open_uploads(archive, minutes: float) -> tuple[list, list]:
    """S3 only: (every multipart upload left open under the prefix, those older than ``minutes``)."""
    if archive.storage.kind != "s3":
        return [], []
    from archive.storage import uploads

    found = uploads.open_uploads(archive.storage)
    return found, uploads.stale(found, minutes)


def _minutes(text: str) -> float:
    """A non-negative number of minutes (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more minutes")
    return value


def _describe(archive, sop_uid: str) -> str:
    """Study / series / SOP Instance UIDs as stored (pseudonymous under a de-identifying policy)."""
    record = archive.catalog.instance(sop_uid, principal=SYSTEM)
    if record is None:
        return f"SOP Instance UID {sop_uid}"
    return f"study {record.study_uid} series {record.series_uid} SOP Instance UID {sop_uid}"


def _defaults() -> dict:
    """The embedded defaults (config/default.toml), shown in --help."""
    import tomllib

    from archive.config import DEFAULT_FILE

    with open(DEFAULT_FILE, "rb") as f:
        raw = tomllib.load(f)
    return {**raw.get("server", {}), **{f"dimse_{k}": v for k, v in raw.get("dimse", {}).items()}}


def version() -> str:
    """The installed distribution's version, else the one in pyproject.toml next to this checkout."""
    from importlib import metadata

    try:
        return metadata.version("slidearchive")
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        with open(pyproject, "rb") as f:
            return tomllib.load(f)["project"]["version"]


def cmd_migrate(args: argparse.Namespace) -> int:
    from archive.migrate import MigrationRefused, run

    try:
        return run(args)
    except MigrationRefused as e:
        raise UsageError(f"migrate: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    d = _defaults()
    parser = argparse.ArgumentParser(prog="slidearchive", description="DICOMweb archive for whole-slide DICOM")
    parser.add_argument("--version", action="version", version=f"slidearchive {version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path,
                        help="TOML file overriding the defaults in config/default.toml (default: none)")
    common.add_argument("--data-dir", help="where instances, catalog and keys live "
                                           f"(default: {d['data_dir']}, relative to the current directory)")
    common.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the DICOMweb and DIMSE servers",
                       description="Run DICOMweb and DIMSE until Ctrl-C or SIGTERM; creates the data "
                                   "directory on first start.")
    p.add_argument("--host", help=f"bind address (default {d['host']})")
    p.add_argument("--http-port", type=int, help=f"DICOMweb port (default {d['http_port']})")
    p.add_argument("--dimse-port", type=int, help=f"DICOM port (default {d['dimse_port']})")
    p.add_argument("--ae-title", help=f"the archive's AE title (default {d['dimse_ae_title']})")
    p.add_argument("--remote", action="append", metavar="AE=HOST:PORT", help="a C-MOVE destination (repeatable)")
    p.add_argument("--workers", type=int, help=f"HTTP worker processes (default {d['workers']})")
    p.add_argument("--no-dimse", action="store_true", help="do not listen for DICOM associations")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("import", parents=[common], help="store DICOM files and folders",
                       description="Store Part 10 files into an existing archive (see serve). Files inside "
                                   "folders that are not DICOM (no DICM prefix, DICOMDIR) are skipped.")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--collection", help=f"collection for new studies (default {d['default_collection']})")
    p.add_argument("--source", help="treat the files as sent by this AE title (picks its de-identification policy)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--manifest", type=Path, help="CSV or JSON sidecar for vendor slides: specimen, stain, anatomy, "
                   "collection, case_id per file (docs/import.md)")
    p.add_argument("--workers", dest="import_workers", type=int, default=2,
                   help="threads converting one vendor slide")
    p.add_argument("--jobs", type=int, default=1, help="vendor slides converted at once, each in its own process")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("verify", parents=[common], help="check that storage and catalog agree",
                       description="Compare the catalog with the stored files of an existing archive; "
                                   "exit 1 when anything disagrees.")
    p.add_argument("--repair", action="store_true", help="remove orphans and rows without bytes")
    p.add_argument("--checksums", action="store_true", help="also re-hash every stored file")
    p.add_argument("--orphans-after", type=_minutes, default=60.0, metavar="MINUTES",
                   help="bytes without a catalog row and temp files count as left behind (reported, and "
                        "removed by --repair) only once this old: younger ones may belong to an instance "
                        "being stored right now (default: %(default)g)")
    p.add_argument("--stale-uploads-after", type=_minutes, default=60.0, metavar="MINUTES",
                   help="S3: multipart uploads open longer than this were left by a node that died; "
                        "--repair aborts them (default: 60)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("migrate", parents=[common], help="copy a single-machine archive into the configured "
                       "catalog and storage (PostgreSQL + S3)",
                       description="Copy the archive in SOURCE (catalog.sqlite + storage/) into the catalog and "
                                   "storage that --config names, checksums verified; run it again to continue "
                                   "an interrupted copy. Exit 0 when everything is in the destination.")
    p.add_argument("source", help="data directory of the single-machine archive (only read)")
    p.add_argument("--source-config", type=Path, help="the configuration the source archive ran with")
    p.add_argument("--limit", type=int, help="copy at most this many instances in this run")
    p.add_argument("--no-readback", action="store_true",
                   help="do not read each copy back from the destination to check its checksum")
    p.add_argument("--quiet", action="store_true", help="no line per instance")
    p.set_defaults(func=cmd_migrate)

    from archive.audit import cli as audit_cli
    from archive.auth import cli as keys_cli

    audit_cli.register(sub, common)
    keys_cli.register(sub, common)
    for name in ("deid.cli", "indexer.cli", "datasets.cli"):
        try:
            module = __import__(name, fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)
    return parser


def _is_configuration_error(e: Exception) -> bool:
    if isinstance(e, ConfigError):
        return True
    from deid import PolicyError  # imported only when needed: deid pulls in highdicom
    from indexer.config import IndexConfigError

    return isinstance(e, (PolicyError, IndexConfigError))


def main(argv: list[str] | None = None) -> int:
    """Every failure ends in one line on stderr and a non-zero exit; a traceback only with --verbose."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "serve":  # serve quiets them in archive.preload
        from archive.logs import quiet_libraries

        quiet_libraries()
    try:
        # commands registered by other packages, checked alike (not those that are clients of another archive)
        if args.command in EXISTING_ARCHIVE and not getattr(args, "remote", False):
            _existing_archive(args, need_catalog=EXISTING_ARCHIVE[args.command])
        return args.func(args) or 0
    except UsageError as e:
        print(f"slidearchive: {e}", file=sys.stderr)
        return 2
    except ArchiveError as e:
        print(f"slidearchive: {e.title}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the last resort: one line, never a traceback
        if isinstance(e, ValueError) and _is_configuration_error(e):
            print(f"slidearchive: configuration error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # names the file and the system's reason, no data-set values
            print(f"slidearchive: {e.strerror or type(e).__name__}: {e.filename or ''}".rstrip(": "),
                  file=sys.stderr)
            return 1
        if verbose:
            logging.getLogger(__name__).error("unexpected failure", exc_info=True)
        print(f"slidearchive: unexpected {type(e).__name__} in {args.command}"
              + ("" if verbose else " (rerun with --verbose for details)"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

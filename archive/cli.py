"""The ``slidearchive`` command: serve, import, verify (and the broker and index commands)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from .config import ConfigError, Settings, load_settings, parse_remote
from .errors import ArchiveError


def _settings(args: argparse.Namespace) -> Settings:
    remotes = [parse_remote(r) for r in getattr(args, "remote", None) or []]
    return load_settings(args.config, data_dir=args.data_dir, host=getattr(args, "host", None),
                         http_port=getattr(args, "http_port", None), dimse_port=getattr(args, "dimse_port", None),
                         ae_title=getattr(args, "ae_title", None), remotes=remotes,
                         workers=getattr(args, "workers", None),
                         no_dimse=True if getattr(args, "no_dimse", False) else None)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    return serve(_settings(args))


def _files(paths: list[str]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, _, names in os.walk(path):
                for name in sorted(names):
                    yield Path(root) / name
        else:
            yield path


def _progress(done: int, total: int, counts: dict[str, int]) -> None:
    width = 30
    filled = width * done // max(total, 1)
    summary = " ".join(f"{k}={v}" for k, v in counts.items() if v)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {summary}")
    sys.stderr.flush()


def cmd_import(args: argparse.Namespace) -> int:
    from .ingest import Origin
    from .service import Archive

    settings = _settings(args)
    archive = Archive(settings)
    files = list(_files(args.paths))
    missing = [f for f in files if not f.is_file()]
    if missing:
        print(f"slidearchive import: not found: {missing[0]}", file=sys.stderr)
        return 2
    origin = Origin("import", ae_title=args.source, collection=args.collection or settings.default_collection)
    counts = {"stored": 0, "duplicate": 0, "dropped": 0, "failed": 0}
    failures: list[str] = []
    for n, path in enumerate(files, start=1):
        try:
            result = archive.store_file(path, origin)
            counts[result.status] += 1
        except ArchiveError as e:
            counts["failed"] += 1
            failures.append(f"{path}: {e.title}: {e.message}")
        if not args.quiet:
            _progress(n, len(files), counts)
    if not args.quiet:
        sys.stderr.write("\n")
    for line in failures:
        print(line, file=sys.stderr)
    print(f"{len(files)} files: {counts['stored']} stored, {counts['duplicate']} already stored, "
          f"{counts['dropped']} dropped by policy, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .ingest import sha256_of
    from .service import Archive

    archive = Archive(_settings(args))
    rows = archive.catalog.storage_ids()
    on_disk = archive.storage.files()
    missing = [sid for sid in rows if sid not in on_disk]
    orphans = sorted(set(on_disk) - set(rows))
    corrupt = []
    if args.checksums:
        expected = {r.storage_id: r.sha256 for r in
                    (archive.catalog.instance(uid) for uid in rows.values()) if r is not None}
        corrupt = [sid for sid in rows if sid in on_disk and sha256_of(archive.storage.path(sid)) != expected.get(sid)]
    temps = len(list(archive.storage.tmp.iterdir()))
    print(f"{len(rows)} instances in the catalog, {len(on_disk)} files in storage")
    print(f"missing files: {len(missing)}; files without catalog rows: {len(orphans)}; "
          f"checksum mismatches: {len(corrupt)}; temp files: {temps}")
    for sid in missing:
        print(f"  missing: storage id {sid}")
    for sid in orphans:
        print(f"  orphan: storage id {sid}")
    for sid in corrupt:
        print(f"  corrupt: storage id {sid}")
    problems = len(missing) + len(orphans) + len(corrupt) + temps
    if args.repair and problems:
        for sid in missing:
            archive.catalog.remove_instance_row(rows[sid])
        for sid in orphans:
            on_disk[sid].unlink(missing_ok=True)
        archive.storage.sweep_temp()
        print(f"repaired: removed {len(missing)} rows without bytes, {len(orphans)} orphan files, {temps} temp files"
              + (f"; {len(corrupt)} corrupt instances left for you to re-send" if corrupt else ""))
        return 1 if corrupt else 0
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slidearchive", description="DICOMweb archive for whole-slide DICOM")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML configuration file (defaults: config/default.toml)")
    common.add_argument("--data-dir", help="where instances, catalog and keys live")
    common.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the DICOMweb and DIMSE servers")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="DICOMweb port (default 8080)")
    p.add_argument("--dimse-port", type=int, help="DICOM port (default 11112)")
    p.add_argument("--ae-title", help="the archive's AE title (default SLIDEARCHIVE)")
    p.add_argument("--remote", action="append", metavar="AE=HOST:PORT", help="a C-MOVE destination (repeatable)")
    p.add_argument("--workers", type=int, help="HTTP worker processes")
    p.add_argument("--no-dimse", action="store_true", help="do not listen for DICOM associations")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("import", parents=[common], help="store DICOM files and folders")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--collection", help="collection for new studies")
    p.add_argument("--source", help="treat the files as sent by this AE title (picks its de-identification policy)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("verify", parents=[common], help="check that storage and catalog agree")
    p.add_argument("--repair", action="store_true", help="remove orphans and rows without bytes")
    p.add_argument("--checksums", action="store_true", help="also re-hash every stored file")
    p.set_defaults(func=cmd_verify)

    from . import audit_cli

    audit_cli.register(sub, common)
    for name in ("deid.cli", "indexer.cli"):
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "serve":  # the serve supervisor imports no DICOM library at all
        from .server import quiet_libraries

        quiet_libraries()
    try:
        return args.func(args) or 0
    except ValueError as e:
        if not _is_configuration_error(e):
            raise
        print(f"slidearchive: configuration error: {e}", file=sys.stderr)
        return 2
    except ArchiveError as e:
        print(f"slidearchive: {e.title}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

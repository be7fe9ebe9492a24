"""``slidearchive migrate``: copy a single-machine archive (SQLite catalog + storage directory)
into the catalog and storage a configuration names (PostgreSQL + S3 for many nodes).

What moves, in this order:

1. the de-identification key (so that a patient's later slides keep their pseudonyms): the
   destination takes the source's key; a destination that already holds instances under a
   different key is refused;
2. the broker's link vault (sealed to the broker's key; copied as it is);
3. every instance, one at a time: its bytes are streamed to the destination storage while
   their SHA-256 is computed and compared with the source catalog's, read back from the
   destination and hashed again (unless ``--no-readback``), and only then its catalog row
   (header, frame index, collections) is written; results are linked to their slides again.

Resumable: an instance whose row is already in the destination with the same checksum is
skipped, so running the command again continues where an interrupted run stopped. Bytes
uploaded by a run that was killed before their row was written are found through the
journal (``<destination data dir>/migrate.journal``) and removed, so nothing is left behind
twice. The source is only read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclasses.dataclass
class Outcome:
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    remaining: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


class Journal:
    """Lines ``put <sop> <storage id>`` before an upload and ``done <sop>`` after its row is written."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def unfinished(self) -> dict[str, str]:
        """sop -> storage id of uploads whose row was never written (an interrupted run)."""
        pending: dict[str, str] = {}
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return pending
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "put":
                pending[parts[1]] = parts[2]
            elif len(parts) == 2 and parts[0] in ("done", "gone"):
                pending.pop(parts[1], None)
        return pending

    def write(self, *parts: str) -> None:
        os.write(self.fd, (" ".join(parts) + "\n").encode())
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def hashed_chunks(path: Path, digest) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            yield chunk


def migrate(source_dir: Path, source_settings, settings, *, limit: int | None = None, readback: bool = True,
            progress: Callable[[str], None] | None = None) -> Outcome:
    """Copy the archive at ``source_dir`` into the catalog and storage of ``settings``."""
    from pydicom import dcmread

    from archive.auth.access import SYSTEM
    from archive.catalog import Catalog, NewInstance
    from archive.errors import DuplicateInstance
    from archive.storage import StorageArea

    say = progress or (lambda text: None)
    source = Catalog(source_dir / "catalog.sqlite")
    source_storage = StorageArea(source_dir / "storage")
    destination = Catalog(catalog_location(settings))
    storage = open_storage(settings)
    outcome = Outcome()
    journal = Journal(settings.data_dir / "migrate.journal")
    try:
        move_deid_key(source_dir, settings, destination)
        move_link_vault(source_dir, settings, destination)
        for sop, storage_id in journal.unfinished().items():
            if destination.instance(sop, principal=SYSTEM) is None:
                storage.remove(storage_id)
            journal.write("gone", sop)
        rows = source.storage_ids()  # storage id -> SOP Instance UID
        todo = sorted(rows.items(), key=lambda item: item[1])
        for n, (source_id, sop) in enumerate(todo, start=1):
            record = source.instance(sop, principal=SYSTEM)
            if record is None:  # deleted from the source meanwhile
                continue
            present = destination.instance(sop, principal=SYSTEM)
            if present is not None:
                if present.sha256 == record.sha256:
                    outcome.skipped += 1
                else:
                    outcome.failed += 1
                    outcome.problems.append(f"{sop}: the destination holds a different instance under this UID")
                continue
            if limit is not None and outcome.copied >= limit:
                outcome.remaining += 1
                continue
            path = source_storage.path(source_id)
            try:
                stored_id = copy_verified(path, record.sha256, storage, journal, sop, readback)
            except (OSError, ValueError) as e:
                outcome.failed += 1
                outcome.problems.append(f"{sop}: {e}")
                continue
            header = dcmread(path, stop_before_pixels=True)
            collections = source.study_collections(record.study_uid) or [source_settings.default_collection]
            new = NewInstance(header, record.transfer_syntax_uid, stored_id, record.size, record.sha256,
                              record.frame_layout, source.frame_index(source_id),
                              json.loads(source.header_json(sop)))
            try:
                destination.add_instance(new, collections[0])
            except DuplicateInstance:  # another migrate run or a node stored it just now
                storage.remove(stored_id)
                journal.write("gone", sop)
                outcome.skipped += 1
                continue
            for collection in collections[1:]:
                destination.set_study_collection(record.study_uid, collection)
            journal.write("done", sop)
            link_results(destination, header)
            outcome.copied += 1
            outcome.bytes += record.size
            say(f"{n}/{len(todo)} {record.size / 1e6:.1f} MB copied and verified")
    finally:
        journal.close()
        source.close()
        destination.close()
    return outcome


def copy_verified(path: Path, sha256: str, storage, journal: Journal, sop: str, readback: bool) -> str:
    """Upload ``path``; its bytes must hash to ``sha256`` on the way out and, read back, at the destination."""
    digest = hashlib.sha256()
    temp = storage.new_temp()
    with open(temp, "wb") as out:
        for chunk in hashed_chunks(path, digest):
            out.write(chunk)
    if digest.hexdigest() != sha256:
        temp.unlink(missing_ok=True)
        raise ValueError("the source file does not match its checksum in the source catalog (not copied; "
                         "run slidearchive verify --checksums on the source)")
    storage_id = storage.commit(temp)
    journal.write("put", sop, storage_id)
    if readback:
        again = hashlib.sha256()
        reader = getattr(storage, "open", None)
        with (reader(storage_id) if reader else open(storage.path(storage_id), "rb")) as f:
            while chunk := f.read(CHUNK):
                again.update(chunk)
        if again.hexdigest() != sha256:
            storage.remove(storage_id)
            journal.write("gone", sop)
            raise ValueError("the copy read back from the destination storage does not match its checksum")
    return storage_id


def open_storage(settings):
    """The destination's storage area, as the server opens it (the S3 backend when configured)."""
    from archive import storage

    opener = getattr(storage, "open_storage", None)
    return opener(settings) if opener is not None else storage.StorageArea(settings.storage_dir)


def catalog_location(settings):
    return getattr(settings, "catalog_location", settings.catalog_path)


def move_deid_key(source_dir: Path, settings, destination) -> None:
    """The destination keeps the source's pseudonym key (one key for the archive, before and after).

    A destination that already has a different key and holds instances is refused: its
    pseudonyms and the source's could never be joined again."""
    from deid.policy import read_key

    source_key = source_dir / "secrets" / "deid.key"
    if not source_key.is_file():
        return  # the source never de-identified with its own key (key_file policies carry theirs)
    key = read_key(source_key)
    if getattr(destination, "shared", False):  # a shared catalog keeps the key for every node
        try:
            destination.adopt_shared_secret(DEID_KEY_NAME, key)
        except ValueError as e:
            raise MigrationRefused(f"{e}; migrate into an empty destination") from None
        return
    target = settings.data_dir / "secrets" / "deid.key"
    if target.is_file():
        if read_key(target) == key:
            return
        if destination.storage_ids():
            raise MigrationRefused("the destination already holds instances de-identified with another "
                                   "pseudonym key; migrate into an empty destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o700)
    temp = target.with_name(".deid.key.migrate")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)


#: The name under which a shared catalog keeps the pseudonym key (deid's key source).
DEID_KEY_NAME = "deid pseudonym key"


class MigrationRefused(RuntimeError):
    """The destination cannot take this source (the message says why); nothing was copied."""


def move_link_vault(source_dir: Path, settings, destination) -> int:
    """The broker's sealed links, as they are (the archive cannot read them); returns how many."""
    import sqlite3

    source = source_dir / "broker" / "links.sqlite"
    if not source.is_file():
        return 0
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT kind, pseudonym, sealed FROM links").fetchall()
    if not rows:
        return 0
    if getattr(destination, "shared", False):  # a shared catalog's vault
        destination.add_sealed_links(rows)
        return len(rows)
    from deid.vault import _SCHEMA

    target = settings.data_dir / "broker" / "links.sqlite"
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(target) as db:
        db.execute(_SCHEMA)
        db.executemany("INSERT OR IGNORE INTO links (kind, pseudonym, sealed) VALUES (?, ?, ?)", rows)
    os.chmod(target, 0o600)
    return len(rows)


def link_results(catalog, header) -> None:
    """AI results point at their slides in the destination too (idempotent; never raises)."""
    from archive.results import checks

    checks.record(catalog, header)


def main_summary(outcome: Outcome, elapsed: float) -> str:
    text = (f"{outcome.copied} instances copied and verified ({outcome.bytes / 1e9:.2f} GB in {elapsed:.0f} s), "
            f"{outcome.skipped} already there, {outcome.failed} failed")
    if outcome.remaining:
        text += f", {outcome.remaining} left for the next run (--limit)"
    return text


def run(args) -> int:
    """The CLI command (archive.cli): exit 0 when everything is in the destination, 1 otherwise."""
    from archive.config import load_settings

    source_dir = Path(args.source).expanduser().resolve()
    if not (source_dir / "catalog.sqlite").is_file():
        print(f"slidearchive: migrate: no single-machine archive at {source_dir} (no catalog.sqlite)",
              file=sys.stderr)
        return 2
    source_settings = load_settings(args.source_config, data_dir=source_dir)
    settings = load_settings(args.config, data_dir=args.data_dir)
    if settings.data_dir == source_dir:
        raise MigrationRefused("the destination data directory is the source; give the destination "
                               "--data-dir (or [server] data_dir) of its own")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outcome = migrate(source_dir, source_settings, settings, limit=args.limit, readback=not args.no_readback,
                      progress=None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True)))
    for problem in outcome.problems[:100]:
        print(f"  failed: {problem}", file=sys.stderr)
    print(main_summary(outcome, time.monotonic() - started))
    return 0 if not outcome.failed and not outcome.remaining else 1

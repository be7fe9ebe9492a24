"""``slidearchive dataset download``: a granted release from an archive's HTTP API, resumable and checked.

The release's archive (tar, or zip) is written to ``<folder>.tar.part`` and renamed
when complete. Run the command again after an interruption and it asks for the
rest with ``Range`` and ``If-Range`` (the ETag it was given), so the bytes on disk
are the archive's whatever the interruptions; an archive that changed meanwhile
(a withdrawal) is started again. Then every file is checked against the
release's SHA-256 (SHA256SUMS, and SHA256SUMS against the fetch manifest), and
with ``--extract`` unpacked into the standard layout. The progress bar redraws
in place on a terminal, and writes a plain line per 10 % anywhere else.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator

from archive.errors import ArchiveError, InvalidRequest

from .download import stored_path

CHUNK = 1 << 20
TOKEN_ENV = "SLIDEARCHIVE_TOKEN"


class DownloadFailed(ArchiveError):
    http_status = 502
    title = "Download failed"


class RemoteRefused(ArchiveError):
    """The archive answered an HTTP error (its status and message are shown)."""

    http_status = 502
    title = "The archive refused"


class Progress:
    """Bytes done of a total, on stderr: redrawn with ``\\r`` on a terminal, a line per 10 % otherwise."""

    def __init__(self, total: int, done: int = 0, stream: IO[str] = sys.stderr, label: str = ""):
        self.total, self.done, self.stream, self.label = max(total, 1), done, stream, label
        self.tty = stream.isatty()
        self.started, self.start_done = time.monotonic(), done
        self._last_tenth = done * 10 // self.total
        self._last_draw = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and (now - self._last_draw > 0.2 or self.done >= self.total):
            self._last_draw = now
            self.stream.write("\r" + self._text())
            self.stream.flush()
        elif not self.tty and self.done * 10 // self.total > self._last_tenth:
            self._last_tenth = self.done * 10 // self.total
            self.stream.write(self._text() + "\n")
            self.stream.flush()

    def _text(self) -> str:
        width = 30
        filled = width * self.done // self.total
        rate = (self.done - self.start_done) / max(time.monotonic() - self.started, 1e-6) / 1e6
        return (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {100 * self.done // self.total:3d}% "
                f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB {rate:,.1f} MB/s")

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _session(args: argparse.Namespace):
    import requests

    token = args.token or os.environ.get(TOKEN_ENV)
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def _check(response, what: str) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("message", "")
        except ValueError:
            message = response.text[:200]
        raise RemoteRefused(f"{what}: HTTP {response.status_code} {message}".rstrip())


def fetch(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Download (or finish downloading) the archive; returns its path and the fetch manifest."""
    session = _session(args)
    base = f"{args.url.rstrip('/')}/api/datasets/{args.id}/releases/{args.version}"
    try:
        r = session.get(f"{base}/fetch", timeout=60)
        _check(r, f"release {args.id}:v{args.version}")
        plan = r.json()
        folder = plan["layout"]["folder"]
        target = Path(args.output) if args.output else Path(f"{folder}.{args.format}")
        part, tag_file = target.with_name(target.name + ".part"), target.with_name(target.name + ".etag")
        if not target.exists():
            _transfer(session, plan["downloads"][args.format], part, tag_file, folder)
            os.replace(part, target)
            tag_file.unlink(missing_ok=True)
    except OSError as e:  # requests' connection errors are OSErrors too: the part stays for the next run
        if getattr(e, "filename", None):
            raise
        raise DownloadFailed(f"connection lost ({type(e).__name__}); run the command again to resume") from None
    return target, plan


def _transfer(session, url: str, part: Path, tag_file: Path, label: str) -> None:
    """Write the archive at ``url`` to ``part``, continuing what an earlier run wrote when it is the same archive."""
    have = part.stat().st_size if part.exists() and tag_file.exists() else 0
    headers = {"Range": f"bytes={have}-", "If-Range": tag_file.read_text().strip()} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=60) as r:
        if r.status_code == 416:  # longer than the archive is now: it changed, start again
            have = 0
            r = session.get(url, stream=True, timeout=60)
        _check(r, f"download of {label}")
        if r.status_code == 200:  # the whole archive (the first run, or the archive changed)
            have = 0
        total = int(r.headers["Content-Range"].rsplit("/", 1)[1]) if r.status_code == 206 else \
            int(r.headers["Content-Length"])
        tag_file.write_text(r.headers.get("ETag", ""))
        progress = Progress(total, have, label=label)
        with open(part, "r+b" if have else "wb") as f:
            f.seek(have)
            f.truncate()
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                progress.add(len(chunk))
        progress.finish()
    if part.stat().st_size != total:
        raise DownloadFailed(f"got {part.stat().st_size} of {total} bytes; run the command again to resume")


def _members(path: Path) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(name, chunks) of each file in the downloaded tar or zip, in archive order."""
    def chunks(f) -> Iterator[bytes]:
        while data := f.read(CHUNK):
            yield data

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    yield info.filename, chunks(f)
        return
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile():
                yield m.name, chunks(tar.extractfile(m))


def verify(path: Path, plan: dict[str, Any], extract: Path | None = None) -> int:
    """Every file's SHA-256 against the fetch manifest's layout; returns the number of files checked."""
    folder = plan["layout"]["folder"]
    expected = {f"{folder}/{f['path']}": f for f in plan["layout"]["files"]}
    total = sum(f["size"] for f in expected.values())
    progress = Progress(total, label="verify")
    try:
        members = list(_checked(path, expected, progress, extract))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DownloadFailed(f"{path} is not a readable archive ({type(e).__name__}): delete it and download again")
    progress.finish()
    missing = set(expected) - set(members)
    if missing:
        raise DownloadFailed(f"{len(missing)} files of the release are missing, e.g. {sorted(missing)[0][:200]}")
    return len(members)


def _checked(path: Path, expected: dict[str, dict], progress: Progress, extract: Path | None) -> Iterator[str]:
    """The names of the archive's files, each checked (and extracted) as it is read."""
    for name, chunks in _members(path):
        want = expected.get(name)
        if want is None:
            raise DownloadFailed(f"{name[:200]} is not a file of the release")
        digest, size = hashlib.sha256(), 0
        out = None
        if extract is not None:
            dest = stored_path(extract, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            out = open(dest, "wb")
        try:
            for data in chunks:
                digest.update(data)
                size += len(data)
                progress.add(len(data))
                if out is not None:
                    out.write(data)
        finally:
            if out is not None:
                out.close()
        if size != want["size"] or digest.hexdigest() != want["sha256"]:
            raise DownloadFailed(f"{name[:200]}: checksum does not match the release's; delete {path} and "
                                 "download again")
        yield name


def cmd_download(args: argparse.Namespace) -> int:
    if not args.url:
        raise InvalidRequest("--url is required: the archive's address, e.g. https://archive.example.org")
    path, plan = fetch(args)
    count = verify(path, plan, Path(args.extract) if args.extract else None)
    where = f", extracted into {args.extract}" if args.extract else ""
    result = {"file": str(path), "files_verified": count, "release": plan["release"],
              "manifest_sha256": plan["manifest_sha256"]}
    print(json.dumps(result) if args.json else f"{path}: {count} files verified against {plan['release']}{where}")
    return 0


def register(sub: Any, output: argparse.ArgumentParser) -> None:
    d = sub.add_parser("download", parents=[output], help="download a granted release (resumable, verified)",
                       description="Download a release you are granted from an archive's HTTP API as a tar "
                                   "(or zip), resuming a partial download, and check every file's SHA-256.")
    d.add_argument("id", help="dataset id")
    d.add_argument("version", type=int)
    d.add_argument("--url", default=os.environ.get("SLIDEARCHIVE_URL"), help="the archive's base URL "
                                                                             "(or SLIDEARCHIVE_URL)")
    d.add_argument("--token", help=f"an API key or access token (default: ${TOKEN_ENV})")
    d.add_argument("--format", choices=("tar", "zip"), default="tar")
    d.add_argument("--output", help="the archive file (default: <dataset>-v<version>.<format> here)")
    d.add_argument("--extract", metavar="DIR", help="also unpack the verified files into DIR")
    d.set_defaults(func=cmd_download, remote=True)

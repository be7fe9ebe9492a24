"""The local audit log: JSON lines in append-only files, one series of files per UTC day.

Files are ``audit-YYYYMMDD-NNN.jsonl`` in the audit directory; a day starts at
``-000`` and moves to the next number when a file passes ``rotate_bytes``. Names
sort in time order, which the syslog forwarder and ``slidearchive audit`` rely on.
Every process of the server appends to the same file: each batch is one
``write()`` on an ``O_APPEND`` descriptor, so lines of different processes never
interleave on a local file system. Nothing ever truncates or rewrites a file.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

_NAME = re.compile(r"audit-(\d{8})-(\d{3})\.jsonl")


class AuditLogFile:
    """Appends batches of lines to the current file of the day, rotating by size."""

    def __init__(self, directory: Path, rotate_bytes: int, fsync: bool):
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self.fsync = fsync
        self._fd: int | None = None
        self._name = ""

    def append(self, data: bytes, now: datetime) -> None:
        fd = self._current(now.astimezone(timezone.utc).strftime("%Y%m%d"))
        os.write(fd, data)
        if self.fsync:
            os.fdatasync(fd)

    def _current(self, day: str) -> int:
        if self._fd is not None and self._name.startswith(f"audit-{day}-") \
                and os.fstat(self._fd).st_size < self.rotate_bytes:
            return self._fd
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(2)) for m in map(_NAME.fullmatch, os.listdir(self.directory)) if m and m.group(1) == day]
        number = max(numbers, default=0)
        while True:
            name = f"audit-{day}-{number:03d}.jsonl"
            fd = os.open(self.directory / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            if os.fstat(fd).st_size < self.rotate_bytes or number == 999:
                self._fd, self._name = fd, name
                return fd
            os.close(fd)  # another process filled it meanwhile
            number += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def log_files(directory: Path) -> list[Path]:
    """The audit files in time order."""
    if not directory.is_dir():
        return []
    return sorted(directory / n for n in os.listdir(directory) if _NAME.fullmatch(n))


def read_records(directory: Path, since: datetime | None = None) -> Iterator[dict]:
    """Every complete record, oldest first; a line still being written (no newline yet) is skipped."""
    first_day = since.astimezone(timezone.utc).strftime("%Y%m%d") if since else ""
    for path in log_files(directory):
        if path.name[6:14] < first_day:
            continue
        with open(path, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue

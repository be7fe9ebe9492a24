"""A release as files: the standard layout a download (tar, zip or the command line) writes.

```
<dataset id>-v<version>/
  README.txt            what this is, how to cite it, how to check it
  manifest.json         the release's manifest (every instance, checksums, cases)
  SHA256SUMS            ``sha256sum -c`` input for every file below
  <Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.dcm
  <Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.geojson   (beside each annotation)
```

The DICOM files are the stored bytes (their SHA-256 is the manifest's); withdrawn
instances are left out (the manifest still lists them, marked). Everything
else is derived deterministically from the release, so the same release gives
the same archive byte for byte, and its ETag names that content.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from archive.auth.access import SYSTEM

from . import metadata
from .bundle import Layout, Member, TarLayout, ZipLayout, from_bytes
from .release import Item, Manifest
from .schema import reader

LAYOUT_VERSION = "1"
FORMATS = {"tar": TarLayout, "zip": ZipLayout}
GEOJSON = "geojson"


@dataclasses.dataclass(frozen=True)
class File:
    """One file of the layout, with its checksum (known before any byte is sent)."""

    path: str  # relative to the release folder
    size: int
    sha256: str
    read: Callable[[int, int], bytes]


def release_folder(manifest: Manifest) -> str:
    return f"{manifest.release.dataset_id}-v{manifest.release.version}"


def dicom_path(item: Item) -> str:
    return f"{item.study_uid}/{item.series_uid}/{item.sop_instance_uid}.dcm"


def _released_epoch(manifest: Manifest) -> float:
    return datetime.strptime(manifest.release.released_at, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp()


class ReleaseFiles:
    """The files of a release on this archive: DICOM read from storage, GeoJSON from a cache."""

    def __init__(self, archive, manifest: Manifest, publisher: str):
        self.archive = archive
        self.manifest = manifest
        self.publisher = publisher
        self.folder = release_folder(manifest)
        self.files = self._data_files()
        sums = "".join(f"{f.sha256}  {f.path}\n" for f in self.files).encode()
        body = json.dumps(manifest.to_json(), indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"
        self.head = [("README.txt", self._readme().encode()), ("manifest.json", body), ("SHA256SUMS", sums)]
        digest = hashlib.sha256(LAYOUT_VERSION.encode())
        for name, data in self.head:
            digest.update(f"{name}\n{len(data)}\n".encode() + data)
        self.etag = digest.hexdigest()[:32]
        self.mtime = _released_epoch(manifest)

    # --- the files ---------------------------------------------------------------------

    def _reader(self, item: Item) -> Callable[[int, int], bytes]:
        archive, sop = self.archive, item.sop_instance_uid
        record = archive.catalog.instance(sop, principal=SYSTEM)
        if record is None or record.sha256 != item.sha256:
            raise FileNotFoundError(f"{sop} is no longer stored as released")
        return lambda offset, length: archive.read_range(record, offset, length)

    def _data_files(self) -> list[File]:
        out = []
        for item in self.manifest.available:
            out.append(File(dicom_path(item), item.size, item.sha256, self._reader(item)))
            if item.kind == "annotation":
                geo = self._geojson(item)
                if geo is not None:
                    out.append(geo)
        return out

    def _geojson(self, item: Item) -> File | None:
        """The annotation as GeoJSON (as ``/api/slides/<series>/annotations`` gives it), made once and kept
        under ``<data dir>/cache/geojson`` by the instance's SHA-256: same bytes, same file."""
        folder = self.archive.settings.data_dir / "cache" / GEOJSON
        path = folder / f"{item.sha256}.v{LAYOUT_VERSION}.geojson"
        meta = path.with_suffix(".sha256")
        if not (path.exists() and meta.exists()):
            from archive.results import annotations

            record = self.archive.catalog.instance(item.sop_instance_uid, principal=SYSTEM)
            if record is None:
                return None
            features = list(annotations.iter_features(self.archive.header(record)))
            data = json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"),
                              sort_keys=True).encode()
            folder.mkdir(parents=True, exist_ok=True)
            for target, content in ((path, data), (meta, hashlib.sha256(data).hexdigest().encode())):
                temp = target.with_name(f".{target.name}.{os.getpid()}")
                temp.write_bytes(content)
                os.replace(temp, target)
        sha = meta.read_text().strip()
        size = path.stat().st_size

        def read(offset: int, length: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)

        return File(dicom_path(item)[:-4] + ".geojson", size, sha, read)

    def _readme(self) -> str:
        r = self.manifest.release
        c = r.counts
        files = sum(1 for f in self.files if f.path.endswith(".dcm"))
        withdrawn = len(self.manifest.items) - len(self.manifest.available)
        lines = [
            f"{r.metadata.get('title', r.dataset_id)}",
            f"Release {r.id} ({r.identifier}), released {r.released_at}.",
            "",
            f"Cite as: {metadata.citation(r, self.publisher)}",
            f"Licence: {r.metadata.get('license', '')}",
            f"Terms of use: {r.metadata.get('terms_of_use', '') or '-'}",
            "",
            f"{c.get('slides', 0)} slides of {c.get('cases', 0)} cases; {files} DICOM files in this folder"
            + (f" ({withdrawn} withdrawn instances left out, marked in manifest.json)" if withdrawn else "") + ".",
            "",
            "Layout: <Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.dcm, each file the archive's",
            "stored DICOM Part 10 bytes; annotations also as <SOP Instance UID>.geojson beside them.",
            "manifest.json lists every instance with its size and SHA-256, and the cases with their fields.",
            "Check the files with:  sha256sum -c SHA256SUMS",
            f"manifest digest (docs/datasets.md): {r.manifest_sha256}",
            "",
        ]
        return "\n".join(lines)

    # --- as archives -----------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every file under the release folder, in layout order."""
        out = [from_bytes(f"{self.folder}/{name}", data) for name, data in self.head]
        out += [Member(f"{self.folder}/{f.path}", f.size, f.read, f.sha256) for f in self.files]
        return out

    def layout(self, kind: str, crc_cache: "CrcCache") -> Layout:
        members = self.members()
        if kind == "tar":
            return TarLayout(members, self.mtime)
        return ZipLayout(members, self.mtime, crc_cache.function(members))


def iter_member(member: Member) -> Iterator[bytes]:
    for offset in range(0, member.size, 1 << 20):
        yield member.read(offset, min(1 << 20, member.size - offset))


class CrcCache:
    """CRC-32s of member contents by SHA-256, in the catalog (a zip needs them; reading costs a pass)."""

    def __init__(self, catalog):
        self.catalog = catalog

    def get(self, key: str) -> int | None:
        row = reader(self.catalog).execute("SELECT crc32 FROM bundle_crc WHERE sha256=?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def put(self, key: str, crc: int) -> None:
        with self.catalog.transaction() as db:
            db.execute("INSERT INTO bundle_crc(sha256, crc32) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, crc))

    def function(self, members: list[Member]) -> "Crcs":
        return Crcs(self, members)


class Crcs:
    """The CRC-32 of each member of one archive: remembered while streaming, else cached, else read."""

    def __init__(self, cache: CrcCache, members: list[Member]):
        self.cache, self.members = cache, members
        self.memo: dict[int, int] = {}

    def remember(self, index: int, crc: int) -> None:
        if index not in self.memo:
            self.memo[index] = crc
            if self.members[index].key:
                self.cache.put(self.members[index].key, crc)

    def __call__(self, index: int) -> int:
        if index not in self.memo:
            member = self.members[index]
            found = self.cache.get(member.key) if member.key else None
            if found is None:
                found = 0
                for chunk in iter_member(member):
                    found = zlib.crc32(chunk, found)
                self.remember(index, found)
            self.memo[index] = found
        return self.memo[index]


def describe(files: ReleaseFiles) -> dict[str, Any]:
    """What a client needs to fetch the layout file by file (the command line's plan)."""
    return {"folder": files.folder, "etag": files.etag,
            "files": [{"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                      for name, data in files.head]
                     + [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files.files]}


def stored_path(base: Path, relative: str) -> Path:
    """``base / relative`` for a layout path, refusing anything that would leave ``base``."""
    parts = relative.split("/")
    if not relative or any(p in ("", ".", "..") for p in parts) or relative.startswith("/"):
        raise ValueError(f"not a layout path: {relative[:100]!r}")
    return base.joinpath(*parts)

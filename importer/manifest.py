"""The sidecar manifest: what a repository needs that vendor files lack, per file.

A CSV (header row) or JSON (a list of objects, or ``{"files": [...]}``) with the columns

    file, specimen, stain, anatomy, collection, case_id

``file`` is relative to the manifest's folder; ``stain`` and ``anatomy`` are codes written
``SCHEME:VALUE:Meaning`` (several separated by ``;``), e.g. ``SCT:12710003:hematoxylin stain``.
Every row is checked before anything is converted: a row that names a missing file or
has a malformed code is an error for that file only. Messages name the row and column,
never the value (a case id is an identifier).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

from archive.errors import InvalidManifest

COLUMNS = ("file", "specimen", "stain", "anatomy", "collection", "case_id")
_SCHEME = re.compile(r"SCT|DCM|99[A-Z0-9_]{1,14}")
_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Verhoeff tables (SNOMED CT identifiers end with a Verhoeff check digit).
_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
      [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
      [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
      [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
      [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
      [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


@dataclasses.dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str


@dataclasses.dataclass(frozen=True)
class Entry:
    """One slide's sidecar metadata (every field optional)."""

    specimen: str | None = None
    stains: tuple[Code, ...] = ()
    anatomy: tuple[Code, ...] = ()
    collection: str | None = None
    case_id: str | None = None


@dataclasses.dataclass
class Manifest:
    entries: dict[Path, Entry] = dataclasses.field(default_factory=dict)
    #: file (resolved path, or the row's text when it names no usable file) -> what is wrong
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    def for_file(self, path: Path) -> Entry | None:
        return self.entries.get(path.resolve())

    def error_for(self, path: Path) -> str | None:
        return self.errors.get(str(path.resolve()))


def verhoeff_valid(digits: str) -> bool:
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _D[check][_P[i % 8][int(ch)]]
    return check == 0


def parse_code(text: str, where: str) -> Code:
    parts = text.strip().split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise InvalidManifest(f"{where}: expected SCHEME:VALUE:Meaning")
    scheme, value, meaning = (p.strip() for p in parts)
    if not _SCHEME.fullmatch(scheme):
        raise InvalidManifest(f"{where}: coding scheme must be SCT, DCM or a local 99... designator")
    if len(value) > 16 or len(meaning) > 64 or "\\" in meaning:
        raise InvalidManifest(f"{where}: code value over 16 or meaning over 64 characters")
    if scheme == "SCT" and not (value.isdigit() and 6 <= len(value) <= 18 and verhoeff_valid(value)):
        raise InvalidManifest(f"{where}: not a SNOMED CT identifier (6-18 digits with a valid check digit)")
    if scheme == "DCM" and not value.isdigit():
        raise InvalidManifest(f"{where}: DCM code values are digits")
    return Code(scheme, value, meaning)


def _codes(text: str, where: str) -> tuple[Code, ...]:
    return tuple(parse_code(part, where) for part in text.split(";") if part.strip())


def _text(value: object, where: str, limit: int) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    if len(text) > limit or "\\" in text or not text.isprintable():
        raise InvalidManifest(f"{where}: at most {limit} printable characters, no backslash")
    return text


def entry_from_row(row: dict, where: str) -> Entry:
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise InvalidManifest(f"{where}: unknown column(s) {', '.join(unknown)}; columns are {', '.join(COLUMNS)}")
    collection = _text(row.get("collection"), f"{where} collection", 64)
    if collection is not None and not _COLLECTION.fullmatch(collection):
        raise InvalidManifest(f"{where} collection: letters, digits, '_', '.', '-'")
    return Entry(specimen=_text(row.get("specimen"), f"{where} specimen", 64),
                 stains=_codes(str(row.get("stain") or ""), f"{where} stain"),
                 anatomy=_codes(str(row.get("anatomy") or ""), f"{where} anatomy"),
                 collection=collection,
                 case_id=_text(row.get("case_id"), f"{where} case_id", 64))


def _rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidManifest(f"manifest {path.name}: cannot read it ({type(e).__name__})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidManifest(f"manifest {path.name}: not valid JSON (line {e.lineno})") from None
        rows = data.get("files") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InvalidManifest(f"manifest {path.name}: expected a list of objects or {{\"files\": [...]}}")
        return rows
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "file" not in reader.fieldnames:
        raise InvalidManifest(f"manifest {path.name}: the first row must name the columns, including 'file'")
    return [{k: v for k, v in row.items() if k is not None} for row in reader]


def load(path: Path) -> Manifest:
    """Read and check every row; a whole-file problem raises InvalidManifest, a row problem is kept per file."""
    manifest = Manifest()
    base = path.resolve().parent
    for n, row in enumerate(_rows(path), start=2 if path.suffix.lower() != ".json" else 1):
        where = f"manifest {path.name} row {n}"
        name = str(row.get("file") or "").strip()
        if not name:
            manifest.errors[f"{where}"] = f"{where}: no file named"
            continue
        target = (base / name).resolve()
        key = str(target)
        if not target.is_file():
            manifest.errors[key] = f"{where}: the file it names does not exist"
            continue
        if target in manifest.entries or key in manifest.errors:
            manifest.errors[key] = f"{where}: the file appears in more than one row"
            manifest.entries.pop(target, None)
            continue
        try:
            manifest.entries[target] = entry_from_row(row, where)
        except InvalidManifest as e:
            manifest.errors[key] = e.message
    return manifest

"""A dataset's definition: its fields, checked at the door, and the rows that hold them.

Every write validates everything first and then changes the rows in one
transaction, so a bad request changes nothing. Messages name the field that was
wrong, never a stored value.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Mapping

from archive.auth.access import SYSTEM, Principal
from archive.catalog import scope
from archive.errors import Conflict, InvalidRequest, NotFound

from .schema import now, reader

ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
SPDX = re.compile(r"(LicenseRef-)?[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")
URL = re.compile(r"https?://[^\s<>\"]{1,500}")
ORCID = re.compile(r"(?:https://orcid\.org/)?(\d{4}-\d{4}-\d{4}-\d{3}[\dX])")
ROLES = ("creator", "contributor")
#: Per-case clinical fields a dataset may carry (docs/datasets.md: what de-identification lets through).
CLINICAL_FIELDS = ("diagnosis", "age_band", "sex", "anatomic_site")
SEXES = ("F", "M", "O", "U")
AGE_BAND = re.compile(r"\d{1,2}-\d{1,2}|90\+")
MAX_TEXT = 10_000
MAX_KEYWORDS = 50
MAX_CONTRIBUTORS = 200


@dataclasses.dataclass(frozen=True)
class Contributor:
    name: str
    affiliation: str | None = None
    orcid: str | None = None  # the bare identifier, 0000-0002-1825-0097
    role: str = "creator"  # creator (an author of the dataset) or contributor

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Dataset:
    id: str
    title: str
    description: str
    license: str  # an SPDX identifier or a URL
    terms_of_use: str
    contributors: tuple[Contributor, ...]
    keywords: tuple[str, ...]
    search: str | None  # a saved /api/search query string
    collection: str | None  # every series of this collection
    created_at: str
    updated_at: str
    created_by: str

    @property
    def creators(self) -> tuple[Contributor, ...]:
        return tuple(c for c in self.contributors if c.role == "creator")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["contributors"] = [c.to_json() for c in self.contributors]
        out["keywords"] = list(self.keywords)
        return out


# --- validation ---------------------------------------------------------------------

def _text(body: Mapping[str, Any], name: str, required: bool, limit: int = MAX_TEXT) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidRequest(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise InvalidRequest(f"{name} is longer than {limit} characters")
    if not value.isprintable() and not all(ch.isprintable() or ch in "\n\t" for ch in value):
        raise InvalidRequest(f"{name} holds control characters")
    return value


#: Paths under /api/datasets that are not datasets (datasets/access_api.py).
RESERVED_IDS = frozenset({"applications", "grants", "visas"})


def check_id(value: Any) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise InvalidRequest("id must be 2-63 characters of a-z, 0-9 and '-', starting with a letter or digit")
    if value in RESERVED_IDS:
        raise InvalidRequest(f"id {value!r} is reserved (it names an API path under /api/datasets)")
    return value


def check_license(value: str) -> str:
    if not (SPDX.fullmatch(value) or URL.fullmatch(value)):
        raise InvalidRequest("license must be an SPDX identifier (e.g. CC-BY-4.0) or an http(s) URL")
    return value


def _orcid(value: Any) -> str | None:
    if value in (None, ""):
        return None
    m = ORCID.fullmatch(str(value).strip())
    if not m:
        raise InvalidRequest("orcid must look like 0000-0002-1825-0097")
    digits = m.group(1).replace("-", "")
    total = 0
    for d in digits[:-1]:
        total = (total + int(d)) * 2
    check = (12 - total % 11) % 11
    if digits[-1] != ("X" if check == 10 else str(check)):
        raise InvalidRequest("orcid has a wrong check digit")
    return m.group(1)


def check_contributors(value: Any) -> tuple[Contributor, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("contributors is required: a list of {name, affiliation, orcid, role}")
    if len(value) > MAX_CONTRIBUTORS:
        raise InvalidRequest(f"at most {MAX_CONTRIBUTORS} contributors")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise InvalidRequest(f"contributors[{i}] must be an object with a name")
        unknown = set(item) - {"name", "affiliation", "orcid", "role"}
        if unknown:
            raise InvalidRequest(f"contributors[{i}]: unknown field {sorted(unknown)[0][:40]!r}")
        role = item.get("role") or "creator"
        if role not in ROLES:
            raise InvalidRequest(f"contributors[{i}].role must be one of {', '.join(ROLES)}")
        out.append(Contributor(_text(item, "name", True, 300), _text(item, "affiliation", False, 300),
                               _orcid(item.get("orcid")), role))
    if not any(c.role == "creator" for c in out):
        raise InvalidRequest("contributors needs at least one creator (the dataset's authors, cited by name)")
    return tuple(out)


def check_keywords(value: Any) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("keywords must be a list of strings")
    words = tuple(dict.fromkeys(v.strip() for v in value if v.strip()))
    if len(words) > MAX_KEYWORDS or any(len(w) > 100 for w in words):
        raise InvalidRequest(f"at most {MAX_KEYWORDS} keywords of at most 100 characters")
    return words


def check_search(value: str | None) -> str | None:
    """A saved search is an /api/search query string; it must parse now, not at release time."""
    if value is None:
        return None
    from urllib.parse import parse_qsl

    from indexer.search import BadQuery, parse_search

    value = value.lstrip("?")
    pairs = parse_qsl(value, keep_blank_values=True)
    if not pairs:
        raise InvalidRequest("search must be an /api/search query string, e.g. stain=HE&collection=skin")
    if any(k in ("page", "size", "sort", "facet", "facets", "facet_size") for k, _ in pairs):
        raise InvalidRequest("search takes filters only (no page, size, sort or facet)")
    try:
        parse_search(pairs)
    except BadQuery as e:
        raise InvalidRequest(f"search: {e}") from None
    return value


FIELDS = ("id", "title", "description", "license", "terms_of_use", "contributors", "keywords", "search",
          "collection")


def _checked(body: Mapping[str, Any], partial: bool) -> dict[str, Any]:
    unknown = set(body) - set(FIELDS) - {"series"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0][:40]!r}; fields: {', '.join(FIELDS)}, series")
    out: dict[str, Any] = {}
    want = (lambda name: name in body) if partial else (lambda name: True)
    if want("title"):
        out["title"] = _text(body, "title", True, 300)
    if want("description"):
        out["description"] = _text(body, "description", True)
    if want("license"):
        out["license"] = check_license(_text(body, "license", True, 500))
    if want("terms_of_use"):
        out["terms_of_use"] = _text(body, "terms_of_use", False) or ""
    if want("contributors"):
        out["contributors"] = check_contributors(body.get("contributors"))
    if want("keywords"):
        out["keywords"] = check_keywords(body.get("keywords"))
    if want("search"):
        out["search"] = check_search(_text(body, "search", False, 2000))
    if want("collection"):
        out["collection"] = _text(body, "collection", False, 64)
    return out


def check_case(row: Mapping[str, Any]) -> dict[str, str | None]:
    """Curator-supplied clinical fields of one case: short coded-ish values, nothing else."""
    unknown = set(row) - {"patient_id", *CLINICAL_FIELDS}
    if unknown:
        raise InvalidRequest(f"cases: unknown field {sorted(unknown)[0][:40]!r}; fields: patient_id, "
                             + ", ".join(CLINICAL_FIELDS))
    out = {"patient_id": _text(row, "patient_id", True, 64)}
    for name in CLINICAL_FIELDS:
        out[name] = _text(row, name, False, 200)
    if out["sex"] is not None and out["sex"] not in SEXES:
        raise InvalidRequest(f"cases: sex must be one of {', '.join(SEXES)} (DICOM Patient's Sex)")
    if out["age_band"] is not None and not AGE_BAND.fullmatch(out["age_band"]):
        raise InvalidRequest("cases: age_band must be a decade such as 60-69, or 90+")
    return out


# --- rows -----------------------------------------------------------------------------

_COLUMNS = ("id", "title", "description", "license", "terms_of_use", "contributors", "keywords", "search",
            "collection", "created_at", "updated_at", "created_by")


def _row_values(values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "contributors" in out:
        out["contributors"] = json.dumps([c.to_json() for c in out["contributors"]], ensure_ascii=False)
    if "keywords" in out:
        out["keywords"] = json.dumps(list(out["keywords"]), ensure_ascii=False)
    return out


def _from_row(row) -> Dataset:
    values = dict(zip(_COLUMNS, row))
    values["contributors"] = tuple(Contributor(**c) for c in json.loads(values["contributors"]))
    values["keywords"] = tuple(json.loads(values["keywords"]))
    return Dataset(**values)


def _collection_exists(db, name: str) -> None:
    if db.execute("SELECT 1 FROM collection WHERE name=?", (name,)).fetchone() is None:
        raise NotFound(f"no collection named {name[:64]!r}")


def create(catalog, body: Mapping[str, Any], created_by: str, principal: Principal = SYSTEM) -> Dataset:
    """A new dataset from a JSON-like body (FIELDS, plus ``series``: UIDs to add); 400/404/409 on bad input."""
    dataset_id = check_id(body.get("id"))
    values = _checked(body, partial=False)
    series = check_uids(body.get("series") or [])
    stamp = now()
    values.update(id=dataset_id, created_at=stamp, updated_at=stamp, created_by=created_by[:200])
    with catalog.transaction() as db:
        if db.execute("SELECT 1 FROM dataset WHERE id=?", (dataset_id,)).fetchone():
            raise Conflict(f"a dataset with id {dataset_id!r} exists already")
        if values["collection"]:
            _collection_exists(db, values["collection"])
        _require_series(db, series, principal)
        row = _row_values(values)
        db.execute(f"INSERT INTO dataset({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                   [row[c] for c in _COLUMNS])
        _set_series(db, dataset_id, series, included=1)
    return get(catalog, dataset_id)


def update(catalog, dataset_id: str, body: Mapping[str, Any], principal: Principal = SYSTEM) -> Dataset:
    """Change some fields (those present in ``body``); releases made before keep what they froze."""
    if "id" in body and body["id"] != dataset_id:
        raise InvalidRequest("id cannot be changed")
    values = _checked({k: v for k, v in body.items() if k != "id"}, partial=True)
    series = check_uids(body.get("series") or [])
    with catalog.transaction() as db:
        _exists(db, dataset_id)
        if values.get("collection"):
            _collection_exists(db, values["collection"])
        _require_series(db, series, principal)
        if values:
            row = _row_values(values)
            row["updated_at"] = now()
            db.execute(f"UPDATE dataset SET {', '.join(f'{c}=?' for c in row)} WHERE id=?",
                       [*row.values(), dataset_id])
        _set_series(db, dataset_id, series, included=1)
    return get(catalog, dataset_id)


def get(catalog, dataset_id: str) -> Dataset:
    row = reader(catalog).execute(f"SELECT {','.join(_COLUMNS)} FROM dataset WHERE id=?", (dataset_id,)).fetchone()
    if row is None:
        raise NotFound(f"no dataset {dataset_id[:64]!r}")
    return _from_row(row)


def list_datasets(catalog, text: str | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[Dataset]]:
    """Datasets whose title, description, keywords or contributors contain every word of ``text``."""
    conds, params = words_like(text, ("title", "description", "keywords", "contributors", "id"))
    where = f"WHERE {' AND '.join(conds)}" if conds else ""
    db = reader(catalog)
    total = db.execute(f"SELECT count(*) FROM dataset {where}", params).fetchone()[0]
    rows = db.execute(f"SELECT {','.join(_COLUMNS)} FROM dataset {where} ORDER BY id LIMIT ? OFFSET ?",
                      [*params, limit, offset]).fetchall()
    return total, [_from_row(r) for r in rows]


def words_like(text: str | None, columns: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """SQL conditions: every word of ``text`` occurs (case-insensitively) in one of ``columns``."""
    conds, params = [], []
    for word in (text or "").lower().split()[:10]:
        like = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conds.append("(" + " OR ".join(f"lower({c}) LIKE ? ESCAPE '\\'" for c in columns) + ")")
        params += [like] * len(columns)
    return conds, params


def add_series(catalog, dataset_id: str, uids: Iterable[str], principal: Principal = SYSTEM) -> int:
    """Name series by hand (each stored, and curatable by ``principal``); returns how many were new."""
    uids = check_uids(list(uids), required=True)
    with catalog.transaction() as db:
        _exists(db, dataset_id)
        _require_series(db, uids, principal)
        return _set_series(db, dataset_id, uids, included=1)


def remove_series(catalog, dataset_id: str, uids: Iterable[str]) -> int:
    """Take series out: off the hand-made list, and kept out of what the search or collection chooses."""
    uids = check_uids(list(uids), required=True)
    with catalog.transaction() as db:
        _exists(db, dataset_id)
        return _set_series(db, dataset_id, uids, included=0)


def listed_series(catalog, dataset_id: str) -> tuple[list[str], list[str]]:
    """(series added by hand, series taken out), in the order they were named."""
    rows = reader(catalog).execute("SELECT series_uid, included FROM dataset_series WHERE dataset_id=? "
                                   "ORDER BY series_uid", (dataset_id,)).fetchall()
    return [r[0] for r in rows if r[1]], [r[0] for r in rows if not r[1]]


def set_cases(catalog, dataset_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Curator-supplied clinical fields per case (replacing earlier values for the same case)."""
    checked = [check_case(r) for r in rows]
    if not checked:
        raise InvalidRequest("cases: give at least one row with patient_id and a clinical field")
    with catalog.transaction() as db:
        _exists(db, dataset_id)
        for row in checked:
            db.execute("DELETE FROM dataset_case WHERE dataset_id=? AND patient_id=?",
                       (dataset_id, row["patient_id"]))
            db.execute("INSERT INTO dataset_case(dataset_id, patient_id, diagnosis, age_band, sex, anatomic_site) "
                       "VALUES (?,?,?,?,?,?)", (dataset_id, row["patient_id"], *(row[f] for f in CLINICAL_FIELDS)))
    return len(checked)


def cases(catalog, dataset_id: str) -> dict[str, dict[str, str | None]]:
    rows = reader(catalog).execute("SELECT patient_id, diagnosis, age_band, sex, anatomic_site FROM dataset_case "
                                   "WHERE dataset_id=?", (dataset_id,)).fetchall()
    return {r[0]: dict(zip(CLINICAL_FIELDS, r[1:])) for r in rows}


# --- helpers -------------------------------------------------------------------------

UID = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_SERIES_PER_REQUEST = 100_000


def check_uids(value: Any, required: bool = False) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("series must be a list of Series Instance UIDs")
    if required and not value:
        raise InvalidRequest("give at least one Series Instance UID")
    if len(value) > MAX_SERIES_PER_REQUEST:
        raise InvalidRequest(f"at most {MAX_SERIES_PER_REQUEST} series per request")
    for uid in value:
        if len(uid) > 64 or not UID.fullmatch(uid):
            raise InvalidRequest("a Series Instance UID is digits and dots, at most 64 characters")
    return list(dict.fromkeys(value))


def _exists(db, dataset_id: str) -> None:
    if db.execute("SELECT 1 FROM dataset WHERE id=?", (dataset_id,)).fetchone() is None:
        raise NotFound(f"no dataset {dataset_id[:64]!r}")


def _require_series(db, uids: list[str], principal: Principal) -> None:
    """Each series is stored and within what ``principal`` may curate (else it is "not found" to them)."""
    cond, params = scope(principal, "curator")
    missing = [u for u in uids if db.execute(
        f"SELECT 1 FROM series se JOIN study st ON se.study_fk=st.pk WHERE se.series_instance_uid=? AND {cond}",
        (u, *params)).fetchone() is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotFound(f"no series {missing[0]} in the archive{more}")


def _set_series(db, dataset_id: str, uids: list[str], included: int) -> int:
    changed = 0
    for uid in uids:
        row = db.execute("SELECT included FROM dataset_series WHERE dataset_id=? AND series_uid=?",
                         (dataset_id, uid)).fetchone()
        if row is None:
            db.execute("INSERT INTO dataset_series(dataset_id, series_uid, included) VALUES (?,?,?)",
                       (dataset_id, uid, included))
            changed += 1
        elif row[0] != included:
            db.execute("UPDATE dataset_series SET included=? WHERE dataset_id=? AND series_uid=?",
                       (included, dataset_id, uid))
            changed += 1
    if changed:
        db.execute("UPDATE dataset SET updated_at=? WHERE id=?", (now(), dataset_id))
    return changed

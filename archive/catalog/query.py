"""The query model shared by QIDO-RS and C-FIND, and its translation to SQL.

Matching follows PS3.4 C.2.2.2: single value, universal (empty or ``*``),
wildcard (``*``, ``?``), UID list, range (DA, TM, DT), empty-value (``""``),
and for person names case-insensitive matching, with ``fuzzymatching`` adding
a prefix match on each name component.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from archive.catalog.attributes import DEFAULT_RETURN, KEYS, LEVELS, Key, keyword_of
from archive.errors import InvalidRequest
from archive.uids import check_uid
from archive.catalog.database import Dialect

MAX_LIMIT = 10000
_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
#: C0 control characters no DICOM string value holds (PS3.5 6.1.2.3): all but ESC (ISO 2022
#: escapes) and the TAB, LF, FF and CR that text VRs allow. PostgreSQL refuses NUL in a text value.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}


@dataclasses.dataclass(frozen=True)
class Match:
    key: Key
    kind: str  # single | wildcard | list | range | empty
    values: tuple[str, ...]


@dataclasses.dataclass
class Query:
    level: str  # study | series | instance
    matches: list[Match] = dataclasses.field(default_factory=list)
    includefield: set[str] | None = None  # None: defaults only; {"all"}: everything
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False

    def returned(self) -> set[str] | None:
        """Keywords to return, or None for all."""
        if self.includefield is not None and "all" in self.includefield:
            return None
        keys = set(DEFAULT_RETURN[self.level])
        for lvl in ("study", "series"):
            if LEVELS.index(lvl) < LEVELS.index(self.level):
                keys |= {"StudyInstanceUID"} if lvl == "study" else {"SeriesInstanceUID"}
        keys |= {m.key.keyword for m in self.matches}
        return keys | (self.includefield or set())


def _normalize_time(value: str) -> str:
    value = value.replace(":", "")
    if not _TM.fullmatch(value):
        raise InvalidRequest("time values must be HHMMSS.FFFFFF (or a prefix of it)")
    return value


def _check_date(value: str) -> str:
    value = value.replace(".", "") if len(value) == 10 else value  # tolerate ACR-NEMA yyyy.mm.dd
    if not _DA.fullmatch(value):
        raise InvalidRequest("date values must be YYYYMMDD")
    return value


def _check_value(key: Key, value: str) -> str:
    if key.vr == "DA":
        return _check_date(value)
    if key.vr == "TM":
        return _normalize_time(value)
    if key.vr == "UI":
        return check_uid(value, key.keyword)
    if key.vr in ("IS", "US", "UL"):
        if not re.fullmatch(r"[+-]?\d+", value.strip()):
            raise InvalidRequest(f"{key.keyword} takes an integer")
        return str(int(value))
    if len(value) > 256:
        raise InvalidRequest(f"value for {key.keyword} is too long")
    return value


def check_text(name: str, value: str) -> None:
    """Refuse a value holding a control character that no DICOM string holds (never quoting it)."""
    if bad := _CONTROL_CHARACTER.search(value):
        raise InvalidRequest(f"{name}: control character U+{ord(bad.group()):04X} is not allowed")


def parse_match(key: Key, raw: str) -> Match | None:
    """One key's value into a Match; None for universal matching."""
    if raw in ("", "*"):
        return None
    if raw == '""':
        return Match(key, "empty", ())
    if key.vr == "UI":
        parts = [p for p in re.split(r"[,\\]", raw) if p]
        return Match(key, "list" if len(parts) > 1 else "single", tuple(check_uid(p, key.keyword) for p in parts))
    check_text(key.keyword, raw)
    if key.vr in ("DA", "TM", "DT") and "-" in raw:
        low, _, high = raw.partition("-")
        if "-" in high or (not low and not high):
            raise InvalidRequest(f"{key.keyword}: a range is LOW-HIGH, -HIGH or LOW-")
        low = _check_value(key, low) if low else ""
        high = _check_value(key, high) if high else ""
        if low and high and low > high:
            raise InvalidRequest(f"{key.keyword}: range start is after its end")
        return Match(key, "range", (low, high))
    if "\\" in raw and key.vr not in ("PN",):
        return Match(key, "list", tuple(_check_value(key, p) for p in raw.split("\\") if p))
    if ("*" in raw or "?" in raw) and key.vr not in ("DA", "TM", "DT", "IS", "US", "UL"):
        return Match(key, "wildcard", (raw,))
    return Match(key, "single", (_check_value(key, raw),))


def _key_for(name: str, level: str) -> Key:
    keyword = keyword_of(name)
    if keyword is None:
        raise InvalidRequest(f"unknown query key {name[:64]!r}: not a DICOM keyword or tag")
    key = KEYS.get(keyword)
    if key is None:
        raise InvalidRequest(f"matching on {keyword} is not supported; supported keys: {', '.join(sorted(KEYS))}")
    if LEVELS.index(key.level) > LEVELS.index(level):
        raise InvalidRequest(f"{keyword} is an attribute of the {key.level} level and cannot be matched in "
                             f"a {level} query")
    return key


def _includefields(values: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name == "all":
                out.add("all")
                continue
            keyword = keyword_of(name)
            if keyword is None:
                raise InvalidRequest(f"includefield {name[:64]!r} is not a DICOM keyword or tag")
            out.add(keyword)
    return out


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    if not low <= n <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return n


def parse_qido(level: str, params: Iterable[tuple[str, str]]) -> Query:
    """Build a Query from decoded (name, value) pairs of a QIDO-RS request."""
    query = Query(level)
    includes: list[str] = []
    keys: dict[str, str] = {}  # keyword -> raw value; repeated UID keys form a list
    for name, value in params:
        if name == "limit":
            query.limit = _int_param("limit", value, 0, MAX_LIMIT)
        elif name == "offset":
            query.offset = _int_param("offset", value, 0, 1 << 40)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise InvalidRequest("fuzzymatching must be true or false")
            query.fuzzy = value == "true"
        elif name == "includefield":
            includes.append(value)
        elif name in _CONTROL:
            raise InvalidRequest(f"query parameter {name} is not supported")
        else:
            if "." in name:
                raise InvalidRequest(f"sequence matching ({name[:64]}) is not supported")
            key = _key_for(name, level)
            if key.keyword in keys:
                if key.vr != "UI":
                    raise InvalidRequest(f"{key.keyword} is given more than once (only UIDs take a list)")
                keys[key.keyword] = keys[key.keyword] + "\\" + value
            else:
                keys[key.keyword] = value
    for keyword, value in keys.items():
        match = parse_match(KEYS[keyword], value)
        if match is not None:
            query.matches.append(match)
    if includes:
        query.includefield = _includefields(includes)
    return query


# --- SQL ---------------------------------------------------------------------

TABLE_ALIAS = {"patient": "p", "study": "st", "series": "se", "instance": "i"}


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]])", r"[\1]", text)


def _wildcard_to_glob(text: str) -> str:
    return _glob_escape(text)  # * and ? already mean the same in GLOB


def _column(key: Key, dialect: Dialect) -> str:
    if key.keyword == "ModalitiesInStudy":
        return f"(SELECT {dialect.group_concat('x.modality', chr(92))} FROM series x WHERE x.study_fk = st.pk)"
    return f"{TABLE_ALIAS[key.level]}.{key.column}"


def match_sql(m: Match, fuzzy: bool, dialect: Dialect) -> tuple[str, list]:
    """SQL condition and parameters for one Match (GLOB patterns in ``dialect``'s syntax)."""
    col = _column(m.key, dialect)
    key = m.key
    if m.kind == "empty":
        return f"({col} IS NULL OR {col} = '')", []
    if key.multi:
        wrapped = f"('\\' || {col} || '\\')"
        parts = [dialect.glob(wrapped) for _ in m.values]
        glob = [f"*\\{_glob_escape(v) if m.kind != 'wildcard' else _wildcard_to_glob(v)}\\*" for v in m.values]
        return "(" + " OR ".join(parts) + ")", [dialect.glob_pattern(g) for g in glob]
    if key.vr in ("IS", "US", "UL"):
        placeholders = ",".join("?" * len(m.values))
        return f"{col} IN ({placeholders})", [int(v) for v in m.values]
    if m.kind == "range":
        low, high = m.values
        conds, params = [], []
        if low:
            conds.append(f"{col} >= ?")
            params.append(low)
        if high:
            conds.append(f"{col} <= ?")
            # An upper bound that is a prefix (a time "10") includes everything it covers.
            params.append(high + ("\uffff" if key.vr in ("TM", "DT") else ""))
        return "(" + " AND ".join(conds) + ")", params
    if key.vr == "PN":
        return _person_name(col, m, fuzzy, dialect)
    if m.kind == "wildcard":
        return dialect.glob(col), [dialect.glob_pattern(_wildcard_to_glob(m.values[0]))]
    placeholders = ",".join("?" * len(m.values))
    return f"{col} IN ({placeholders})", list(m.values)


def _person_name(col: str, m: Match, fuzzy: bool, dialect: Dialect) -> tuple[str, list]:
    """Case-insensitive; fuzzy also matches the start of any name component."""
    value = m.values[0].lower()
    pattern = _wildcard_to_glob(value) if m.kind == "wildcard" else _glob_escape(value)
    glob = dialect.glob(f"lower({col})")
    if not fuzzy:
        return glob, [dialect.glob_pattern(pattern)]
    return (f"({glob} OR {glob} OR {glob})",
            [dialect.glob_pattern(p) for p in (pattern + "*", "*^" + pattern + "*", "* " + pattern + "*")])

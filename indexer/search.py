"""The search request model shared by both backends and the HTTP API.

Parsing and validation live here, once, so both backends receive only
requests they can answer and a bad request becomes one 400 with a message.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable

from .documents import FIELD_BY_NAME, FIELDS, NAME_STARTS

MAX_SIZE = 100
MAX_WINDOW = 10_000  # page * size beyond this is refused: deep paging needs search_after, not offsets
MAX_FACET_SIZE = 100
MAX_TERMS = 20
# Single-valued fields (one value per document) are the only sort keys, so that both
# backends order identically (multi-valued sort semantics differ between engines).
SORTABLE = ("series_uid", "study_uid", "collection", "study.date", "magnification", "pixel_spacing_um",
            "pyramid.width", "pyramid.height", "pyramid.level_count", "scanner.manufacturer", "scanner.model",
            "ai.annotation_count", "patient.age_years", "instance_count", "kind")
FILTERABLE = tuple(f.name for f in FIELDS if f.type != "text" and not f.name.startswith("qido."))
FACETABLE = tuple(f.name for f in FIELDS if f.facet)
_TOKEN = re.compile(r"\w+", re.UNICODE)


STAIN_FIELD = "specimen.stain_codes"
# What people type for a stain, as the SNOMED codes slides carry (DICOM CID 8112 "Pathology
# Stains"). A combined stain names every code it needs: HE matches slides with both.
_HEMATOXYLIN, _EOSIN = "SCT:12710003", "SCT:36879007"
STAIN_NAMES: dict[str, tuple[str, ...]] = {
    "he": (_HEMATOXYLIN, _EOSIN), "h&e": (_HEMATOXYLIN, _EOSIN), "h-e": (_HEMATOXYLIN, _EOSIN),
    "hematoxylin and eosin": (_HEMATOXYLIN, _EOSIN), "haematoxylin and eosin": (_HEMATOXYLIN, _EOSIN),
    "hematoxylin": (_HEMATOXYLIN,), "haematoxylin": (_HEMATOXYLIN,), "hematoxylin stain": (_HEMATOXYLIN,),
    "eosin": (_EOSIN,), "water soluble eosin stain": (_EOSIN,),
}
_CODE = re.compile(r"(?:([A-Za-z][A-Za-z0-9-]*):)?([0-9A-Za-z.-]+)")


def stain_codes(raw: str) -> tuple[str, ...]:
    """``stain=`` as the codes a slide must carry: a name (HE, H&E, hematoxylin, eosin) or a code.

    A code is ``SCHEME:VALUE`` as indexed, or a bare SNOMED code value (``12710003``).
    """
    name = " ".join(raw.lower().split())
    if name in STAIN_NAMES:
        return STAIN_NAMES[name]
    m = _CODE.fullmatch(raw.strip())
    if m and (m.group(1) or m.group(2).isdigit()):
        return (f"{(m.group(1) or 'SCT').upper()}:{m.group(2)}",)
    raise BadQuery(f"unknown stain {raw[:40]!r}: give a name ({', '.join(sorted(STAIN_NAMES)[:6])}, ...), "
                   f"a code such as SCT:12710003, or search stain names as free text with q=")


class BadQuery(ValueError):
    """A search the index cannot answer; the message tells the caller what to change (HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class Range:
    gte: Any = None
    lte: Any = None


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    text: tuple[str, ...] = ()  # free-text tokens, all must match
    terms: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # field -> any of the values; pairs are ANDed
    ranges: tuple[tuple[str, Range], ...] = ()
    facets: tuple[str, ...] = ()
    facet_size: int = 10
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending); empty: relevance, then series_uid
    page: int = 1
    size: int = 20
    include_all_kinds: bool = False  # default: slides only
    #: Access control: only documents of these collections exist for the search (None: all).
    collections: tuple[str, ...] | None = None

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


@dataclasses.dataclass
class SearchResult:
    total: int
    hits: list[dict[str, Any]]
    facets: dict[str, list[dict[str, Any]]]

    def to_json(self, request: SearchRequest) -> dict[str, Any]:
        return {"total": self.total, "page": request.page, "size": request.size,
                "hits": self.hits, "facets": self.facets}


def tokens(text: str) -> tuple[str, ...]:
    return tuple(t.lower() for t in _TOKEN.findall(text or ""))[:32]


def coerce(field: str, raw: str) -> Any:
    """A query-string value as the field's type; BadQuery when it does not parse."""
    kind = FIELD_BY_NAME[field].type
    try:
        number = int(raw) if kind == "integer" else float(raw) if kind == "float" else None
    except ValueError:
        raise BadQuery(f"{field} takes a number, got {raw[:40]!r}") from None
    # What both indexes hold: a 64-bit integer (Elasticsearch's long, SQLite's INTEGER), a finite double.
    if kind == "integer" and not -2 ** 63 <= number < 2 ** 63:
        raise BadQuery(f"{field} takes a 64-bit integer")
    if kind == "float" and not math.isfinite(number):
        raise BadQuery(f"{field} takes a finite number")
    if number is not None:
        return number
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            raise BadQuery(f"{field} takes true or false")
        return raw.lower() == "true"
    if kind == "date":
        if not re.fullmatch(r"\d{8}", raw):
            raise BadQuery(f"{field} takes a date as YYYYMMDD")
        return raw
    if len(raw) > 256:
        raise BadQuery(f"value for {field} is too long")
    return raw


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}")
    return value


def parse_search(params: Iterable[tuple[str, str]]) -> SearchRequest:
    """Build a SearchRequest from query-string pairs (see docs/search-openapi.yaml)."""
    text: tuple[str, ...] = ()
    terms: dict[str, list[Any]] = {}
    ranges: dict[str, Range] = {}
    facets: list[str] = []
    sort: list[tuple[str, bool]] = []
    options: dict[str, Any] = {}
    required: list[tuple[str, tuple[Any, ...]]] = []  # each pair must match (AND), e.g. both codes of HE
    for name, raw in params:
        if name == "q":
            text += tokens(raw)
        elif name == "stain":
            required += [(STAIN_FIELD, (code,)) for code in stain_codes(raw)]
        elif name in ("facet", "facets"):
            for f in filter(None, (x.strip() for x in raw.split(","))):
                if f not in FACETABLE:
                    raise BadQuery(f"cannot facet on {f[:64]!r}; facets: {', '.join(FACETABLE)}")
                if f not in facets:
                    facets.append(f)
        elif name == "sort":
            for s in filter(None, (x.strip() for x in raw.split(","))):
                desc = s.startswith("-")
                field = s.lstrip("-+")
                if field not in SORTABLE:
                    raise BadQuery(f"cannot sort on {field[:64]!r}; sortable: {', '.join(SORTABLE)}")
                sort.append((field, desc))
        elif name == "page":
            options["page"] = _int("page", raw, 1, MAX_WINDOW)
        elif name == "size":
            options["size"] = _int("size", raw, 0, MAX_SIZE)
        elif name == "facet_size":
            options["facet_size"] = _int("facet_size", raw, 1, MAX_FACET_SIZE)
        elif name == "kind" and raw == "any":
            options["include_all_kinds"] = True
        elif name.endswith((".gte", ".lte", "_gte", "_lte")) and name[:-4] in FILTERABLE:
            field, bound = name[:-4], name[-3:]
            if FIELD_BY_NAME[field].type not in ("integer", "float", "date", "keyword"):
                raise BadQuery(f"{field} does not take a range")
            old = ranges.get(field, Range())
            value = coerce(field, raw)
            ranges[field] = dataclasses.replace(old, **{bound: value})
        elif name in FILTERABLE:
            values = terms.setdefault(name, [])
            for part in raw.split(",") if FIELD_BY_NAME[name].type != "keyword" or name.endswith("_uid") else [raw]:
                values.append(coerce(name, part))
            if len(values) > MAX_TERMS:
                raise BadQuery(f"at most {MAX_TERMS} values for {name}")
        else:
            raise BadQuery(f"unknown parameter {name[:64]!r}; filters: {', '.join(FILTERABLE)}")
    request = SearchRequest(text=text, terms=tuple((k, tuple(v)) for k, v in terms.items()) + tuple(required),
                            ranges=tuple(ranges.items()), facets=tuple(facets), sort=tuple(sort), **options)
    if request.page * request.size > MAX_WINDOW:
        raise BadQuery(f"page * size may not exceed {MAX_WINDOW}; narrow the query with filters instead")
    if "kind" in terms:
        request = dataclasses.replace(request, include_all_kinds=True)
    return request


#: What a search hit never shows: the raw QIDO keys and the ES backend's name starts (patient names).
PRIVATE_ROOTS = ("qido", NAME_STARTS)


def public_hit(doc: dict[str, Any]) -> dict[str, Any]:
    """What a search hit shows: the document without the QIDO keys."""
    return {k: v for k, v in doc.items() if k not in PRIVATE_ROOTS}

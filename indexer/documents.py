"""One search document per series, built from that series' instance headers.

A pure function of pydicom Datasets (headers without pixel data), so it is
tested without a catalog or an index. The field table (FIELDS) is the single
definition both backends map from; bump MAPPING_VERSION whenever a field is
added or changes type, so ``reindex`` builds a new index instead of mixing.

Patient identifiers: only what survives de-identification (the PatientID
pseudonym, sex, age) is searchable as text; the QIDO keys are kept in
``qido.*`` exactly as the catalog stores them so study/series queries can be
answered from the index with the catalog's matching rules.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from .parts import SeriesParts

# 2: collections (every collection of the study, for access control); 3: species, specimen type;
# 4: name_starts (Elasticsearch only: fuzzy person-name QIDO as a prefix query, indexer/qido.py)
MAPPING_VERSION = 4
NAME_STARTS = "name_starts"  # where the ES backend indexes each person name's starts (qido.name_starts)

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
ANN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.91.1"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"



@dataclass(frozen=True)
class Field:
    """A document field: its type decides the ES mapping and the embedded table it lands in."""

    name: str  # dotted path in the document
    type: str  # keyword | text | date | integer | float | boolean
    facet: bool = False  # may be asked for counts in /api/search


FIELDS: tuple[Field, ...] = (
    Field("series_uid", "keyword"),
    Field("study_uid", "keyword"),
    Field("kind", "keyword", facet=True),
    Field("collection", "keyword", facet=True),
    Field("collections", "keyword"),
    Field("sop_classes", "keyword"),
    Field("instance_count", "integer"),
    Field("patient.id", "keyword"),
    Field("patient.sex", "keyword", facet=True),
    Field("patient.age", "keyword", facet=True),
    Field("patient.age_years", "integer"),
    Field("patient.species_codes", "keyword", facet=True),
    Field("study.date", "date"),
    Field("study.description", "text"),
    Field("series.modality", "keyword", facet=True),
    Field("series.description", "text"),
    Field("series.body_part", "keyword", facet=True),
    Field("specimen.ids", "keyword"),
    Field("specimen.anatomy_codes", "keyword", facet=True),
    Field("specimen.anatomy", "text"),
    Field("specimen.type_codes", "keyword", facet=True),
    Field("specimen.stain_codes", "keyword", facet=True),
    Field("specimen.stains", "text"),
    Field("specimen.preparation_codes", "keyword", facet=True),
    Field("specimen.processing_types", "keyword", facet=True),
    Field("specimen.preparation", "text"),
    Field("specimen.container_type_codes", "keyword", facet=True),
    Field("specimen.container_id", "keyword"),
    Field("specimen.description", "text"),
    Field("optical.illumination_type_codes", "keyword", facet=True),
    Field("optical.illumination_color_codes", "keyword", facet=True),
    Field("optical.wavelengths_nm", "float"),
    Field("optical.path_count", "integer"),
    Field("optical.description", "text"),
    Field("scanner.manufacturer", "keyword", facet=True),
    Field("scanner.model", "keyword", facet=True),
    Field("scanner.software_versions", "keyword"),
    Field("magnification", "float", facet=True),
    Field("pixel_spacing_um", "float"),
    Field("pyramid.level_count", "integer", facet=True),
    Field("pyramid.width", "integer"),
    Field("pyramid.height", "integer"),
    Field("pyramid.level_sizes", "keyword"),
    Field("pyramid.has_label", "boolean", facet=True),
    Field("pyramid.has_overview", "boolean", facet=True),
    Field("pyramid.has_thumbnail", "boolean"),
    Field("ai.present", "boolean", facet=True),
    Field("ai.series_uids", "keyword"),
    Field("ai.algorithms", "keyword", facet=True),
    Field("ai.algorithm_versions", "keyword"),
    Field("ai.annotation_count", "integer"),
    Field("ai.group_count", "integer"),
    Field("ai.group_counts", "keyword"),
    Field("ai.property_type_codes", "keyword", facet=True),
    Field("ai.properties", "text"),
    Field("references", "keyword"),
    # QIDO keys, raw as the catalog's columns hold them (see archive.catalog.attributes.KEYS)
    Field("qido.PatientName", "keyword"),
    Field("qido.PatientID", "keyword"),
    Field("qido.IssuerOfPatientID", "keyword"),
    Field("qido.PatientBirthDate", "keyword"),
    Field("qido.PatientSex", "keyword"),
    Field("qido.StudyInstanceUID", "keyword"),
    Field("qido.StudyDate", "keyword"),
    Field("qido.StudyTime", "keyword"),
    Field("qido.AccessionNumber", "keyword"),
    Field("qido.StudyID", "keyword"),
    Field("qido.ReferringPhysicianName", "keyword"),
    Field("qido.StudyDescription", "keyword"),
    Field("qido.SeriesInstanceUID", "keyword"),
    Field("qido.Modality", "keyword"),
    Field("qido.SeriesNumber", "integer"),
    Field("qido.SeriesDescription", "keyword"),
    Field("qido.SeriesDate", "keyword"),
    Field("qido.SeriesTime", "keyword"),
    Field("qido.PerformedProcedureStepStartDate", "keyword"),
    Field("qido.PerformedProcedureStepStartTime", "keyword"),
    Field("qido.BodyPartExamined", "keyword"),
)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
TEXT_FIELDS = tuple(f.name for f in FIELDS if f.type == "text")

# Catalog column semantics for the QIDO keys: (keyword, VR)
QIDO_KEYS: tuple[tuple[str, str], ...] = tuple(
    (f.name.split(".", 1)[1], "IS" if f.type == "integer" else "") for f in FIELDS if f.name.startswith("qido.")
)


class DocumentError(ValueError):
    """A document that does not fit FIELDS; carries only the series UID, never patient data."""

    def __init__(self, series_uid: str, reason: str):
        super().__init__(f"series {series_uid}: {reason}")
        self.series_uid = series_uid
        self.reason = reason


# --- small readers ------------------------------------------------------------


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _first(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return value


def _items(ds: Dataset | None, keyword: str) -> list[Dataset]:
    if ds is None:
        return []
    value = ds.get(keyword)
    return list(value) if value else []


def _code(item: Dataset) -> tuple[str, str] | None:
    """("SCHEME:VALUE", meaning) of a code item; long and URN code values included."""
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    scheme = item.get("CodingSchemeDesignator") or ""
    if not value:
        return None
    return f"{scheme}:{value}", str(item.get("CodeMeaning") or "")


def _codes(items: Iterable[Dataset]) -> list[tuple[str, str]]:
    return [c for c in (_code(i) for i in items) if c]


def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v is not None and v != "" and v not in out:
            out.append(v)
    return out


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # drop NaN


def _qido_text(value: Any, vr: str) -> Any:
    """The value the catalog column would hold (archive.catalog.column_value)."""
    if value is None or value == "":
        return None
    if vr == "IS":
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    text = str(value)
    if vr == "TM":
        text = text.replace(":", "")
    return text


_DATE = re.compile(r"\d{8}")


def _date(value: Any) -> str | None:
    text = _str(value)
    if text and _DATE.fullmatch(text) and "01" <= text[4:6] <= "12" and "01" <= text[6:8] <= "31":
        return text
    return None


def _age_years(age: str | None) -> int | None:
    m = re.fullmatch(r"(\d{3})([DWMY])", age or "")
    if not m:
        return None
    n = int(m.group(1))
    return {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[m.group(2)]


# --- the document ----------------------------------------------------------------------


def _kind(sop_classes: Iterable[str]) -> str:
    if WSI_SOP_CLASS in sop_classes:
        return "slide"
    if ANN_SOP_CLASS in sop_classes:
        return "annotation"
    if SEG_SOP_CLASS in sop_classes:
        return "segmentation"
    return "other"


def build_document(headers: Iterable[Dataset] | SeriesParts, collection: str | None = None,
                   ai_headers: Iterable[Dataset | SeriesParts] = ()) -> dict[str, Any]:
    """The search document of one series.

    ``headers``: every instance header of the series, or their merged parts (indexer/parts.py:
    the index worker keeps those, so a new instance is read once, not the whole series again).
    ``ai_headers``: headers of ANN/SEG instances that may reference it (others are ignored), or
    the merged parts of such series. ``collections`` (what searches filter on for access
    control) starts as ``[collection]``; the worker sets every collection of the study. Empty
    lists of values and None are dropped, so a missing attribute is a missing field.
    """
    from .parts import AISummary, SeriesParts

    series = headers if isinstance(headers, SeriesParts) else SeriesParts.of(headers)
    head = series.head
    if head is None:
        raise ValueError("a document needs at least one instance header")
    if not head.series_uid:
        raise ValueError("the headers carry no SeriesInstanceUID")
    ai, loose = AISummary(), []
    for item in ai_headers:
        if isinstance(item, SeriesParts):
            ai.merge(item.ai_by_slide.get(head.series_uid, AISummary()))
        else:
            loose.append(item)
    if loose:
        ai.merge(SeriesParts.of(loose).ai_by_slide.get(head.series_uid, AISummary()))
    patient_id, sex, age, years, species = head.patient
    manufacturer, model, software = head.scanner
    spec, optical = series.specimen, series.optical
    levels = sorted(series.levels, key=lambda s: -s[0] * s[1])
    finest = series.levels[levels[0]] if levels else None
    colors = list(optical["colors"])
    doc: dict[str, Any] = {
        "mapping_version": MAPPING_VERSION,
        "series_uid": head.series_uid,
        "study_uid": head.study_uid,
        "kind": _kind(series.sop_classes),
        "collection": collection,
        "collections": [collection] if collection else [],
        "sop_classes": sorted(c for c in series.sop_classes if c),
        "instance_count": series.count,
        "patient": {"id": patient_id, "sex": sex, "age": age, "age_years": years, "species_codes": list(species)},
        "study": {"date": head.study[0], "description": head.study[1]},
        "series": {"modality": head.series[0], "description": head.series[1], "body_part": head.series[2]},
        "specimen": {
            "ids": list(spec["ids"]),
            "anatomy_codes": [c for c, _ in spec["anatomy"]],
            "anatomy": " ".join(m for _, m in spec["anatomy"]) or None,
            "type_codes": [c for c, _ in spec["types"]],
            "stain_codes": [c for c, _ in spec["stains"]],
            "stains": " ".join(m for _, m in spec["stains"]) or None,
            "preparation_codes": [c for c, _ in spec["preparation"]],
            "processing_types": list(spec["processing"]),
            "preparation": " ".join(m for _, m in spec["preparation"]) or None,
            "container_type_codes": [c for c, _ in spec["containers"]],
            "container_id": series.container_id,
            "description": " ".join(spec["texts"]) or None,
        },
        "optical": {
            "illumination_type_codes": [c for c, _ in optical["types"]],
            "illumination_color_codes": [c for c, _ in colors],
            "wavelengths_nm": list(optical["wavelengths"]),
            "path_count": len(series.path_ids),
            "description": " ".join(_unique([*optical["texts"], *(m for _, m in colors)])) or None,
        },
        "scanner": {"manufacturer": manufacturer, "model": model, "software_versions": list(software)},
        "magnification": series.power,
        "pixel_spacing_um": round(finest * 1000, 6) if finest else None,
        "pyramid": {
            "level_count": len(levels),
            "width": levels[0][0] if levels else None,
            "height": levels[0][1] if levels else None,
            "level_sizes": [f"{c}x{r}" for c, r in levels],
            "has_label": "LABEL" in series.flavors,
            "has_overview": "OVERVIEW" in series.flavors,
            "has_thumbnail": "THUMBNAIL" in series.flavors,
        },
        "ai": ai.fields(),
        "references": list(series.references),
        "qido": dict(head.qido),
    }
    return prune(doc)


def prune(value: Any) -> Any:
    """Drop None, empty strings, empty lists and empty objects (absent = missing, in both backends)."""
    if isinstance(value, dict):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [prune(v) for v in value if v not in (None, "")]
    return value


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted field name -> value (scalar or list), as FIELDS names them."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check(doc: dict[str, Any]) -> None:
    """Raise DocumentError when a value does not fit its field's type (what ES's strict mapping rejects)."""
    series_uid = str(doc.get("series_uid") or "?")
    for name, value in flatten(doc).items():
        if name == "mapping_version":
            continue
        field = FIELD_BY_NAME.get(name)
        if field is None:
            raise DocumentError(series_uid, f"field {name} is not in the mapping")
        for v in value if isinstance(value, list) else [value]:
            if not _fits(field.type, v):
                raise DocumentError(series_uid, f"field {name} expects {field.type}, got {type(v).__name__}")


def _fits(kind: str, v: Any) -> bool:
    if kind in ("keyword", "text"):
        return isinstance(v, str)
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool) and -(2 ** 31) <= v < 2 ** 31
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "date":
        return isinstance(v, str) and _date(v) is not None
    return False


def free_text(doc: dict[str, Any]) -> str:
    """Everything a free-text query searches, in one string (the embedded backend's FTS column)."""
    flat = flatten(doc)
    parts: list[str] = []
    for name in TEXT_FIELDS:
        value = flat.get(name)
        if value:
            parts.append(str(value))
    for name in ("scanner.manufacturer", "scanner.model", "series.modality", "collection",
                 "ai.algorithms", "specimen.processing_types", "patient.id", "series.body_part"):
        value = flat.get(name)
        if value:
            parts += value if isinstance(value, list) else [str(value)]
    return " ".join(parts)


STUDY_LEVEL_QIDO = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName", "StudyDescription")


def apply_study_row(doc: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Take the patient/study QIDO keys from the catalog's study row (DICOM JSON).

    The catalog keeps a study's attributes as its first stored instance had them,
    so a series whose own header disagrees (an ANN series without the issuer, say)
    must still match study keys the way the catalog does.
    """
    from pydicom.datadict import tag_for_keyword

    keys = doc.setdefault("qido", {})
    for keyword in STUDY_LEVEL_QIDO:
        element = row.get(f"{tag_for_keyword(keyword):08X}") or {}
        values = element.get("Value") or []
        value = values[0] if values else None
        if isinstance(value, dict):  # PN: the catalog column holds the alphabetic group
            value = value.get("Alphabetic")
        value = _qido_text(value, "TM" if keyword == "StudyTime" else "")
        if value is None:
            keys.pop(keyword, None)
        else:
            keys[keyword] = value
    return doc

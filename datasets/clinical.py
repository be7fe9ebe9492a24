"""What a release says about each case and slide, read from the stored (de-identified) headers.

Only values the de-identification profile keeps reach the catalog, so only those
can reach a release: Patient's Sex and Age survive only under Retain Patient
Characteristics, Admitting Diagnoses only under Clean Descriptors, while the
specimen's anatomy and stain codes and the scanner's make are never removed
(docs/deid.md). A curator may supply the clinical fields per case instead
(``dataset_case``). Ages become decade bands (90 and over: ``90+``), never years.

The headers come as the catalog's DICOM JSON (tag -> {"vr", "Value"}).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Iterable

# DICOM JSON tags (PS3.6), by keyword.
PATIENT_SEX = "00100040"
PATIENT_AGE = "00101010"
SPECIES_DESCRIPTION = "00102201"
SPECIES_CODE_SEQUENCE = "00102202"
ADMITTING_DIAGNOSES_DESCRIPTION = "00081080"
ADMITTING_DIAGNOSES_CODE_SEQUENCE = "00081084"
MANUFACTURER = "00080070"
MODEL_NAME = "00081090"
SPECIMEN_DESCRIPTION_SEQUENCE = "00400560"
PRIMARY_ANATOMIC_STRUCTURE_SEQUENCE = "00082228"
SPECIMEN_PREPARATION_SEQUENCE = "00400610"
PREPARATION_STEP_CONTENT_ITEMS = "00400612"
CONCEPT_NAME_CODE_SEQUENCE = "0040A043"
CONCEPT_CODE_SEQUENCE = "0040A168"
CODE_VALUE, CODING_SCHEME, CODE_MEANING = "00080100", "00080102", "00080104"
#: SNOMED "Using substance" (CID 8112 stains are its values in a staining step).
USING_SUBSTANCE = ("424361007", "SCT")
#: A patient without a species is human (Patient Species Description is required only for animals).
HUMAN = "Homo sapiens"


def _values(obj: dict[str, Any], tag: str) -> list[Any]:
    elem = obj.get(tag) or {}
    return [v for v in elem.get("Value") or [] if v not in (None, "")]


def _first(obj: dict[str, Any], tag: str) -> str | None:
    values = _values(obj, tag)
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):  # PN
        value = value.get("Alphabetic")
    text = str(value).strip()
    return text or None


def _meaning(item: dict[str, Any]) -> str | None:
    return _first(item, CODE_MEANING) or _first(item, CODE_VALUE)


def _items(obj: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [v for v in _values(obj, tag) if isinstance(v, dict)]


def age_band(age: str | None) -> str | None:
    """``063Y`` -> ``60-69``; under a year -> ``0-9``; 90 and over -> ``90+``; unparsable -> None."""
    if not age or len(age) != 4 or not age[:3].isdigit() or age[3] not in "DWMY":
        return None
    years = int(age[:3]) if age[3] == "Y" else 0
    if years >= 90:
        return "90+"
    low = years // 10 * 10
    return f"{low}-{low + 9}"


def sex(study: dict[str, Any]) -> str | None:
    value = _first(study, PATIENT_SEX)
    return value if value in ("F", "M", "O") else None


def species(study: dict[str, Any]) -> str:
    for item in _items(study, SPECIES_CODE_SEQUENCE):
        meaning = _meaning(item)
        if meaning:
            return meaning
    return _first(study, SPECIES_DESCRIPTION) or HUMAN


def diagnosis(instance: dict[str, Any]) -> str | None:
    for item in _items(instance, ADMITTING_DIAGNOSES_CODE_SEQUENCE):
        meaning = _meaning(item)
        if meaning:
            return meaning
    return _first(instance, ADMITTING_DIAGNOSES_DESCRIPTION)


def anatomic_sites(series: dict[str, Any]) -> list[str]:
    out = []
    for spec in _items(series, SPECIMEN_DESCRIPTION_SEQUENCE):
        for item in _items(spec, PRIMARY_ANATOMIC_STRUCTURE_SEQUENCE):
            meaning = _meaning(item)
            if meaning and meaning not in out:
                out.append(meaning)
    return out


def stains(series: dict[str, Any]) -> list[str]:
    """The substances of the staining steps of the slide's specimens (code meanings)."""
    out = []
    for spec in _items(series, SPECIMEN_DESCRIPTION_SEQUENCE):
        for step in _items(spec, SPECIMEN_PREPARATION_SEQUENCE):
            for content in _items(step, PREPARATION_STEP_CONTENT_ITEMS):
                names = _items(content, CONCEPT_NAME_CODE_SEQUENCE)
                if not names or (_first(names[0], CODE_VALUE), _first(names[0], CODING_SCHEME)) != USING_SUBSTANCE:
                    continue
                for value in _items(content, CONCEPT_CODE_SEQUENCE):
                    meaning = _meaning(value)
                    if meaning and meaning not in out:
                        out.append(meaning)
    return out


def scanner(series: dict[str, Any]) -> str | None:
    parts = [p for p in (_first(series, MANUFACTURER), _first(series, MODEL_NAME)) if p]
    return " ".join(parts) or None


def case_key(data_dir, catalog=None) -> bytes:
    """The key of release-local case pseudonyms, derived from the archive's pseudonym key, so no
    second secret is kept: the key a shared catalog holds for every node, else
    ``<data_dir>/secrets/deid.key``. Every node then names a case alike."""
    if catalog is not None and catalog.shared:
        base = catalog.shared_secret("deid pseudonym key")
    else:
        from deid.policy import default_key

        base = default_key(data_dir)
    return hmac.new(base, b"slidearchive dataset case pseudonyms", hashlib.sha256).digest()


def case_id(key: bytes, dataset_id: str, patient_id: str, issuer: str) -> str:
    """A release-local pseudonym of a case: the same within every version of one dataset,
    unlinkable to the archive's Patient ID or to other datasets without the key."""
    digest = hmac.new(key, "\x1f".join((dataset_id, issuer, patient_id)).encode(), hashlib.sha256).hexdigest()
    return f"case-{digest[:16]}"


def merge(found: Iterable[str | None]) -> str | None:
    """Several values of one field for one case (e.g. two sites): joined in a stable order."""
    values = sorted({v for v in found if v})
    return "; ".join(values) if values else None

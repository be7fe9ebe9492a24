"""C-FIND SCP: a C-FIND identifier becomes the same ``archive.catalog.query.Query`` QIDO-RS builds.

Matching is therefore exactly QIDO-RS matching (PS3.4 C.2.2.2 as implemented
in archive.catalog.query): single value, universal (empty), wildcard, UID list, range,
case-insensitive person names. PATIENT level is answered from a study-level
search grouped by patient, so the catalog needs no extra query.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  PatientRootQueryRetrieveInformationModelMove)

from archive import metrics
from archive.auth.access import Principal
from archive.catalog.attributes import KEYS, LEVELS
from archive.catalog.query import Query, parse_match
from archive.dimse import audit as dimse_audit
from archive.dimse.policy import QUERY, REFUSED_NOT_AUTHORIZED, PeerPolicy, calling_ae
from archive.errors import ArchiveError, DatasetDoesNotMatchSOPClass
from archive.logs import failure_site

log = logging.getLogger(__name__)

#: Query/Retrieve Level (0008,0052) -> catalog level.
LEVEL = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
UNIQUE_KEY = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID",
              "instance": "SOPInstanceUID"}
PATIENT_ROOT = {PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                PatientRootQueryRetrieveInformationModelGet}
#: Returned at IMAGE level whether asked for or not: what a slide viewer needs to pick a level.
SLIDE_KEYS = ("SOPClassUID", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows", "NumberOfFrames",
              "ContainerIdentifier")
#: Not matching keys; handled by the SCP itself.
CONTROL_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "QueryRetrieveView"}
STATUS_PENDING, STATUS_CANCEL = 0xFF00, 0xFE00


@dataclasses.dataclass
class FindPlan:
    """What one C-FIND asks: the catalog query, the keys to return, and the root."""

    level: str  # patient | study | series | instance
    query: Query
    requested: list[str]
    patient_root: bool


def _raw(elem: DataElement) -> str:
    """An identifier value as the text QIDO-RS would have received."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def query_level(identifier: Dataset) -> str:
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if raw not in LEVEL:
        raise DatasetDoesNotMatchSOPClass("QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE")
    return LEVEL[raw]


def plan(identifier: Dataset, sop_class: str) -> FindPlan:
    """Turn the identifier into a Query; unsupported optional keys are returned, not matched (PS3.4 C.2.2.1.3)."""
    level = query_level(identifier)
    patient_root = sop_class in PATIENT_ROOT
    if level == "patient" and not patient_root:
        raise DatasetDoesNotMatchSOPClass("PATIENT level exists only in the Patient Root model")
    query = Query("study" if level == "patient" else level)
    requested: list[str] = []
    for elem in identifier:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if not keyword or elem.tag.group in (0x0000, 0x0002) or keyword in CONTROL_KEYS:
            continue
        requested.append(keyword)
        key = KEYS.get(keyword)
        if key is None or elem.VR == "SQ":
            continue
        if LEVELS.index(key.level) > LEVELS.index(level):
            raise DatasetDoesNotMatchSOPClass(f"{keyword} is below the {level} query level")
        match = parse_match(key, _raw(elem).strip())
        if match is not None:
            query.matches.append(match)
    return FindPlan(level, query, requested, patient_root)


def _returned_keys(p: FindPlan) -> list[str]:
    keys = list(p.requested)
    upper = LEVELS[: LEVELS.index(p.level) + 1]
    for lvl in upper:
        if lvl == "patient" and not p.patient_root and p.level != "patient":
            continue
        keys.append(UNIQUE_KEY[lvl])
    if p.level == "instance":
        keys += SLIDE_KEYS
    return list(dict.fromkeys(keys))


def _patients(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group study rows by (PatientID, Issuer): one row per patient with the related-counts."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        ident = (_first(row, "00100020"), _first(row, "00100021"))
        out = grouped.get(ident)
        if out is None:
            out = grouped[ident] = {t: v for t, v in row.items() if t.startswith("0010") or t == "00080005"}
            out["_counts"] = [0, 0, 0]
        counts = out["_counts"]
        counts[0] += 1
        counts[1] += int(_first(row, "00201206") or 0)
        counts[2] += int(_first(row, "00201208") or 0)
    result = []
    for out in grouped.values():
        studies, series, instances = out.pop("_counts")
        out["00201200"] = {"vr": "IS", "Value": [studies]}
        out["00201202"] = {"vr": "IS", "Value": [series]}
        out["00201204"] = {"vr": "IS", "Value": [instances]}
        result.append(out)
    return result


def _first(row: dict[str, Any], tag: str) -> str:
    values = row.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _empty(keyword: str) -> DataElement | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    vr = dictionary_VR(tag).split(" or ")[0]
    return DataElement(tag, vr, Sequence() if vr == "SQ" else None)


def response(row: dict[str, Any], keys: list[str], level_name: str, ae_title: str) -> Dataset:
    """One pending response identifier: the requested keys, present or zero-length."""
    tags = {f"{tag_for_keyword(k):08X}": k for k in keys if tag_for_keyword(k) is not None}
    subset = {t: v for t, v in row.items() if t in tags}
    if "00080005" in row:
        subset["00080005"] = row["00080005"]
    ds = Dataset.from_json(subset, bulk_data_uri_handler=lambda *a: b"")
    for keyword in tags.values():
        if keyword not in ds:
            elem = _empty(keyword)
            if elem is not None:
                ds.add(elem)
    ds.QueryRetrieveLevel = level_name
    ds.RetrieveAETitle = ae_title
    return ds


def results(p: FindPlan, catalog, ae_title: str, principal: Principal) -> Iterator[Dataset]:
    rows = catalog.search(p.query, principal=principal)
    if p.level == "patient":
        rows = _patients(rows)
    keys = _returned_keys(p)
    level_name = {v: k for k, v in LEVEL.items()}[p.level]
    for row in rows:
        yield response(row, keys, level_name, ae_title)


def handle_find(event, archive, policy: PeerPolicy, ae_title: str,
                who: Callable[[Any], Principal]) -> Iterator[tuple[int, Dataset | None]]:
    """Pending responses, one per match; C-CANCEL is checked before each."""
    ae = calling_ae(event)
    if not policy.allows(ae, QUERY):
        log.warning("C-FIND refused: %s may not query", ae)
        yield REFUSED_NOT_AUTHORIZED, None
        return
    try:
        p = plan(event.identifier, str(event.request.AffectedSOPClassUID))
        found = results(p, archive.catalog, ae_title, who(event))
        count = 0
        for ds in found:
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled after %d matches", ae, count)
                yield STATUS_CANCEL, None
                return
            count += 1
            yield STATUS_PENDING, ds
    except ArchiveError as e:
        metrics.error(e, "dimse")
        log.warning("C-FIND from %s failed: 0x%04X %s", ae, e.dimse_status, e.title)
        yield _failure(e.dimse_status, e.message), None
        return
    except Exception as e:  # noqa: BLE001
        log.error("C-FIND from %s failed: %s at %s", ae, type(e).__name__, failure_site(e))
        yield _failure(0xC000, f"processing failure: {type(e).__name__}"), None
        return
    log.info("C-FIND from %s: %d matches", ae, count)
    dimse_audit.record(event, archive, "Query", query=dimse_audit.identifier_keys(event.identifier),
                       detail={"sop_class": str(event.request.AffectedSOPClassUID),
                               "description": f"C-FIND, {count} matches"})
    yield 0x0000, None


def _failure(status: int, message: str) -> Dataset:
    """A failure status with an Error Comment (messages name attributes, never values)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = message[:64]
    return ds

"""DICOM audit messages (PS3.15 Annex A.5) as JSON-ready dicts, and their XML form for syslog.

A message dict mirrors the DICOM audit message schema: a key naming an element
holds a dict (the element's attributes and children) or a list of them; scalar
values are XML attributes, except the few elements in ``_TEXT`` that carry text.
Standard library only: the ``serve`` supervisor records Application Activity
and imports no DICOM library.
"""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from xml.sax.saxutils import escape, quoteattr

#: The events of the audit API, with their EventID code (DCM) and EventActionCode.
EVENTS: dict[str, tuple[str, str, str]] = {
    "ApplicationActivity": ("110100", "Application Activity", "E"),
    "AuditLogUsed": ("110101", "Audit Log Used", "R"),
    "BeginTransferringDICOMInstances": ("110102", "Begin Transferring DICOM Instances", "E"),
    "DICOMInstancesAccessed": ("110103", "DICOM Instances Accessed", "R"),
    "DICOMInstancesTransferred": ("110104", "DICOM Instances Transferred", "R"),
    "DICOMInstancesDeleted": ("110105", "DICOM Study Deleted", "D"),
    "Export": ("110106", "Export", "R"),
    "Query": ("110112", "Query", "E"),
    "SecurityAlert": ("110113", "Security Alert", "E"),
    "UserAuthentication": ("110114", "User Authentication", "E"),
}

#: EventTypeCode values (DCM) by meaning, given as ``detail={"type": ...}``.
EVENT_TYPES: dict[str, str] = {
    "Application Start": "110120", "Application Stop": "110121", "Login": "110122", "Logout": "110123",
    "Attach": "110124", "Detach": "110125", "Node Authentication": "110126",
    "Emergency Override Started": "110127", "Network Configuration": "110128",
    "Security Configuration": "110129", "Hardware Configuration": "110130", "Software Configuration": "110131",
    "Use of Restricted Function": "110132", "Audit Recording Stopped": "110133",
    "Audit Recording Started": "110134", "Object Security Attributes Changed": "110135",
    "Security Roles Changed": "110136", "User security Attributes Changed": "110137",
}
#: The EventTypeCode recorded when the caller names none (the standard requires one for these).
DEFAULT_TYPES = {"ApplicationActivity": "Application Start", "UserAuthentication": "Login",
                 "SecurityAlert": "Use of Restricted Function"}
ROLES = {"Application": "110150", "Destination": "110152", "Source": "110153"}
#: Who is where: the requestor receives what is transferred, the archive sends it.
_REQUESTOR_ROLE = {"BeginTransferringDICOMInstances": "Destination", "DICOMInstancesTransferred": "Destination"}
_TEXT = {"EventOutcomeDescription", "ParticipantObjectQuery", "ParticipantObjectName"}

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_IP = re.compile(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*")

#: Query keys whose values are recorded; every other key is kept with its value redacted,
#: since a user may type a real name or identifier into a search field (see docs/security.md).
RECORDED_VALUES = frozenset({
    "QueryRetrieveLevel", "Modality", "ModalitiesInStudy", "SOPClassesInStudy", "limit", "offset",
    "includefield", "fuzzymatching", "orderby", "page", "size", "facets", "collection",
})
REDACTED = "<redacted>"


def code(value: str, meaning: str, scheme: str = "DCM") -> dict[str, str]:
    return {"csd-code": value, "codeSystemName": scheme, "originalText": meaning}


def safe_uid(value: str | None) -> str | None:
    """A UID as given when it is one; anything else (which could be typed text) is not recorded."""
    if value is None:
        return None
    value = str(value)
    return value if len(value) <= 64 and _UID.fullmatch(value) else "<invalid>"


def redact_query(query: Mapping[str, Any]) -> dict[str, Any]:
    """Query keys with values only where they cannot be PHI: UIDs and the allow-list above."""
    out: dict[str, Any] = {}
    for key, value in query.items():
        key = str(key)[:64]
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]  # a repeatable query parameter given once
        name = _keyword(key)
        if name.endswith("UID") and value not in (None, ""):
            values = value if isinstance(value, (list, tuple)) else str(value).replace("\\", ",").split(",")
            out[key] = [safe_uid(v.strip()) for v in map(str, values)]
        elif name in RECORDED_VALUES or value in (None, ""):
            out[key] = value if isinstance(value, (int, float, list)) or value is None else str(value)[:256]
        else:
            out[key] = REDACTED
    return out


def _keyword(key: str) -> str:
    """``00100010`` and ``PatientName`` both name PatientName; a tag outside the dictionary names itself."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        try:
            from pydicom.datadict import keyword_for_tag

            return keyword_for_tag(int(key, 16)) or key
        except ImportError:
            return key
    return key.split(".")[-1]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def participant(user_id: str, *, requestor: bool, remote: str | None = None, role: str | None = None,
                alternative: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"UserID": user_id, "UserIsRequestor": requestor}
    if alternative:
        p["AlternativeUserID"] = alternative
    if remote:
        p["NetworkAccessPointID"] = remote
        p["NetworkAccessPointTypeCode"] = "2" if _IP.fullmatch(remote) else "1"
    if role:
        p["RoleIDCode"] = code(ROLES[role], role + (" Role ID" if role in ("Destination", "Source") else ""))
    return p


def study_object(study: str, series: str | None, instances: list[tuple[str | None, str]],
                 counts: Mapping[str, int] | None) -> dict[str, Any]:
    """The study participant: its UID, the series and the instances (grouped by SOP class where known)."""
    obj: dict[str, Any] = {"ParticipantObjectID": safe_uid(study), "ParticipantObjectTypeCode": "2",
                           "ParticipantObjectTypeCodeRole": "3",
                           "ParticipantObjectIDTypeCode": code("110180", "Study Instance UID")}
    details = [{"type": "SeriesInstanceUID", "value": _b64(safe_uid(series) or "")}] if series else []
    for name, number in (counts or {}).items():
        details.append({"type": name, "value": _b64(str(int(number)))})
    if details:
        obj["ParticipantObjectDetail"] = details
    if instances:
        by_class: dict[str, list[str]] = {}
        for sop_class, sop in instances:
            by_class.setdefault(safe_uid(sop_class) or "", []).append(safe_uid(sop) or "")
        obj["ParticipantObjectDescription"] = {"SOPClass": [
            {"UID": uid, "NumberOfInstances": len(sops), "Instance": [{"UID": s} for s in sops]}
            for uid, sops in by_class.items()]}
    return obj


def query_object(query: Mapping[str, Any], sop_class: str | None) -> dict[str, Any]:
    return {"ParticipantObjectID": safe_uid(sop_class or STUDY_ROOT_FIND), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3", "ParticipantObjectIDTypeCode": code("110181", "SOP Class UID"),
            "ParticipantObjectQuery": _b64(json.dumps(redact_query(query), sort_keys=True)),
            "ParticipantObjectDetail": [{"type": "QueryEncoding", "value": _b64("UTF-8")}]}


def normalise_instances(instances: Iterable[Any], limit: int) -> tuple[list[tuple[str | None, str]], int]:
    """SOP Instance UIDs or (SOP Class UID, SOP Instance UID) pairs: the first ``limit`` and the count."""
    listed: list[tuple[str | None, str]] = []
    count = 0
    for item in instances:
        count += 1
        if len(listed) < limit:
            listed.append((item[0], item[1]) if isinstance(item, (tuple, list)) else (None, str(item)))
    return listed, count


def build(event: str, *, time: datetime, user: str, kind: str | None, outcome: int, remote: str | None,
          study: str | None, series: str | None, instances: list[tuple[str | None, str]],
          query: Mapping[str, Any] | None, detail: Mapping[str, Any], source: Mapping[str, str],
          counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One audit message for ``event`` (a key of EVENTS)."""
    event_code, meaning, action = EVENTS[event]
    identification: dict[str, Any] = {
        "EventID": code(event_code, meaning), "EventActionCode": detail.get("action", action),
        "EventDateTime": time.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": str(outcome)}
    event_type = detail.get("type") or DEFAULT_TYPES.get(event)
    if event_type:
        identification["EventTypeCode"] = [code(EVENT_TYPES[event_type], event_type)] if event_type in EVENT_TYPES \
            else [code(str(event_type)[:64], str(event_type)[:64], "99SLIDEARCHIVE")]
    if detail.get("description"):
        identification["EventOutcomeDescription"] = str(detail["description"])[:512]
    alternative = f"AETITLES={user}" if kind == "ae" else None
    requestor = participant(user, requestor=True, remote=remote, role=_REQUESTOR_ROLE.get(event),
                            alternative=alternative)
    archive_role = "Application" if event == "ApplicationActivity" else (
        "Source" if event in _REQUESTOR_ROLE or event == "Export" else None)
    archive = participant(source["id"], requestor=False, remote=source.get("host"), role=archive_role,
                          alternative=source.get("aetitles"))
    participants = [requestor, archive] if user != source["id"] else [archive | {"UserIsRequestor": True}]
    if detail.get("destination"):
        participants.append(participant(str(detail["destination"])[:64], requestor=False,
                                        remote=detail.get("destination_host"), role="Destination",
                                        alternative=f"AETITLES={detail['destination']}"[:80]))
    message: dict[str, Any] = {"EventIdentification": identification, "ActiveParticipant": participants,
                               "AuditSourceIdentification": _source(source)}
    objects = []
    if study:
        objects.append(study_object(study, series, instances, counts))
    if query is not None:
        objects.append(query_object(query, detail.get("sop_class")))
    if objects:
        message["ParticipantObjectIdentification"] = objects
    return message


def _source(source: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"AuditSourceID": source["id"]}
    if source.get("site"):
        out["AuditEnterpriseSiteID"] = source["site"]
    out["AuditSourceTypeCode"] = code("4", "Application Server Process Tier")
    return out


def to_xml(message: Mapping[str, Any]) -> str:
    """The message as the DICOM audit message XML an audit record repository expects."""
    return '<?xml version="1.0" encoding="UTF-8"?>' + _element("AuditMessage", message)


def _element(name: str, value: Any) -> str:
    if isinstance(value, list):
        return "".join(_element(name, v) for v in value)
    if not isinstance(value, Mapping):
        return f"<{name}>{escape(str(value))}</{name}>"
    attributes = "".join(f" {k}={quoteattr(_attr(v))}" for k, v in value.items()
                         if not isinstance(v, (Mapping, list)) and k not in _TEXT)
    children = "".join(_element(k, v) for k, v in value.items() if isinstance(v, (Mapping, list)) or k in _TEXT)
    return f"<{name}{attributes}>{children}</{name}>" if children else f"<{name}{attributes}/>"


def _attr(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

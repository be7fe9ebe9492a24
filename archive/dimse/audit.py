"""Who is on the other end of an association, for the audit trail, and what a C-FIND asked."""
from __future__ import annotations

import dataclasses
from typing import Any

from pydicom.dataset import Dataset

from archive.dimse.policy import calling_ae


@dataclasses.dataclass(frozen=True)
class AEPeer:
    """A peer known only by its calling AE title (before, or without, user identity negotiation)."""
    subject: str
    kind: str = "ae"


def principal(event) -> Any:
    """The association's principal when authentication set one (``assoc.principal``), else its AE title."""
    return getattr(event.assoc, "principal", None) or AEPeer(calling_ae(event))


def remote(event) -> str | None:
    return getattr(event.assoc.requestor, "address", None)


def record(event, archive, name: str, **fields) -> None:
    archive.audit.record(name, principal=principal(event), remote=remote(event), **fields)


def identifier_keys(identifier: Dataset | None) -> dict[str, str]:
    """The C-FIND keys as keyword -> text (the audit redacts the values that could be PHI)."""
    out: dict[str, str] = {}
    for elem in identifier or ():
        value = elem.value
        out[elem.keyword or f"{elem.tag:08X}"] = "" if value is None or elem.VR == "SQ" else str(value)[:256]
    return out


def by_study(records) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        out.setdefault(r.study_uid, []).append((r.sop_class_uid, r.sop_instance_uid))
    return out

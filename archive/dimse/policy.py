"""Who may do what over DIMSE: the ``[[dimse.peer]]`` rules, checked per request.

Unknown calling AE titles are rejected at association time (pynetdicom's
``require_calling_aet``); a known peer asking for a service it was not granted
gets the PS3.7 general status "Refused: Not authorized" on that request, so
one association may mix allowed and refused operations.
"""
from __future__ import annotations

import dataclasses

from archive.config import DimseSettings
from archive.errors import NotAuthorized

#: PS3.7 Annex C general status "Refused: Not authorized", from the error table.
REFUSED_NOT_AUTHORIZED = NotAuthorized.dimse_status

STORE, QUERY, RETRIEVE = "store", "query", "retrieve"


@dataclasses.dataclass(frozen=True)
class PeerPolicy:
    """The allow-list; empty means anyone may do anything (the default, loopback-only install)."""

    rules: dict[str, frozenset[str]]
    #: Collection grants ("name" or "name:role") of peers that send no user identity (auth on).
    grants: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_settings(cls, dimse: DimseSettings) -> "PeerPolicy":
        return cls({p.ae_title: p.allow for p in dimse.peers}, {p.ae_title: p.collections for p in dimse.peers})

    @property
    def is_open(self) -> bool:
        return not self.rules

    def allows(self, calling_ae: str, action: str) -> bool:
        if self.is_open:
            return True
        return action in self.rules.get(calling_ae.strip(), frozenset())


def calling_ae(event) -> str:
    """The requestor's AE title, stripped (pynetdicom 3 gives str)."""
    title = event.assoc.requestor.ae_title
    if isinstance(title, bytes):
        title = title.decode("ascii", "replace")
    return str(title).strip()

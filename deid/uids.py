"""Keyed pseudonyms: HMAC-SHA256 with the broker's secret key.

Deterministic by design: the same key and original value give the same pseudonym on
every instance, every level of a series and every re-send, so references between
objects keep resolving and identical re-sends stay byte-identical. Without the key the
pseudonym reveals nothing (it is a MAC, not a hash of a guessable value).
Each kind of value has its own domain label so a UID and a patient id that happen to
be equal strings do not collide.
"""
from __future__ import annotations

import hashlib
import hmac

from pydicom.uid import UID_dictionary

STANDARD_ROOT = "1.2.840.10008."
_MAX_OFFSET_DAYS = 3652  # shifts fall in [-3652, -1] days: up to ten years back


def is_well_known_uid(value: str) -> bool:
    """True for UIDs defined by the standard (SOP classes, transfer syntaxes, coding schemes...)."""
    return value in UID_dictionary or value.startswith(STANDARD_ROOT)


class Pseudonymizer:
    """All keyed derivations used by the de-identifier."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("pseudonym key must be at least 16 bytes")
        self._key = key

    def _mac(self, domain: str, *parts: str) -> bytes:
        msg = domain.encode() + b"\x00" + b"\x00".join(p.encode("utf-8") for p in parts)
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A `2.25.<int>` UID (at most 44 characters) from 128 bits of the MAC."""
        value = int.from_bytes(self._mac("uid", original.strip().rstrip("\x00"))[:16], "big")
        return f"2.25.{value or 1}"

    def patient_id(self, issuer: str, patient_id: str) -> str:
        """Patient pseudonym, fits LO and PN; keyed on issuer + id so two issuers never merge."""
        return "DEID-" + self._mac("patient", issuer, patient_id).hex()[:20].upper()

    def identifier(self, value: str) -> str:
        """A dummy identifier (16 characters, fits SH) for a container / specimen id.

        The same original id gives the same dummy wherever it appears (header, nested
        specimen description, content items), so a slide's identifiers still match.
        """
        return "ID" + self._mac("identifier", value.strip()).hex()[:14].upper()

    def date_offset_days(self, issuer: str, patient_id: str) -> int:
        """Per-patient date shift for the Modified Dates option: intervals survive."""
        raw = int.from_bytes(self._mac("date-offset", issuer, patient_id)[:8], "big")
        return -(raw % _MAX_OFFSET_DAYS) - 1

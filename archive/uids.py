"""UID validation at the boundary: a UID from a peer is data, never a path."""
from __future__ import annotations

import re

from archive.errors import InvalidRequest

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(value: object) -> bool:
    """PS3.5 9.1 syntax, tolerating leading zeros that real devices write."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` or raise InvalidRequest naming ``what`` (never echoing long junk)."""
    if not is_valid_uid(value):
        # The value itself is not echoed: it may be anything a peer sent.
        raise InvalidRequest(f"invalid {what}: expected digits and dots, at most 64 characters")
    return value

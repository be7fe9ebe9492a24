"""Automatic 'C' (clean) for free text: remove the identifiers this very header carries.

The Clean options let a descriptor stay once it has been cleaned of identifying
information. A machine cannot find every identifier a person may type, but it can
remove every value the same data set holds in attributes the profile is removing
(names, ids, dates, addresses...). That is what we do; the limit is documented in
docs/deid.md, and sources whose free text may name other people should not be given
the Clean Descriptors / Structured Content options.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

from pydicom.multival import MultiValue

REPLACEMENT = "***"
_MIN_TERM = 3


def _date_forms(value: str) -> list[str]:
    """A DA value and the ways people write it in text."""
    if len(value) != 8 or not value.isdigit():
        return [value]
    y, m, d = value[:4], value[4:6], value[6:]
    return [value, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}", f"{y}/{m}/{d}"]


def terms_of(vr: str, value: object) -> list[str]:
    """Strings worth removing from text when `value` (of VR `vr`) is being removed."""
    if value is None:
        return []
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    out: list[str] = []
    for v in values:
        text = str(v).strip()
        if not text:
            continue
        if vr == "PN":
            out.append(text)
            out.extend(p for p in re.split(r"[\^=]", text) if p.strip())
        elif vr == "DA":
            out.extend(_date_forms(text))
        else:
            out.append(text)
    return [t.strip() for t in out if len(t.strip()) >= _MIN_TERM]


class Scrubber:
    """Removes a fixed set of terms (case-insensitive, longest first) from text."""

    def __init__(self, terms: Iterable[str]) -> None:
        uniq = sorted({t for t in terms if len(t) >= _MIN_TERM}, key=lambda t: (-len(t), t))
        self._pattern = re.compile("|".join(re.escape(t) for t in uniq), re.IGNORECASE) if uniq else None
        #: What the scrubbing depends on, for deid.seqcache's key (a digest: the terms are identifiers).
        self.digest = hashlib.sha256("\x00".join(uniq).encode()).digest()

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(REPLACEMENT, text)

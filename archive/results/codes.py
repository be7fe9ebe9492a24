"""Coded concepts and algorithm descriptions from the plain JSON the results API takes.

People posting GeoJSON or masks name things with words ("Tumor", "AI"); DICOM
wants codes. A caller may give a code ({"code", "scheme", "meaning"}); a bare
word becomes a code in the private scheme ``99SLIDEARCHIVE`` whose meaning is
the word, so it round-trips unchanged.
"""
from __future__ import annotations

import re
from typing import Any

from archive.errors import InvalidRequest

LOCAL_SCHEME = "99SLIDEARCHIVE"
_FAMILIES = {"ai": ("123110", "DCM", "Artificial Intelligence"),
             "artificial intelligence": ("123110", "DCM", "Artificial Intelligence")}
DEFAULT_CATEGORY = {"code": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}
_LO_BAD = re.compile(r"[\\\x00-\x1f]")


def text(value: Any, what: str, limit: int = 64) -> str:
    """A short DICOM string (LO): at most ``limit`` characters, no backslash or control characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{what} must be a non-empty string")
    value = value.strip()
    if len(value) > limit or _LO_BAD.search(value):
        raise InvalidRequest(f"{what} must be at most {limit} characters without backslash or control characters")
    return value


def coded(value: Any, what: str):
    """A highdicom CodedConcept from {"code","scheme","meaning"} or a bare word."""
    from highdicom.sr import CodedConcept

    if isinstance(value, str):
        word = text(value, what)
        return CodedConcept(word, LOCAL_SCHEME, word)
    if isinstance(value, dict) and {"code", "scheme", "meaning"} <= set(value):
        return CodedConcept(text(value["code"], f"{what}.code"), text(value["scheme"], f"{what}.scheme", 16),
                            text(value["meaning"], f"{what}.meaning"))
    raise InvalidRequest(f"{what} must be a string or an object with code, scheme and meaning")


def algorithm(value: Any):
    """highdicom AlgorithmIdentificationSequence from {"name","version","family"?}, or None."""
    if value is None:
        return None
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.sr import CodedConcept

    if not isinstance(value, dict):
        raise InvalidRequest("algorithm must be an object with name and version (and optionally family)")
    name = text(value.get("name"), "algorithm.name")
    version = text(value.get("version"), "algorithm.version")
    family = value.get("family", "Artificial Intelligence")
    if isinstance(family, str) and family.strip().lower() in _FAMILIES:
        family_code = CodedConcept(*_FAMILIES[family.strip().lower()])
    else:
        family_code = coded(family, "algorithm.family")
    return AlgorithmIdentificationSequence(name=name, family=family_code, version=version)

"""Table E.1-1 action codes: compound actions resolved by attribute type, and dummy values.

PS3.15 E.1.1: X/Z means "X unless Z is required to keep the IOD conformant (type 2 vs
type 3)", and so on. `resolve` takes the type from deid.iod (None when the SOP class
is not in highdicom's tables) and returns one of X, Z, D, U, K, C.

Choices where the standard leaves room (also in docs/deid.md):
- unknown IOD: the action that keeps any type valid while revealing nothing
  (X/Z -> Z, X/D -> D, Z/D -> D, X/Z/D -> D, X/Z/U* -> U);
- X/Z on a type 1 attribute (the table assumes it never is): D, for validity;
- X/Z/U* on a type 2 sequence: U. Z allows "a non-zero length value that may be a
  dummy value"; a sequence whose instance UIDs are all replaced is such a value, and
  it keeps an annotation's or segmentation's reference to its (de-identified) source.
"""
from __future__ import annotations

from functools import lru_cache

from deid.uids import Pseudonymizer

TEXT_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})

_TABLE: dict[str, dict[int | None, str]] = {
    #            type 1  type 2  type 3  unknown IOD
    "X/Z":     {1: "D", 2: "Z", 3: "X", None: "Z"},
    "X/D":     {1: "D", 2: "D", 3: "X", None: "D"},
    "Z/D":     {1: "D", 2: "Z", 3: "Z", None: "D"},
    "X/Z/D":   {1: "D", 2: "Z", 3: "X", None: "D"},
    "X/Z/U*":  {1: "U", 2: "U", 3: "X", None: "U"},
    "X/Z/U":   {1: "U", 2: "U", 3: "X", None: "U"},
}


def resolve(action: str, attr_type: int | None) -> str:
    """One simple action for a table action, given the attribute's type (1, 2, 3) or None."""
    action = action.strip()
    table = _TABLE.get(action)
    if table is None:
        return action
    return table[attr_type]


# Keyword fragments of UI attributes that name a definition (a class, a syntax, a
# coding scheme, an organisation) rather than an instance: these are never mapped,
# even when the value is not a registered DICOM UID (e.g. a private SOP class).
_DEFINITIONAL = ("SOPClass", "TransferSyntax", "CodingScheme", "ContextUID", "MappingResource",
                 "ExtensionCreator", "CreatorVersion", "HomeCommunity", "RepositoryUnique",
                 "SegmentationTemplate", "ImplementationClass")


@lru_cache(maxsize=4096)  # keywords of the dictionary (or a tag in hex): asked once per UI element
def is_definitional_uid_keyword(keyword: str) -> bool:
    """True for UI attributes whose value identifies a definition, not an instance."""
    return any(part in keyword for part in _DEFINITIONAL)


def dummy_value(vr: str, original: str, pseudo: Pseudonymizer) -> object:
    """D: a non-empty value valid for the VR that carries no identifying information.

    Short strings get a keyed pseudonym of the original, so equal identifiers stay
    equal (a container id in the header and in a specimen description, say).
    """
    if vr in ("SH", "LO", "UC", "CS"):
        return pseudo.identifier(original) if original else "ANONYMIZED"
    if vr == "PN":
        return "ANONYMIZED"
    if vr in ("ST", "LT", "UT"):
        return "ANONYMIZED"
    if vr == "AE":
        return "ANONYMIZED"
    if vr == "AS":
        return "000Y"
    if vr == "UR":
        return "urn:anonymized"
    if vr in ("IS", "DS"):
        return "0"
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"):
        return 0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x00\x00"
    return None

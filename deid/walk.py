"""The one pass over a data set that applies Table E.1-1 at every depth.

Every element is visited once. Unchanged elements are carried over as the raw bytes
pydicom read (no value conversion); unchanged sequence items are reused, not copied;
an unparsed sequence with nothing to act on is kept without being parsed at all
(deid.rawscan). So a header with a large per-frame functional groups sequence costs
one cheap pass.
Actions are resolved per element from the table, the policy's options and the type
of the attribute in the IOD of the SOP class at hand (see actions.resolve).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import struct

from pydicom.charset import default_encoding
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from archive.rawitems import Unusual as RawUnusual, items as raw_items
from deid import seqcache
from deid.actions import TEXT_VRS, dummy_value, is_definitional_uid_keyword, resolve
from deid.dates import DUMMY as DUMMY_DATES, shift_value
from deid.iod import IodTypes
from deid.options import Option
from deid.rawscan import needs_walk
from deid.table import ProfileTable
from deid.uids import Pseudonymizer, is_well_known_uid

# Content item attributes (PS3.3 C.17.3 / Table 10-2) that the walk needs by tag.
VALUE_TYPE = 0x0040A040
TEXT_VALUE = 0x0040A160
CONCEPT_NAME_CODE_SEQUENCE = 0x0040A043
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
# Coded concepts whose TEXT value is a specimen / container / parent specimen identifier
# (DCM 121041, 111700, 111705): those get the same dummy as the header's identifier, so they still match.
IDENTIFIER_CONCEPTS = frozenset({("DCM", "121041"), ("DCM", "111700"), ("DCM", "111705")})

_FREE_TEXT_VRS = frozenset({"ST", "LT", "UT", "UC", "PN"})
_ALL_TEXT_VRS = _FREE_TEXT_VRS | {"LO", "SH", "UR"}
# Text handling inside sequences kept as cleaned content, weakest to strictest:
#   "scrub"     (C) known identifiers removed from LO/SH/free text;
#   "dummy"     (D or plain Z on structured content) free text replaced, codes kept;
#   "dummy_all" (D on other sequences, e.g. Person Identification Code Sequence, whose
#               codes themselves identify someone) every LO/SH/free-text value replaced.
_MODE_RANK = {None: 0, "scrub": 1, "dummy": 2, "dummy_all": 3}
_MODE_VRS = {"scrub": _ALL_TEXT_VRS, "dummy": _FREE_TEXT_VRS, "dummy_all": _ALL_TEXT_VRS}


def _stricter(current: str | None, wanted: str) -> str:
    """Nested sequences never relax the text handling of the sequence around them."""
    return wanted if _MODE_RANK[wanted] >= _MODE_RANK[current] else str(current)
VALID_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
                       "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
                       "UR", "US", "UT", "UV"})


@dataclass
class Context:
    """Everything the walk needs for one instance."""

    table: ProfileTable
    options: frozenset[Option]
    types: IodTypes
    pseudo: Pseudonymizer
    patient_pseudonym: str
    date_offset: int | None
    scrub: Callable[[str], str]
    safe_private: frozenset[tuple[str, int, int]]
    uid_cache: dict[str, str] = field(default_factory=dict)
    #: Digest of everything above that an outcome depends on (deid.seqcache); empty: no caching.
    cache_key: bytes = b""

    def map_uid(self, value: str) -> str:
        """Replace one UID (or a backslash list) unless it is a standard one."""
        parts = []
        for raw in str(value).split("\\"):
            uid = raw.strip().rstrip("\x00")
            if not uid or is_well_known_uid(uid):
                parts.append(uid)
                continue
            new = self.uid_cache.get(uid)
            if new is None:
                new = self.pseudo.uid(uid)
                self.uid_cache[uid] = new
            parts.append(new)
        return "\\".join(parts)


def _vr_of(elem: Any, tag: int) -> str:
    """The element's VR; for implicit VR the dictionary's, its first choice if ambiguous
    ("US or SS" -> "US": the walk only branches on SQ / UI / text, never on those)."""
    vr = elem.VR
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    return str(vr).split(" or ")[0]


_KEYWORDS: dict[int, str] = {}


def _keyword(tag: int) -> str:
    kw = _KEYWORDS.get(tag)
    if kw is None:
        kw = keyword_for_tag(tag) or f"{tag:08X}"
        _KEYWORDS[tag] = kw
    return kw


def _value(ds: Dataset, tag: int) -> Any:
    """The converted value of one element (only for elements we change)."""
    return ds[BaseTag(tag)].value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def holds_content_items(seq: Any, depth: int = 2) -> bool:
    """True if the sequence's items are (or directly contain) SR-style content items."""
    for item in seq:
        if VALUE_TYPE in item:
            return True
        if depth > 1:
            for tag in item.keys():
                el = item.get_item(tag)
                if _vr_of(el, tag) == "SQ" and holds_content_items(_value(item, tag), depth - 1):
                    return True
    return False


def _identifier_concept(item: Dataset) -> bool:
    if CONCEPT_NAME_CODE_SEQUENCE not in item:
        return False
    codes = _raw_codes(item.get_item(CONCEPT_NAME_CODE_SEQUENCE))
    if codes is not None:
        return any(code in IDENTIFIER_CONCEPTS for code in codes)
    for code in _value(item, CONCEPT_NAME_CODE_SEQUENCE):
        scheme = str(code.get("CodingSchemeDesignator", "")).strip()
        value = str(code.get("CodeValue", "")).strip()
        if (scheme, value) in IDENTIFIER_CONCEPTS:
            return True
    return False


def _raw_codes(elem: Any) -> list[tuple[str, str]] | None:
    """(Coding Scheme Designator, Code Value) of each item of a still-raw code sequence, read
    from its bytes; None when it is parsed already or not plain ASCII explicit VR little endian."""
    if not isinstance(elem, RawDataElement) or elem.VR != "SQ" or not elem.is_little_endian or elem.value is None:
        return None
    try:
        found = []
        for item in raw_items(elem.value):
            values = {tag: value for tag, _, value in item if tag in (CODE_VALUE, CODING_SCHEME_DESIGNATOR)}
            found.append(tuple(values.get(t, b"").decode("ascii").strip(" \x00")
                               for t in (CODING_SCHEME_DESIGNATOR, CODE_VALUE)))
        return found
    except (RawUnusual, struct.error, UnicodeDecodeError):
        return None


def walk(ds: Dataset, ctx: Context, path: tuple[str, ...] = (), text_mode: str | None = None,
         reuse: bool = False) -> Dataset:
    """Return a data set with the profile applied to `ds` and everything inside it.

    `text_mode` is set inside sequences the profile keeps only as cleaned content
    (D / C / structured Z): free text there that the table does not list (TextValue,
    UnformattedTextValue, names) is replaced ("dummy") or scrubbed ("scrub").
    With `reuse` (sequence items), an item the profile leaves untouched is returned
    as it is instead of being copied: a parsed 100,000-item per-frame sequence then
    costs one pass and no new objects.
    """
    private_keep = _safe_private_tags(ds, ctx) if ctx.safe_private else set()
    charset = _charset(ds) if not path and ctx.cache_key else None  # for deid.seqcache, top level only
    kept: list[Any] = []
    changed = False
    # Dataset._dict holds the elements as read (raw until accessed); going through it
    # directly avoids pydicom's per-access tag conversion on 100,000-item sequences.
    for tag, elem in list(ds._dict.items()):
        tag = int(tag)
        group = tag >> 16
        if group in (0x0000, 0x0002):  # command / file meta groups do not belong in a data set
            changed = True
            continue
        if group & 1:
            if tag in private_keep:
                kept.append(elem if path else _loaded(ds, tag, elem))
            else:
                changed = True
            continue
        if 0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF:
            # Overlays and curves: Table E.1-1 removes their data and comments; the
            # Clean Graphics option would keep them cleaned, which needs a person
            # looking at the bitmap, so the whole repeating group goes (documented).
            changed = True
            continue
        vr = _vr_of(elem, tag)
        rule = ctx.table.by_tag.get(tag)
        if rule is None and (tag not in DicomDictionary or vr not in VALID_VRS):
            # Not a standard attribute pydicom knows, or not even a valid VR (garbage in
            # a malformed item): nothing says what it holds, so it does not pass.
            changed = True
            continue
        if not path and vr == "SQ" and ctx.cache_key and seqcache.cacheable(elem):
            new = seqcache.deidentified(elem, ctx.cache_key, charset, text_mode,
                                        lambda: _element(ds, tag, elem, vr, rule, ctx, path, text_mode))
        else:
            new = _element(ds, tag, elem, vr, rule, ctx, path, text_mode)
        if new is None:
            changed = True
            continue
        if new is elem and not path:  # only the top level holds values left unread
            new = _loaded(ds, tag, elem)
        if new is not elem and new is not ds._dict.get(tag):
            changed = True
        kept.append(new)
    if reuse and not changed:
        return ds
    out = Dataset()
    # Same encoding as the source, so that writing copies raw elements instead of
    # decoding them (pydicom decodes everything when the encodings seem to differ).
    out.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    table = out._dict
    for new in kept:
        if new.tag >> 16 & 1 or (new.VR == "SQ" and not isinstance(new, RawDataElement)):
            out.add(new)  # pydicom notes a private element's creator and a sequence's pixel representation
        else:
            table[BaseTag(new.tag)] = new  # all Dataset.add would do for any other element of a new data set
    return out


def _element(ds: Dataset, tag: int, elem: Any, vr: str, rule: Any, ctx: Context, path: tuple[str, ...],
             text_mode: str | None) -> Any:
    """One standard element through the profile: the element to keep (maybe ``elem`` itself) or None."""
    if rule is None:
        return _unlisted(ds, tag, elem, vr, ctx, path, text_mode)
    action = resolve(ctx.table.actions(ctx.options)[tag], ctx.types.type_of(path, _keyword(tag)))
    return _apply(ds, tag, elem, vr, action, ctx, path, text_mode)


def _charset(ds: Dataset) -> Any:
    """The character set the writer encodes the top level of ``ds`` in."""
    return ds.get("SpecificCharacterSet", default_encoding)


def _loaded(ds: Dataset, tag: int, elem: Any) -> Any:
    """A kept element whose value the reader left unread (a large one after the pixel data), now read.

    Only what the profile keeps is read: a removed Data Set Trailing Padding never is.
    """
    if isinstance(elem, RawDataElement) and elem.value is None and elem.length:
        return ds.get_item(tag)  # reads the value from the file the data set came from
    return elem


def _safe_private_tags(ds: Dataset, ctx: Context) -> set[int]:
    """Private elements (and their creators) the Retain Safe Private list names."""
    keep: set[int] = set()
    creators: dict[tuple[int, int], str] = {}
    for tag in ds.keys():
        tag = int(tag)
        group, elem = tag >> 16, tag & 0xFFFF
        if group & 1 and 0x10 <= elem <= 0xFF:
            creators[(group, elem)] = str(_value(ds, tag)).strip()
    for tag in ds.keys():
        tag = int(tag)
        group, elem = tag >> 16, tag & 0xFFFF
        if group & 1 and elem >= 0x1000:
            creator = creators.get((group, elem >> 8))
            if creator is not None and (creator, group, elem & 0xFF) in ctx.safe_private:
                keep.add(tag)
                keep.add((group << 16) | (elem >> 8))
    return keep


def _recurse(ds: Dataset, tag: int, ctx: Context, path: tuple[str, ...], text_mode: str | None) -> DataElement:
    sub = path + (_keyword(tag),)
    seq = _value(ds, tag)
    items = [walk(item, ctx, sub, text_mode, reuse=True) for item in seq]
    if all(new is old for new, old in zip(items, seq)):
        return ds.get_item(tag)  # nothing inside changed: keep the element itself
    return DataElement(tag, "SQ", Sequence(items))


def _actionable(ctx: Context, text_mode: str | None) -> Callable[[int, str], bool]:
    """For the raw scan: would the walk change or drop an element with this tag and VR?"""
    def check(tag: int, vr: str) -> bool:
        group = tag >> 16
        if group & 1 or group in (0x0000, 0x0002) or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            return True
        if tag in ctx.table.by_tag or tag == TEXT_VALUE:
            return True
        if tag not in DicomDictionary or vr not in VALID_VRS:
            return True  # the walk drops it
        if vr == "UI":
            return not is_definitional_uid_keyword(_keyword(tag))
        return text_mode is not None and vr in _MODE_VRS[text_mode]
    return check


def _inert_raw_sequence(elem: Any, ctx: Context, text_mode: str | None) -> bool:
    """True when a still-raw (unparsed) sequence holds nothing the profile acts on."""
    if not isinstance(elem, RawDataElement) or not elem.is_little_endian or not elem.value:
        return False
    return not needs_walk(elem.value, elem.is_implicit_VR, _actionable(ctx, text_mode))


def _unlisted(ds: Dataset, tag: int, elem: Any, vr: str, ctx: Context, path: tuple[str, ...],
              text_mode: str | None) -> Any:
    """An element Table E.1-1 does not list: kept, with UIDs mapped and cleaned-content text handled."""
    if vr == "SQ":
        if _inert_raw_sequence(elem, ctx, text_mode):
            return elem  # kept byte for byte, never parsed
        return _recurse(ds, tag, ctx, path, text_mode)
    if vr == "UI":
        if Option.RETAIN_UIDS in ctx.options or is_definitional_uid_keyword(_keyword(tag)):
            return elem
        value = _value(ds, tag)
        return DataElement(tag, vr, ctx.map_uid(_text(value))) if value else elem
    if tag == TEXT_VALUE and _identifier_concept(ds):
        value = _text(_value(ds, tag))
        return DataElement(tag, vr, ctx.pseudo.identifier(value) if value else value)
    if text_mode is not None and vr in _MODE_VRS[text_mode]:
        value = _text(_value(ds, tag))
        if not value:
            return elem
        if text_mode == "scrub":
            return DataElement(tag, vr, ctx.scrub(value))
        return DataElement(tag, vr, dummy_value(vr, value, ctx.pseudo))
    return elem


def _apply(ds: Dataset, tag: int, elem: Any, vr: str, action: str, ctx: Context,
           path: tuple[str, ...], text_mode: str | None) -> Any:
    """Carry out one simple action (X, K, Z, D, U, C) on one listed element."""
    if action == "X":
        return None
    if action == "K":
        if vr == "SQ":
            return _recurse(ds, tag, ctx, path, text_mode)
        return elem
    if tag in (PATIENT_ID, PATIENT_NAME) and not path:
        # Z (name) and Z/D (id): the keyed pseudonym is the "dummy value consistent
        # with the VR" the standard allows, and it keeps the patient together.
        return DataElement(tag, vr, ctx.patient_pseudonym)
    if action == "Z":
        if vr == "SQ":
            plain_z = ctx.table.by_tag[tag].basic == "Z"
            if plain_z and holds_content_items(_value(ds, tag)):
                # Z allows a non-zero dummy value consistent with the VR; for a
                # sequence of structured content the table empties outright (Specimen
                # Preparation Sequence) we use its cleaned content, so coded stains and
                # anatomy survive. X/Z resolved to Z (Acquisition Context) is emptied.
                return _recurse(ds, tag, ctx, path, _stricter(text_mode, "dummy"))
            return DataElement(tag, vr, Sequence())
        return DataElement(tag, vr, None)
    if action == "U":
        if vr == "SQ":
            return _recurse(ds, tag, ctx, path, text_mode)
        if vr == "UI":  # Retain UIDs turns U into K through the table row itself
            value = _value(ds, tag)
            return DataElement(tag, vr, ctx.map_uid(_text(value))) if value else elem
        action = "D"
    if action == "D":
        if vr == "SQ":
            wanted = "dummy" if holds_content_items(_value(ds, tag)) else "dummy_all"
            return _recurse(ds, tag, ctx, path, _stricter(text_mode, wanted))
        if vr == "UI":
            value = _value(ds, tag)
            return DataElement(tag, vr, ctx.map_uid(_text(value)) if value else ctx.pseudo.uid(""))
        if vr in DUMMY_DATES:
            return DataElement(tag, vr, DUMMY_DATES[vr])
        value = _value(ds, tag) if vr in TEXT_VRS else None
        return DataElement(tag, vr, dummy_value(vr, _text(value), ctx.pseudo))
    if action == "C":
        return _clean(ds, tag, elem, vr, ctx, path, text_mode)
    raise ValueError(f"unknown action {action!r}")  # pragma: no cover - table values are fixed


def _clean(ds: Dataset, tag: int, elem: Any, vr: str, ctx: Context, path: tuple[str, ...],
           text_mode: str | None) -> Any:
    """C: keep a value of similar meaning without identifying information."""
    if vr == "SQ":
        return _recurse(ds, tag, ctx, path, _stricter(text_mode, "scrub"))
    if vr in DUMMY_DATES:
        if ctx.date_offset is None:  # C on a date only comes with the modified-dates option
            return DataElement(tag, vr, DUMMY_DATES[vr])
        value = _text(_value(ds, tag))
        return DataElement(tag, vr, shift_value(vr, value, ctx.date_offset)) if value else elem
    if vr == "UI":
        value = _value(ds, tag)
        return DataElement(tag, vr, ctx.map_uid(_text(value))) if value else elem
    if vr in TEXT_VRS:
        value = _value(ds, tag)
        if value is None or value == "":
            return elem
        if isinstance(value, (list, tuple, MultiValue)):
            return DataElement(tag, vr, [ctx.scrub(str(v)) for v in value])
        return DataElement(tag, vr, ctx.scrub(str(value)))
    return elem

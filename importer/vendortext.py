"""Vendor text metadata: collect it, so nothing of it reaches a DICOM header unmapped.

Scanners write free text into the file (Aperio's ImageDescription holds the user, the
file path, dates and a barcode; NDPI and Philips tags hold more). The converter maps
the few facts a repository needs to DICOM attributes on purpose; ``scrub`` then removes
any other text element of a converted header that carries a piece of that vendor text,
whichever library put it there.
"""
from __future__ import annotations

import re
from pathlib import Path

from pydicom.dataset import Dataset

_SPLIT = re.compile(r"[|\r\n;]+")
_XML_TEXT = re.compile(r">([^<>]+)<|\"([^\"]+)\"")
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "UR"})
#: Attributes the converter fills from vendor metadata on purpose (the facts, not the text).
MAPPED = frozenset({"Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber"})
#: Code items carry coded meanings the converter or the manifest chose.
_CODE_PARTS = frozenset({"CodeValue", "CodingSchemeDesignator", "CodeMeaning", "CodingSchemeVersion"})
_MIN_TOKEN = 4
_LONG_WORD = 8


def _identifying(value: str) -> bool:
    """Worth scrubbing: a word with a digit, a space or punctuation (an id, a name, a path), or a long word.

    A short plain word ("slide", "macro") is left alone: it is in too many standard values
    (Position Reference Indicator SLIDE_CORNER) to say anything about the file.
    """
    if len(value) < _MIN_TOKEN or not any(c.isalpha() for c in value):
        return False
    return not value.isalpha() or len(value) >= _LONG_WORD


def tokens_of(text: str) -> set[str]:
    """The values inside one vendor text: ``key = value`` fields, lines, XML text and attribute values."""
    out: set[str] = set()
    pieces = _SPLIT.split(text)
    for m in _XML_TEXT.finditer(text):
        pieces.append(m.group(1) or m.group(2))
    for piece in pieces:
        value = piece.split("=", 1)[1] if "=" in piece and "<" not in piece else piece
        value = value.strip()
        if _identifying(value):
            out.add(value)
    return out


def collect(path: Path, source: str) -> set[str]:
    """Every piece of text the file carries outside its pixels (TIFF ASCII tags, OpenSlide properties)."""
    texts: list[str] = []
    if source == "opentile":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                for tag in page.tags:
                    if isinstance(tag.value, str):
                        texts.append(tag.value)
    else:
        import openslide

        with openslide.OpenSlide(str(path)) as slide:
            texts += [str(v) for v in slide.properties.values()]
    texts.append(path.name)
    texts.append(path.stem)
    return {t for text in texts for t in tokens_of(text)}


def scrub(ds: Dataset, tokens: set[str], keep: frozenset[str] = frozenset()) -> list[str]:
    """Delete text elements (anywhere in ``ds``) holding a vendor token; returns the keywords removed."""
    removed: list[str] = []
    lowered = [t.lower() for t in tokens]

    def walk(item: Dataset) -> None:
        for elem in list(item):
            if elem.VR == "SQ":
                for child in elem.value:
                    walk(child)
                continue
            keyword = elem.keyword
            if elem.VR not in _TEXT_VRS or keyword in MAPPED or keyword in _CODE_PARTS or keyword in keep:
                continue
            values = elem.value if isinstance(elem.value, (list, tuple)) else [elem.value]
            text = " ".join(str(v) for v in values if v is not None).lower()
            if text and any(t in text for t in lowered):
                del item[elem.tag]
                removed.append(keyword or str(elem.tag))

    walk(ds)
    return removed

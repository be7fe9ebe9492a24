"""Which vendor format a file is, and whether its tiles can be copied without re-encoding.

opentile reads SVS, NDPI, Philips TIFF, 3DHistech TIFF and OME-TIFF tile by tile, so
their compressed tiles go into DICOM frames unchanged (lossless). Every other format
OpenSlide reads (MRXS, SCN, VMS, BIF, generic tiled TIFF...) is decoded by OpenSlide and
re-encoded, which is recorded in Lossy Image Compression.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from archive.errors import NotASlide, UnsupportedFormat

#: Extensions OpenSlide reads that opentile does not (OpenSlide's format list).
OPENSLIDE_EXTENSIONS = frozenset({".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff"})
#: Extensions a slide scanner writes; anything else in a folder is not a candidate.
VENDOR_EXTENSIONS = frozenset({".svs", ".ndpi", ".tif", ".tiff"}) | OPENSLIDE_EXTENSIONS
#: Files that look like slides but no reader here opens (named so the error says so).
KNOWN_UNSUPPORTED = {".czi": "Zeiss CZI", ".isyntax": "Philips iSyntax", ".qptiff": "Akoya QPTIFF",
                     ".vsi": "Olympus VSI", ".dcm": "DICOM"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_OPENTILE_NAMES = {"NDPI": "Hamamatsu NDPI", "SVS": "Aperio SVS", "PHILIPS_TIFF": "Philips TIFF",
                   "HISTECH_TIFF": "3DHistech TIFF", "OME_TIFF": "OME-TIFF"}


@dataclasses.dataclass(frozen=True)
class VendorFormat:
    name: str  # e.g. "Aperio SVS"
    source: str  # the wsidicomizer source: "opentile" (tiles copied) or "openslide" (re-encoded)

    @property
    def lossless(self) -> bool:
        """True when the source's compressed tiles become the DICOM frames unchanged."""
        return self.source == "opentile"


def is_candidate(path: Path) -> bool:
    """A file a folder walk should treat as a vendor slide (by its extension)."""
    return path.suffix.lower() in VENDOR_EXTENSIONS or path.suffix.lower() in KNOWN_UNSUPPORTED


def detect(path: Path) -> VendorFormat:
    """The format of ``path``, or NotASlide / UnsupportedFormat saying why it cannot be imported."""
    suffix = path.suffix.lower()
    if suffix in KNOWN_UNSUPPORTED and suffix != ".dcm":
        raise UnsupportedFormat(f"{KNOWN_UNSUPPORTED[suffix]} files are not supported (docs/import.md lists "
                                "the formats)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise NotASlide(f"cannot read the file ({e.strerror})") from None
    if magic in _TIFF_MAGIC:
        from opentile import OpenTile

        found = OpenTile.detect_format(path)
        if found is not None:
            return VendorFormat(_OPENTILE_NAMES.get(found.name, found.value), "opentile")
    if suffix in OPENSLIDE_EXTENSIONS or magic in _TIFF_MAGIC:
        name = _openslide_format(path)
        if name is not None:
            return VendorFormat(name, "openslide")
    if magic in _TIFF_MAGIC:
        raise NotASlide("a TIFF file that no slide reader recognises (truncated, or not a whole-slide image)")
    raise NotASlide("not a whole-slide image file this archive can read")


def _openslide_format(path: Path) -> str | None:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        return None
    if vendor is None:
        return None
    try:  # detect_format reads only the header; opening checks the rest (a truncated file fails here)
        openslide.OpenSlide(str(path)).close()
    except openslide.OpenSlideError:
        return None
    return f"{vendor} (OpenSlide)"

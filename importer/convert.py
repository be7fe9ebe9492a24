"""Vendor file -> temporary Part 10 files, one per instance, through wsidicomizer.

Knows nothing of storage: it writes into ``out_dir`` and returns the paths; the caller
stores them through the archive's one ingest path (which de-identifies) and removes
them. The header of every instance is finished here: UIDs from ``2.25.`` derived from
the file's content (the same file converts to the same UIDs, so a re-run finds what
it stored), the manifest's specimen, stain, anatomy and case id, the vendor facts a
repository needs (magnification, scanner), and no other vendor text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
from pathlib import Path
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from archive.errors import ConversionRefused, NotASlide

from . import vendortext
from .formats import VendorFormat
from .manifest import Code, Entry

log = logging.getLogger(__name__)
#: Levels whose uncompressed size reaches this get the Extended Offset Table (64-bit offsets);
#: smaller ones the Basic Offset Table, which every reader understands.
EOT_FROM_BYTES = 4 * 1024**3
#: A native (uncompressed) Pixel Data element has a 32-bit length; one frame count is an IS.
_MAX_NATIVE_BYTES = 0xFFFFFFFE
_MAX_FRAMES = 2**31 - 1
_MANUFACTURERS = {"Aperio SVS": "Aperio", "Hamamatsu NDPI": "Hamamatsu", "Philips TIFF": "Philips",
                  "3DHistech TIFF": "3DHistech"}
Progress = Callable[[int, int], None]  # (frames written, frames in the file)


@dataclasses.dataclass(frozen=True)
class Level:
    """What the limits check needs to know about one pyramid level."""

    columns: int
    rows: int
    tile_columns: int
    tile_rows: int
    samples: int
    bits: int
    encapsulated: bool

    @property
    def frames(self) -> int:
        return -(-self.columns // self.tile_columns) * -(-self.rows // self.tile_rows)

    @property
    def uncompressed_bytes(self) -> int:
        return self.frames * self.tile_columns * self.tile_rows * self.samples * self.bits // 8


def check_level(level: Level, index: int) -> None:
    """Refuse, with the reason, a level that one WSI instance cannot hold (no concatenations are made)."""
    if level.frames > _MAX_FRAMES:
        raise ConversionRefused(f"level {index} has {level.frames} tiles, more than one instance can number")
    if not level.encapsulated and level.uncompressed_bytes > _MAX_NATIVE_BYTES:
        raise ConversionRefused(f"level {index} is {level.uncompressed_bytes} bytes uncompressed, over the "
                                "4 GiB a native Pixel Data element holds; concatenations are not made")


class ContentUids:
    """UIDs under ``2.25.`` from the file's fingerprint and a counter: deterministic per file."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        self.counter = itertools.count()

    def __call__(self) -> UID:
        digest = hashlib.sha256(f"slidearchive-import:{self.fingerprint}:{next(self.counter)}".encode()).digest()
        return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def _code(code: Code) -> Dataset:
    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = code.value, code.scheme, code.meaning
    return ds


def _content_item(value_type: str, name: Code, **value: object) -> Dataset:
    item = Dataset()
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([_code(name)])
    for key, val in value.items():
        setattr(item, key, val)
    return item


_SPECIMEN_ID = Code("DCM", "121041", "Specimen Identifier")
_PROCESSING_TYPE = Code("DCM", "111701", "Processing type")
_STAINING = Code("SCT", "127790008", "Staining")
_USING_SUBSTANCE = Code("SCT", "424361007", "Using substance")


def apply_entry(ds: Dataset, entry: Entry, specimen_uid: UID) -> None:
    """The manifest's fields as DICOM: Patient ID (pseudonymised by de-identification), specimen, stain, anatomy."""
    if entry.case_id:
        ds.PatientID = entry.case_id
        ds.PatientName = entry.case_id
    if not (entry.specimen or entry.stains or entry.anatomy):
        return
    descriptions = ds.get("SpecimenDescriptionSequence") or Sequence([Dataset()])
    desc = descriptions[0]
    if entry.specimen:
        desc.SpecimenIdentifier = entry.specimen
        ds.ContainerIdentifier = entry.specimen
    desc.setdefault("SpecimenIdentifier", ds.get("ContainerIdentifier", "UNKNOWN"))
    desc.setdefault("SpecimenUID", specimen_uid)
    if entry.anatomy:
        desc.PrimaryAnatomicStructureSequence = Sequence([_code(c) for c in entry.anatomy])
    if entry.stains:
        step = Dataset()
        step.SpecimenPreparationStepContentItemSequence = Sequence(
            [_content_item("TEXT", _SPECIMEN_ID, TextValue=str(desc.SpecimenIdentifier)),
             _content_item("CODE", _PROCESSING_TYPE, ConceptCodeSequence=Sequence([_code(_STAINING)]))]
            + [_content_item("CODE", _USING_SUBSTANCE, ConceptCodeSequence=Sequence([_code(c)])) for c in entry.stains])
        desc.SpecimenPreparationSequence = Sequence([step])
    ds.SpecimenDescriptionSequence = Sequence([desc])


class _Finisher:
    """wsidicomizer's metadata post-processor: called with each instance's header before it is written."""

    def __init__(self, fmt: VendorFormat, entry: Entry | None, tokens: set[str], magnification: float | None,
                 specimen_uid: UID):
        self.fmt, self.entry, self.tokens = fmt, entry, tokens
        self.magnification, self.specimen_uid = magnification, specimen_uid
        self.removed: set[str] = set()

    def __call__(self, ds: Dataset, _metadata) -> Dataset:
        if str(ds.get("Manufacturer", "")) in ("", "Unknown") and self.fmt.name in _MANUFACTURERS:
            ds.Manufacturer = _MANUFACTURERS[self.fmt.name]
        if self.magnification:
            for path in ds.get("OpticalPathSequence") or []:
                path.ObjectiveLensPower = f"{self.magnification:g}"
        if self.entry is not None:
            apply_entry(ds, self.entry, self.specimen_uid)
        keep = frozenset({"PatientID", "PatientName", "SpecimenIdentifier", "ContainerIdentifier", "TextValue"}
                         if self.entry else ())
        self.removed.update(vendortext.scrub(ds, self.tokens, keep))
        return ds


def _magnification(path: Path, fmt: VendorFormat) -> float | None:
    try:
        if fmt.lossless:
            from opentile import OpenTile

            with OpenTile.open(path) as tiler:
                return tiler.metadata.magnification
        import openslide

        with openslide.OpenSlide(str(path)) as slide:
            value = slide.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
            return float(value) if value else None
    except (ValueError, TypeError, KeyError):
        return None


def _levels(wsi) -> list[Level]:
    out = []
    for level in wsi.levels:
        image = level.default_instance.image_data
        out.append(Level(level.size.width, level.size.height, image.tile_size.width, image.tile_size.height,
                         image.samples_per_pixel, image.bits, image.transfer_syntax.is_encapsulated))
    return out


def _import_wsidicomizer():
    """wsidicomizer's classes, without the change its import makes to pydicom's global config.

    Importing wsidicomizer turns on pydicom's future behaviour and strict validation for
    the whole process; the archive's ingest in the same process (import, tests) would then
    refuse to write de-identified headers that carry imperfect values. Restore what was set.
    """
    from pydicom import config

    saved = (config._use_future, config.INVALID_KEYWORD_BEHAVIOR, config.enforce_valid_values,
             config.settings._writing_validation_mode)
    try:
        from wsidicomizer import WsiDicomizer
        from wsidicomizer.wsidicomizer import SourceIdentifier
    finally:
        (config._use_future, config.INVALID_KEYWORD_BEHAVIOR, config.enforce_valid_values,
         config.settings._writing_validation_mode) = saved
    return WsiDicomizer, SourceIdentifier


def convert(path: Path, fmt: VendorFormat, out_dir: Path, entry: Entry | None, fingerprint: str,
            workers: int = 1, progress: Progress | None = None, eot_from: int = EOT_FROM_BYTES) -> list[Path]:
    """Write every instance of the slide at ``path`` into ``out_dir``; returns the files written."""
    from wsidicom.codec import JpegSettings

    WsiDicomizer, SourceIdentifier = _import_wsidicomizer()

    uids = ContentUids(fingerprint)
    finisher = _Finisher(fmt, entry, vendortext.collect(path, fmt.source), _magnification(path, fmt), uids())
    source = SourceIdentifier.OPENTILE if fmt.lossless else SourceIdentifier.OPENSLIDE
    try:
        wsi = WsiDicomizer.open(path, tile_size=512, include_confidential=True, metadata_post_processor=finisher,
                                encoding=JpegSettings(quality=90), preferred_source=source, uid_generator=uids)
    except NotImplementedError:
        raise NotASlide(f"{fmt.name}: the reader does not support this file") from None
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise NotASlide(f"{fmt.name}: cannot read the file ({type(e).__name__}; truncated or damaged?)") from None
    written: list[Path] = []
    with wsi:
        levels = _levels(wsi)
        for i, level in enumerate(levels):
            check_level(level, i)
        total = sum(level.frames for level in levels) + 3  # + thumbnail, label, overview
        done = 0
        for i, level in enumerate(levels):
            table = "eot" if level.uncompressed_bytes >= eot_from else "bot"
            written += wsi.save(out_dir, uids, workers, offset_table=table, include_levels=[i],
                                include_labels=False, include_overviews=False, include_thumbnails=False)
            done += level.frames
            if progress:
                progress(done, total)
        written += wsi.save(out_dir, uids, workers, offset_table="bot", include_levels=[], include_labels=True,
                            include_overviews=True, include_thumbnails=True)
        if progress:
            progress(total, total)
    if finisher.removed:
        log.info("vendor text removed from %s", ", ".join(sorted(finisher.removed)))
    return [Path(str(p)) for p in written]

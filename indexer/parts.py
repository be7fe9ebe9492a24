"""What each instance header contributes to its series' search document, read once per instance.

The index worker used to rebuild a series' document from every header of the series on
each outbox event: quadratic in the series' size (a 10,000-instance TMA or pipeline result)
and, past the catalog's header cache, a file read per header per event. Now a header is
read once into an ``InstanceParts`` (plain, hashable values), and ``SeriesParts`` merges
the parts in instance order into ordered sets, counts and first-seen values, so adding an
instance costs the same whatever the series' size. ``documents.build_document`` makes the
document from the merged values; built from the same headers in the same order, it is the
document a walk over all headers gives (tests/test_index_incremental.py).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from struct import Struct
from typing import Any, Callable, Iterable

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import VR

from archive.recent import Recent

from .documents import ANN_SOP_CLASS, QIDO_KEYS, SEG_SOP_CLASS, WSI_SOP_CLASS
from .documents import _age_years as age_years
from .documents import _codes as codes
from .documents import _date as valid_date
from .documents import _float as float_or_none
from .documents import _items as items
from .documents import _qido_text as qido_text
from .documents import _str as text
from .documents import _unique as unique

USING_SUBSTANCE = "SCT:424361007"  # SNOMED "Using substance": the stain of a staining step (CID 8112)
PROCESSING_TYPE = "DCM:111701"

Code = tuple[str, str]  # ("SCHEME:VALUE", meaning)


@dataclass(frozen=True)
class Head:
    """What a document takes from its series' first instance only (patient, study, series, scanner)."""

    series_uid: str
    study_uid: str
    patient: tuple[str | None, str | None, str | None, int | None, tuple[str, ...]]  # id, sex, age, years, species
    study: tuple[str | None, str | None]  # date, description
    series: tuple[str | None, str | None, str | None]  # modality, description, body part
    scanner: tuple[str | None, str | None, tuple[str, ...]]  # manufacturer, model, software versions
    qido: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Specimen:
    container_id: str | None
    containers: tuple[Code, ...]
    ids: tuple[str, ...]
    anatomy: tuple[Code, ...]
    types: tuple[Code, ...]
    stains: tuple[Code, ...]
    processing: tuple[str, ...]
    preparation: tuple[Code, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class OpticalPath:
    identifier: str | None  # None: counted by position, as the series' paths are met
    types: tuple[Code, ...]
    colors: tuple[Code, ...]
    wavelength: float | None
    power: float | None  # objective lens power, when positive
    texts: tuple[str, ...]


@dataclass(frozen=True)
class AIParts:
    """One ANN or SEG instance's share of the AI summary of every slide it references."""

    algorithms: tuple[str, ...]
    versions: tuple[str, ...]
    group_counts: tuple[str, ...]
    property_types: tuple[Code, ...]
    annotations: int
    groups: int


@dataclass(frozen=True)
class InstanceParts:
    head: Head
    sop_class: str
    specimen: Specimen
    optical: tuple[OpticalPath, ...]
    flavor: str | None  # ImageType value 3 of a WSI instance; None for other classes
    level: tuple[int, int, float | None] | None  # a VOLUME instance's columns, rows, pixel spacing (mm)
    references: tuple[str, ...]
    ai: AIParts | None


# --- one header ------------------------------------------------------------------------


def instance_parts(ds: Dataset, memo: bool = False) -> InstanceParts:
    """Read everything the document needs from one header (only these elements get parsed).

    ``memo``: the header is the catalog's, read-only, its sequences shared (``_of_sequence``);
    a header whose elements read here have the bytes of an earlier one's gets its parts
    (``_parts_key``) without converting any of them.
    """
    key = _parts_key(ds) if memo else None
    if key is None:
        return _read_parts(ds, memo)
    hit = _parts_memo.get(key[0])
    if hit is not None and all(a is b for a, b in zip(hit[0], key[1])):
        return hit[1]
    parts = _read_parts(ds, memo)
    _parts_memo.put(key[0], (key[1], parts))
    return parts


#: Every top-level element ``_read_parts`` reads (tests/test_index_parts.py checks it reads no other).
READ_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows",
    "SharedFunctionalGroupsSequence", "PixelSpacing", "ReferencedSeriesSequence", "ContainerIdentifier",
    "ContainerTypeCodeSequence", "SpecimenDescriptionSequence", "OpticalPathSequence", "AnnotationGroupSequence",
    "SegmentSequence", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "PatientSex", "PatientAge",
    "PatientSpeciesCodeSequence", "StudyDate", "StudyDescription", "Modality", "SeriesDescription",
    "BodyPartExamined", "Manufacturer", "ManufacturerModelName", "SoftwareVersions", *(k for k, _ in QIDO_KEYS))
_READ_TAGS = tuple(dict.fromkeys(BaseTag(tag_for_keyword(k)) for k in READ_KEYWORDS))

#: Parts kept by the bytes of the elements they were read from, over every series the worker reads
#: (in each memo); a header whose key would hold more than MEMO_KEY_BYTES is read, not kept.
PARTS_MEMO = 256
MEMO_KEY_BYTES = 16 * 1024
_parts_memo: Recent[tuple[Any, ...], tuple[tuple[Any, ...], InstanceParts]] = Recent(PARTS_MEMO)


def _parts_key(ds: Dataset) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """(key, pinned): what ``_read_parts(ds)`` depends on, as the raw bytes of the elements it reads
    (with the dataset's encoding) and the sequences Catalog._share_sequences shares, by identity
    (``pinned`` holds them, so their ids are not reused while the entry lives).

    The instances of a series mostly differ only in elements the document does not read (SOP
    Instance UID, instance number), and converting the ~50 that it does was most of what a
    small instance cost the worker. None when an element is converted already or left on disk:
    those are read. The values are the stored (de-identified) header's, as the parts hold them.
    """
    elements = ds._dict
    key: list[Any] = [ds.original_encoding, str(ds.original_character_set)]
    pinned = []
    kept = 0
    for tag in _READ_TAGS:
        elem = elements.get(tag)
        if elem is None:
            key.append(None)
        elif isinstance(elem, RawDataElement):
            if elem.value is None:
                return None
            kept += len(elem.value)
            if kept > MEMO_KEY_BYTES:
                return None
            key.append((elem.VR, elem.value))
        elif elem.VR == "SQ":
            key.append(id(elem))
            pinned.append(elem)
        else:
            return None
    return tuple(key), tuple(pinned)


#: How much of a stored file ``_file_key`` reads: the elements the document reads come before the
#: pixel data, and a header longer than this is read by pydicom instead.
FILE_KEY_BYTES = 64 * 1024
_MAX_READ_TAG = max(_READ_TAGS)
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_SHORT_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2) - _LONG_VRS
_TRANSFER_SYNTAX = 0x00020010
_KEY_TAGS = frozenset((*_READ_TAGS, _TRANSFER_SYNTAX))
_ELEMENT = Struct("<HH2sH")  # tag, explicit VR, and the length of a VR with a 2-byte length
_LONG_LENGTH = Struct("<L")
_file_memo: Recent[tuple[Any, ...], InstanceParts] = Recent(PARTS_MEMO)


def stored_parts(path: Path | None, header: Callable[[], Dataset | None]) -> InstanceParts | None:
    """The parts of a stored instance (None: its header is gone), ``header()`` parsed only when no
    earlier file had the same bytes in every element the parts are read from (``_file_key``).

    Parsing the header (pydicom, ~80 elements) was most of the worker's CPU per small instance once
    the parts were memoized; scanning the file's bytes for the elements read costs a fraction of
    that. A storage id names one immutable file (archive/storage), so its bytes are its header's.
    """
    key = _file_key(path) if path is not None else None
    hit = _file_memo.get(key) if key is not None else None
    if hit is not None:
        return hit
    ds = header()
    if ds is None:
        return None
    parts = instance_parts(ds, memo=True)
    if key is not None:
        _file_memo.put(key, parts)
    return parts


def _file_key(path: Path) -> tuple[Any, ...] | None:
    """The transfer syntax and the (VR, bytes) of each element ``_read_parts`` reads, from a Part 10
    file's top level; None unless the file is plainly what this scan understands (explicit VR
    little endian, not deflated, defined lengths up to the last element read, within FILE_KEY_BYTES)."""
    try:
        with open(path, "rb") as f:
            data = f.read(FILE_KEY_BYTES)
    except OSError:
        return None
    if data[128:132] != b"DICM":
        return None
    size, pos, syntax, kept = len(data), 132, None, 0
    found: dict[int, tuple[bytes, bytes]] = {}
    while True:
        if pos + 8 > size:
            if size == FILE_KEY_BYTES or pos != size:
                return None  # cut off by the read, or a torn element
            break
        group, number, vr, length = _ELEMENT.unpack_from(data, pos)
        tag = group << 16 | number
        if group != 2 and syntax is None:
            syntax = _explicit_little_endian(found.get(_TRANSFER_SYNTAX, (b"", b""))[1])
            if syntax is None:
                return None
        if group != 2 and tag > _MAX_READ_TAG:
            break
        if vr in _LONG_VRS:
            if pos + 12 > size:
                return None
            length, start = _LONG_LENGTH.unpack_from(data, pos + 8)[0], pos + 12
        elif vr in _SHORT_VRS:
            start = pos + 8
        else:
            return None
        end = start + length
        if length == 0xFFFFFFFF or end > size:
            return None
        if tag in _KEY_TAGS:
            kept += length
            if kept > MEMO_KEY_BYTES:
                return None
            found[tag] = (vr, data[start:end])
        pos = end
    if syntax is None:
        return None
    return (syntax, *(found.get(tag) for tag in _READ_TAGS))


@lru_cache(maxsize=64)
def _explicit_little_endian(raw: bytes) -> str | None:
    """The file meta's transfer syntax UID (its raw value) when its dataset is explicit VR little
    endian, not deflated; cached: a few syntaxes, asked once per stored file."""
    uid = UID(raw.rstrip(b"\0 ").decode("ascii", "replace"))
    if not uid.is_transfer_syntax or uid.is_implicit_VR or not uid.is_little_endian or uid.is_deflated:
        return None
    return str(uid)


def _read_parts(ds: Dataset, memo: bool) -> InstanceParts:
    sop_class = str(ds.get("SOPClassUID") or "")
    flavor = level = None
    if sop_class == WSI_SOP_CLASS:
        flavor = _image_flavor(ds)
        cols, rows = ds.get("TotalPixelMatrixColumns"), ds.get("TotalPixelMatrixRows")
        if flavor == "VOLUME" and cols and rows:
            level = (int(cols), int(rows), _pixel_spacing_mm(ds))
    refs = tuple(unique(text(r.get("SeriesInstanceUID")) for r in items(ds, "ReferencedSeriesSequence")))
    return InstanceParts(_head(ds), sop_class, _specimen(ds, memo), _of_sequence(ds, "OpticalPathSequence", _optical, memo),
                         flavor, level, refs,
                         _ai(ds, sop_class) if refs else None)


def _head(ds: Dataset) -> Head:
    age = text(ds.get("PatientAge"))
    versions = ds.get("SoftwareVersions")
    software = [versions] if isinstance(versions, str) else unique(str(v) for v in (versions or []))
    qido = []
    for keyword, vr in QIDO_KEYS:
        value = qido_text(ds.get(keyword), vr or ("TM" if keyword.endswith("Time") else ""))
        if value is not None:
            qido.append((keyword, value))
    species = tuple(c for c, _ in unique(codes(items(ds, "PatientSpeciesCodeSequence"))))
    return Head(str(ds.get("SeriesInstanceUID") or ""), str(ds.get("StudyInstanceUID") or ""),
                (text(ds.get("PatientID")), text(ds.get("PatientSex")), age, age_years(age), species),
                (valid_date(ds.get("StudyDate")), text(ds.get("StudyDescription"))),
                (text(ds.get("Modality")), text(ds.get("SeriesDescription")), text(ds.get("BodyPartExamined"))),
                (text(ds.get("Manufacturer")), text(ds.get("ManufacturerModelName")), tuple(software)),
                tuple(qido))


#: Parsed sequences whose parts are kept (``_of_sequence``), over every series the worker reads.
SEQUENCE_MEMO = 4096
_memo: OrderedDict[tuple[int, str], tuple[Any, Any]] = OrderedDict()
_memo_lock = threading.Lock()  # the worker thread and a reindex may read at once


def _of_sequence(ds: Dataset, keyword: str, read: Any, memo: bool) -> Any:
    """``read(ds)`` for a sequence object met before, from the memo.

    Catalog._share_sequences hands the instances of a series the very same parsed object
    for a specimen description or optical path sequence with the same bytes; walking it
    again for each instance was most of instance_parts' CPU. The memo holds the object
    itself, so its id cannot be reused by another while the entry lives.
    """
    seq = ds.get(keyword) if memo else None
    if seq is None:
        return read(ds)
    key = (id(seq), keyword)
    with _memo_lock:
        hit = _memo.get(key)
        if hit is not None and hit[0] is seq:
            _memo.move_to_end(key)
            return hit[1]
    value = read(ds)
    with _memo_lock:
        _memo[key] = (seq, value)
        while len(_memo) > SEQUENCE_MEMO:
            _memo.popitem(last=False)
    return value


def _specimen(ds: Dataset, memo: bool) -> Specimen:
    container = (text(ds.get("ContainerIdentifier")), tuple(codes(items(ds, "ContainerTypeCodeSequence"))))
    return Specimen(*container, *_of_sequence(ds, "SpecimenDescriptionSequence", _descriptions, memo))


def _descriptions(ds: Dataset) -> tuple[tuple[Any, ...], ...]:
    ids: list[str] = []
    anatomy: list[Code] = []
    types: list[Code] = []
    stains: list[Code] = []
    processing: list[str] = []
    preparation: list[Code] = []
    texts: list[str] = []
    for spec in items(ds, "SpecimenDescriptionSequence"):
        ids.append(text(spec.get("SpecimenIdentifier")) or "")
        anatomy += codes(items(spec, "PrimaryAnatomicStructureSequence"))
        types += codes(items(spec, "SpecimenTypeCodeSequence"))
        texts += [t for t in (text(spec.get("SpecimenShortDescription")),
                              text(spec.get("SpecimenDetailedDescription"))) if t]
        for step in items(spec, "SpecimenPreparationSequence"):
            for item in items(step, "SpecimenPreparationStepContentItemSequence"):
                concept = codes(items(item, "ConceptNameCodeSequence"))
                values = codes(items(item, "ConceptCodeSequence"))
                name = concept[0][0] if concept else ""
                if name == USING_SUBSTANCE:
                    stains += values
                elif name == PROCESSING_TYPE:
                    processing += [m or c for c, m in values]
                preparation += values
                value = text(item.get("TextValue"))
                if value and name != "DCM:121041":  # 121041: the specimen identifier again
                    texts.append(value)
    return (tuple(ids), tuple(anatomy), tuple(types), tuple(stains), tuple(processing), tuple(preparation),
            tuple(texts))


def _optical(ds: Dataset) -> tuple[OpticalPath, ...]:
    out = []
    for path in items(ds, "OpticalPathSequence"):
        identifier = path.get("OpticalPathIdentifier")
        types = tuple(codes(items(path, "IlluminationTypeCodeSequence")))
        power = float_or_none(path.get("ObjectiveLensPower"))
        description = text(path.get("OpticalPathDescription"))
        out.append(OpticalPath(str(identifier) if identifier else None, types,
                               tuple(codes(items(path, "IlluminationColorCodeSequence"))),
                               float_or_none(path.get("IlluminationWaveLength")),
                               power if power is not None and power > 0 else None,
                               tuple(m for _, m in types) + ((description,) if description else ())))
    return tuple(out)


def _image_flavor(ds: Dataset) -> str:
    image_type = ds.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return str(values[2]).upper() if len(values) > 2 else ""


def _pixel_spacing_mm(ds: Dataset) -> float | None:
    for shared in items(ds, "SharedFunctionalGroupsSequence"):
        for measures in items(shared, "PixelMeasuresSequence"):
            spacing = measures.get("PixelSpacing")
            if spacing:
                return float_or_none(spacing[0])
    spacing = ds.get("PixelSpacing")
    return float_or_none(spacing[0]) if spacing else None


def _ai(ds: Dataset, sop_class: str) -> AIParts | None:
    algorithms: list[str] = []
    versions: list[str] = []
    group_counts: list[str] = []
    property_types: list[Code] = []
    annotations = 0
    if sop_class == ANN_SOP_CLASS:
        groups = items(ds, "AnnotationGroupSequence")
        for group in groups:
            n = int(group.get("NumberOfAnnotations") or 0)
            annotations += n
            label = text(group.get("AnnotationGroupLabel")) or text(group.get("AnnotationGroupUID")) or "?"
            group_counts.append(f"{label}={n}")
            property_types += codes(items(group, "AnnotationPropertyTypeCodeSequence"))
            for alg in items(group, "AnnotationGroupAlgorithmIdentificationSequence"):
                algorithms.append(text(alg.get("AlgorithmName")) or "")
                versions.append(text(alg.get("AlgorithmVersion")) or "")
    elif sop_class == SEG_SOP_CLASS:
        groups = items(ds, "SegmentSequence")
        for segment in groups:
            label = text(segment.get("SegmentLabel")) or str(segment.get("SegmentNumber") or "?")
            group_counts.append(f"{label}=1")
            annotations += 1
            property_types += codes(items(segment, "SegmentedPropertyTypeCodeSequence"))
            algorithms.append(text(segment.get("SegmentAlgorithmName")) or "")
            for alg in items(segment, "SegmentationAlgorithmIdentificationSequence"):
                algorithms.append(text(alg.get("AlgorithmName")) or "")
                versions.append(text(alg.get("AlgorithmVersion")) or "")
    else:
        return None
    return AIParts(tuple(algorithms), tuple(versions), tuple(group_counts), tuple(property_types), annotations,
                   len(groups))


# --- merged ------------------------------------------------------------------------------


def _add(ordered: dict[Any, None], values: Iterable[Any]) -> None:
    """Append to an ordered set, skipping None and "" (what documents' unique() drops)."""
    for v in values:
        if v is not None and v != "":
            ordered[v] = None


@dataclass
class AISummary:
    """The AI summary of one slide, merged from the ANN/SEG instances referencing it."""

    series_uids: dict[str, None] = field(default_factory=dict)
    present: int = 0
    algorithms: dict[str, None] = field(default_factory=dict)
    versions: dict[str, None] = field(default_factory=dict)
    group_counts: dict[str, None] = field(default_factory=dict)
    property_types: dict[Code, None] = field(default_factory=dict)
    annotations: int = 0
    groups: int = 0

    def add(self, ai: AIParts, series_uid: str) -> None:
        self.present += 1
        _add(self.series_uids, (series_uid,))
        _add(self.algorithms, ai.algorithms)
        _add(self.versions, ai.versions)
        _add(self.group_counts, ai.group_counts)
        _add(self.property_types, ai.property_types)
        self.annotations += ai.annotations
        self.groups += ai.groups

    def merge(self, other: AISummary) -> None:
        self.present += other.present
        for mine, theirs in ((self.series_uids, other.series_uids), (self.algorithms, other.algorithms),
                             (self.versions, other.versions), (self.group_counts, other.group_counts),
                             (self.property_types, other.property_types)):
            _add(mine, theirs)
        self.annotations += other.annotations
        self.groups += other.groups

    def fields(self) -> dict[str, Any]:
        return {
            "present": bool(self.present),
            "series_uids": list(self.series_uids),
            "algorithms": list(self.algorithms),
            "algorithm_versions": list(self.versions),
            "annotation_count": self.annotations,
            "group_count": self.groups,
            "group_counts": list(self.group_counts),
            "property_type_codes": [c for c, _ in self.property_types],
            "properties": " ".join(m for _, m in self.property_types) or None,
        }


class SeriesParts:
    """The merged parts of a series' instances, added in instance (catalog pk) order.

    ``instances`` keeps each instance's parts by its key, so a series that loses an
    instance is merged again from what is left (``without``) instead of read again.
    Parts equal to an earlier instance's are kept once (``_interned``): the instances
    of one series mostly repeat the same specimen and optical path.
    """

    def __init__(self) -> None:
        self.instances: dict[Any, InstanceParts | None] = {}  # None: the row's header was gone
        self._interned: dict[InstanceParts, InstanceParts] = {}
        self.head: Head | None = None
        self.count = 0
        self.sop_classes: dict[str, None] = {}
        self.container_id: str | None = None
        self.specimen: dict[str, dict[Any, None]] = {k: {} for k in _SPECIMEN_LISTS}
        self.path_ids: set[str] = set()
        self.optical: dict[str, dict[Any, None]] = {k: {} for k in ("types", "colors", "wavelengths", "texts")}
        self.power: float | None = None
        self.levels: dict[tuple[int, int], float | None] = {}
        self.flavors: set[str] = set()
        self.references: dict[str, None] = {}
        self.ai_by_slide: dict[str, AISummary] = {}

    @classmethod
    def of(cls, headers: Iterable[Dataset]) -> SeriesParts:
        out = cls()
        for n, ds in enumerate(headers):
            out.add(n, instance_parts(ds))
        return out

    @property
    def last_key(self) -> Any:
        return next(reversed(self.instances), None)

    def without(self, keys: Iterable[Any]) -> SeriesParts:
        """A new merge of the remaining instances' parts, in the same order."""
        gone = set(keys)
        out = SeriesParts()
        for key, parts in self.instances.items():
            if key not in gone:
                out.add(key, parts)
        return out

    def add(self, key: Any, parts: InstanceParts | None) -> None:
        """Merge one instance's parts (None: a row without a readable header, counted as known only)."""
        if parts is not None:
            parts = self._interned.setdefault(parts, parts)
        self.instances[key] = parts
        if parts is None:
            return
        self.count += 1
        if self.head is None:
            self.head = parts.head
        self.sop_classes[parts.sop_class] = None
        self._add_specimen(parts.specimen)
        for path in parts.optical:
            self.path_ids.add(path.identifier if path.identifier is not None else str(len(self.path_ids)))
            _add(self.optical["types"], path.types)
            _add(self.optical["colors"], path.colors)
            _add(self.optical["wavelengths"], (path.wavelength,))
            _add(self.optical["texts"], path.texts)
            if path.power is not None:
                self.power = path.power if self.power is None else max(self.power, path.power)
        if parts.flavor is not None:
            self.flavors.add(parts.flavor)
        if parts.level is not None:
            cols, rows, spacing = parts.level
            self.levels[(cols, rows)] = self.levels.get((cols, rows)) or spacing
        _add(self.references, parts.references)
        if parts.ai is not None:
            for slide in parts.references:
                self.ai_by_slide.setdefault(slide, AISummary()).add(parts.ai, parts.head.series_uid)

    def _add_specimen(self, specimen: Specimen) -> None:
        self.container_id = self.container_id or specimen.container_id
        for name in _SPECIMEN_LISTS:
            _add(self.specimen[name], getattr(specimen, name))


_SPECIMEN_LISTS = ("containers", "ids", "anatomy", "types", "stains", "processing", "preparation", "texts")

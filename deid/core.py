"""deidentify(): one instance header in, a de-identified header (or Dropped) out.

The caller keeps the pixel data: it writes outcome.dataset and then copies the
original PixelData element bytes after it, so nothing here touches pixels unless an
area must be blanked (then blank_region does, on the small overview only).
Output is a pure function of (header, policy): no clock, no randomness.
"""
from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import dcmread, dcmwrite
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.encoding import value_at
from deid import seqcache
from deid.errors import DeidentificationError, Dropped
from deid.iod import iod_types
from deid.options import BASIC_PROFILE_CODE, Option
from deid.policy import Policy
from deid.scrub import Scrubber, terms_of
from deid.slides import Area, decide, label_flag_after_blanking
from deid.table import load_table
from deid.uids import Pseudonymizer
from deid.vault import LinkVault, load_public_key
from deid.walk import Context, _charset, _vr_of, walk

_TEXTUAL_VRS = frozenset({"PN", "LO", "SH", "DA", "AE", "ST", "LT", "UT", "UC"})
_SMALL_SEQUENCE = 16  # term collection skips big (per-frame) sequences: they hold no names
_BIG_RAW = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """The de-identified header (no pixel data) and the area to blank, if any."""

    dataset: Dataset
    blank_area: Area | None = None


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _patient_key(header: Dataset) -> tuple[str, str]:
    """(issuer, id) that identifies the patient; the study stands in when the id is empty."""
    pid = _str(header, "PatientID")
    if pid:
        return _str(header, "IssuerOfPatientID"), pid
    return "study", _str(header, "StudyInstanceUID")


def _collect_terms(ds: Dataset, options: frozenset[Option], depth: int = 0) -> list[str]:
    """Values the profile removes here; the Clean options scrub them out of kept text."""
    table = load_table()
    terms: list[str] = []
    for tag in ds.keys():
        tag = int(tag)
        if tag >> 16 & 1 or tag >> 16 == 0x0002:
            continue
        elem = ds.get_item(tag, keep_deferred=True)  # a value left unread (after the pixel data) stays so
        vr = _vr_of(elem, tag)
        rule = table.by_tag.get(tag)
        if isinstance(elem, RawDataElement) and (elem.length if elem.value is None else len(elem.value)) > _BIG_RAW:
            continue  # a big unparsed sequence (per-frame groups) or unread value: never read just for terms
        if vr == "SQ":
            seq = _sequence(ds, tag, elem)
            if len(seq) <= _SMALL_SEQUENCE and depth < 6:
                for item in seq:
                    terms.extend(_collect_terms(item, options, depth + 1))
            continue
        if rule is None:
            continue
        if rule.action(options) in ("K", "C"):
            continue
        if vr == "UN":
            vr = ds[tag].VR  # received as UN: pydicom's conversion finds the dictionary VR
        if vr in _TEXTUAL_VRS:  # binary values are not read: they hold no terms
            terms.extend(terms_of(vr, ds[tag].value))
    return terms


def _sequence(ds: Dataset, tag: int, elem: Any) -> Any:
    """The items of a sequence, parsed aside when still raw: left raw in ``ds``, the walk
    can take its de-identified form from deid.seqcache instead of parsing it again."""
    if isinstance(elem, RawDataElement):
        return convert_raw_data_element(elem, encoding=ds._character_set, ds=ds).value
    return ds[tag].value


def _method_attributes(out: Dataset, options: frozenset[Option], blanked: bool) -> None:
    """Record what was done (PS3.3 C.12.1.1.6 / CID 7050)."""
    codes = [BASIC_PROFILE_CODE]
    if blanked and Option.CLEAN_PIXEL_DATA not in options:
        codes.append((Option.CLEAN_PIXEL_DATA.code, Option.CLEAN_PIXEL_DATA.meaning))
    codes.extend((opt.code, opt.meaning) for opt in Option if opt in options)
    codes.sort()
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = ["PS3.15 E.1 " + BASIC_PROFILE_CODE[1]] + [m for c, m in codes[1:]]
    if _METHOD_CODE_SEQUENCE in out._dict:  # a received one, kept: its element takes the new items, as it always did
        out.DeidentificationMethodCodeSequence = _code_sequence(tuple(codes)).value
    else:
        out[_METHOD_CODE_SEQUENCE] = _method_codes(tuple(codes), out)
    if Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
        out.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        out.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        out.LongitudinalTemporalInformationModified = "REMOVED"


_METHOD_CODE_SEQUENCE = 0x00120064
#: De-identification Method Code Sequences already encoded, by (codes, encoding, character set):
#: a handful (one per set of options), holding standard codes only.
_METHOD_CODES: dict[tuple, RawDataElement] = {}


def _method_codes(codes: tuple[tuple[str, str], ...], out: Dataset) -> DataElement | RawDataElement:
    """The De-identification Method Code Sequence of ``codes``: encoded once per set of options
    in ``out``'s encoding, as deid.seqcache keeps sequences (building its items was a tenth of
    de-identifying a small instance); parsed when that encoding is not little endian."""
    implicit, little = out.original_encoding
    charset = _charset(out)
    key = (codes, implicit, little, repr(charset))  # repr: the value may be a list, or None
    found = _METHOD_CODES.get(key)
    if found is not None:
        return found
    elem = _code_sequence(codes)
    if little is not True or implicit is None:
        return elem
    found = seqcache.as_raw(elem, charset, bool(implicit), True)
    if len(_METHOD_CODES) < 64:
        _METHOD_CODES[key] = found
    return found


def _code_sequence(codes: tuple[tuple[str, str], ...]) -> DataElement:
    """The De-identification Method Code Sequence of ``codes`` (DCM), parsed."""
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return DataElement(_METHOD_CODE_SEQUENCE, "SQ", Sequence(items))


def _file_meta(header: Dataset, out: Dataset) -> FileMetaDataset:
    """New file meta: same syntax and class, the new instance UID, no source AE titles."""
    old = getattr(header, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    table = meta._dict  # by tag, as setting each keyword would (its lookups were most of the cost)

    def put(tag: int, vr: str, value: Any) -> None:
        table[BaseTag(tag)] = DataElement(tag, vr, value)

    put(0x00020001, "OB", value_at(old, 0x00020001, b"\x00\x01"))  # File Meta Information Version
    media_class = value_at(old, 0x00020002)
    put(0x00020002, "UI", value_at(out, 0x00080016, media_class))  # Media Storage SOP Class UID <- SOP Class UID
    put(0x00020003, "UI", value_at(out, 0x00080018, ""))  # Media Storage SOP Instance UID <- SOP Instance UID
    for tag, vr in ((0x00020010, "UI"), (0x00020012, "UI"), (0x00020013, "SH")):  # syntax, implementation
        if tag in old._dict:
            put(tag, vr, value_at(old, tag))
    return meta


@lru_cache(maxsize=16)
def _public_key(path: Path) -> Any:
    return load_public_key(path)


def _record_links(vault: LinkVault, policy: Policy, header: Dataset, out: Dataset) -> None:
    """Seal the originals behind each pseudonym kind (patient, study, series, instance)."""
    assert policy.broker_public_key is not None
    pub = _public_key(policy.broker_public_key)
    groups = {
        "patient": (str(out.get("PatientID", "")), ("PatientID", "IssuerOfPatientID", "PatientName")),
        "study": (str(out.get("StudyInstanceUID", "")), ("StudyInstanceUID", "AccessionNumber", "StudyID")),
        "series": (str(out.get("SeriesInstanceUID", "")), ("SeriesInstanceUID",)),
        "instance": (str(out.get("SOPInstanceUID", "")), ("SOPInstanceUID", "ContainerIdentifier")),
    }
    entries = []
    for kind, (pseudonym, keywords) in groups.items():
        originals = {kw: _str(header, kw) for kw in keywords if kw in header}
        if pseudonym and originals:
            entries.append((kind, pseudonym, originals))
    vault.record_many(entries, pub)


def _context_digest(policy: Policy, ctx: Context, scrub: Scrubber, sop_class: str) -> bytes:
    """Everything besides its own bytes that a sequence's de-identified form depends on
    (deid.seqcache): the policy's key and options, the SOP class (the IOD's attribute
    types), the patient's pseudonym and date shift, the terms to scrub, the safe private list."""
    h = hashlib.sha256(policy.key)
    h.update(repr((sorted(o.name for o in ctx.options), sop_class, ctx.patient_pseudonym, ctx.date_offset,
                   sorted(ctx.safe_private))).encode())
    h.update(scrub.digest)
    return h.digest()


def warm_up(sop_class_uid: str) -> Dataset:
    """De-identify a made-up header of ``sop_class_uid`` once and return the result.

    Loads what the first instance after a start would otherwise pay 20-40 ms of CPU for:
    the rule table, the IOD's types, pydicom's first conversions of raw values and
    sequences. The header holds no received value, and its key is thrown away, so what
    this leaves in deid.seqcache can never serve an instance.
    """
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in range(3))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.StudyDate, ds.PatientName, ds.PatientID, ds.ContainerIdentifier = "20000101", "WARM^UP", "WARM-UP", "WARM-UP"
    item = Dataset()
    item.SpecimenIdentifier, item.SpecimenUID = "WARM-UP", generate_uid()
    ds.SpecimenDescriptionSequence = Sequence([item])
    ds.OpticalPathSequence = Sequence([Dataset()])
    ds.OpticalPathSequence[0].OpticalPathIdentifier = "1"
    buffer = io.BytesIO()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    header = dcmread(buffer)  # raw elements, as a received header is read
    return _deidentify(header, Policy(name="warm-up", key=secrets.token_bytes(32)), None).dataset


def deidentify(header: Dataset, policy: Policy, vault: LinkVault | None = None) -> Outcome:
    """Apply the policy to one header; raise Dropped when it must not be stored.

    An identified policy returns the header unchanged. Links go to `vault` only when
    the policy asks for re-linkability; otherwise nothing linkable is kept anywhere.
    Any other failure surfaces as DeidentificationError with a message that names the
    policy and the error type only.
    """
    try:
        return _deidentify(header, policy, vault)
    except (Dropped, DeidentificationError):
        raise
    except Exception as exc:
        raise DeidentificationError(
            f"de-identification under policy {policy.name} failed ({type(exc).__name__})") from None


def _deidentify(header: Dataset, policy: Policy, vault: LinkVault | None) -> Outcome:
    """deidentify() without the error wrapping."""
    if policy.identified:
        return Outcome(dataset=header, blank_area=None)
    blank_area = decide(header, policy)
    options = policy.options
    pseudo = Pseudonymizer(policy.key)
    issuer, pid = _patient_key(header)
    needs_scrub = any(opt in options for opt in (
        Option.CLEAN_DESCRIPTORS, Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS,
        Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_DEVICE_IDENTITY))
    scrub = Scrubber(_collect_terms(header, options) if needs_scrub else [])
    ctx = Context(
        table=load_table(),
        options=options,
        types=iod_types(str(header.get("SOPClassUID", ""))),
        pseudo=pseudo,
        patient_pseudonym=pseudo.patient_id(issuer, pid),
        date_offset=(pseudo.date_offset_days(issuer, pid)
                     if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options else None),
        scrub=scrub,
        safe_private=policy.safe_private if Option.RETAIN_SAFE_PRIVATE in options else frozenset(),
    )
    ctx.cache_key = _context_digest(policy, ctx, scrub, str(header.get("SOPClassUID", "")))
    out = walk(header, ctx)
    if "PixelData" in out:
        del out.PixelData
    _method_attributes(out, options, blanked=blank_area is not None)
    if blank_area is not None:
        out.SpecimenLabelInImage = label_flag_after_blanking(header)
        out.BurnedInAnnotation = "NO"
        for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            if kw in out:  # frames are re-encoded: the original offsets would be wrong
                del out[kw]
    out.file_meta = _file_meta(header, out)
    if policy.relink:
        if vault is None:
            raise DeidentificationError(
                f"policy {policy.name} asks for re-linkable pseudonyms but no link vault was given")
        _record_links(vault, policy, header, out)
    return Outcome(dataset=out, blank_area=blank_area)

"""Big per-frame functional groups: one cheap pass, raw bytes kept when inert, still correct when not."""
from __future__ import annotations

import io
import struct
import time

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage

from deid import Option, Policy, deidentify

KEY = b"perframe-test-key-0123456789abcd"
PER_FRAME = 0x52009230
SOURCE_UID = "1.2.826.0.1.3680043.10.997.1"


def header(n: int, *, syntax: str = ExplicitVRLittleEndian, undefined: bool = False,
           frame_datetime: bool = False, derivation: bool = False) -> Dataset:
    """A TILED_SPARSE WSI header with `n` per-frame items, written and read back as ingest reads it."""
    ds = Dataset()
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.997.2"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.997.3"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.997.4"
    ds.PatientID = "PAT-0001"
    ds.PatientName = "DOE^JANE"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.DimensionOrganizationType = "TILED_SPARSE"
    ds.NumberOfFrames = n
    ds.PixelRepresentation = 0
    ds.add_new(0x00280120, "US", 255)  # Pixel Padding Value: ambiguous VR (US or SS) in implicit VR
    items = []
    for k in range(min(n, 200)):
        item = Dataset()
        content = Dataset()
        content.DimensionIndexValues = [k // 100 + 1, k % 100 + 1]
        if frame_datetime:
            content.FrameAcquisitionDateTime = "20240314092653"
        item.FrameContentSequence = Sequence([content])
        pos = Dataset()
        pos.XOffsetInSlideCoordinateSystem = "1.5"
        pos.YOffsetInSlideCoordinateSystem = "2.5"
        pos.ZOffsetInSlideCoordinateSystem = "0"
        pos.ColumnPositionInTotalImagePixelMatrix = 1 + (k % 100) * 256
        pos.RowPositionInTotalImagePixelMatrix = 1 + (k // 100) * 256
        item.PlanePositionSlideSequence = Sequence([pos])
        if derivation:
            src = Dataset()
            src.ReferencedSOPClassUID = VLWholeSlideMicroscopyImageStorage
            src.ReferencedSOPInstanceUID = SOURCE_UID
            der = Dataset()
            der.SourceImageSequence = Sequence([src])
            item.DerivationImageSequence = Sequence([der])
        items.append(item)
    distinct = min(n, 200)
    if n > distinct:
        # Encode 200 items with pydicom, repeat their bytes: a 20,000-item sequence in milliseconds.
        implicit = syntax == ImplicitVRLittleEndian
        chunks = []
        for item in items[:distinct]:
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, implicit
            write_dataset(fp, item)
            body = fp.getvalue()
            chunks.append(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body)
        value = b"".join(chunks[k % distinct] for k in range(n))
        ds.set_original_encoding(implicit, True, "iso8859")  # as read: no conversion on write
        ds[PER_FRAME] = RawDataElement(BaseTag(PER_FRAME), None if implicit else "SQ", len(value), value,
                                       0, implicit, True)
    else:
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    if undefined:
        ds["PerFrameFunctionalGroupsSequence"].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf, stop_before_pixels=True)


def written(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_inert_per_frame_sequence_is_kept_raw(syntax: str) -> None:
    src = header(20000, syntax=syntax)
    raw = src.get_item(PER_FRAME)
    start = time.perf_counter()
    out = deidentify(src, Policy(name="basic", key=KEY)).dataset
    elapsed = time.perf_counter() - start
    assert out.get_item(PER_FRAME) is raw  # never parsed, copied byte for byte
    assert elapsed < 10, elapsed
    data = written(out)
    assert raw.value in data
    assert b"PAT-0001" not in data and b"DOE" not in data
    assert pydicom.dcmread(io.BytesIO(data)).PixelPaddingValue == 255


def test_parsed_per_frame_items_are_reused_not_copied() -> None:
    src = header(200, undefined=True)
    before = list(src.PerFrameFunctionalGroupsSequence)
    out = deidentify(src, Policy(name="basic", key=KEY)).dataset
    assert all(a is b for a, b in zip(out.PerFrameFunctionalGroupsSequence, before))


@pytest.mark.parametrize("undefined", [False, True], ids=["raw", "parsed"])
def test_per_frame_dates_and_uids_are_still_handled(undefined: bool) -> None:
    src = header(300, undefined=undefined, frame_datetime=True, derivation=True)
    opt = Option.RETAIN_LONGITUDINAL_MODIFIED_DATES
    out = deidentify(src, Policy(name="m", key=KEY, options=frozenset({opt}))).dataset
    data = written(out)
    assert b"20240314092653" not in data and SOURCE_UID.encode() not in data
    items = out.PerFrameFunctionalGroupsSequence
    assert len(items) == 300
    shifted = {i.FrameContentSequence[0].FrameAcquisitionDateTime for i in items}
    assert len(shifted) == 1 and shifted.pop().endswith("092653")
    refs = {i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for i in items}
    assert len(refs) == 1 and refs.pop().startswith("2.25.")
    assert items[7].PlanePositionSlideSequence[0].ColumnPositionInTotalImagePixelMatrix == 1 + 7 * 256


@pytest.mark.parametrize("garbage", [
    b"\x08\x00\x50\x00SH\x40\x00" + b"DOE^JANE PAT-0001 " * 4,
    b"\xfe\xff\x00\xe0\xff\x00\x00\x00" + b"DOE^JANE PAT-0001 " * 4,
    b"\xfe\xff\x00\xe0\x10\x00\x00\x00\x10\x00\x10\x00PN\x08\x00DOE^JANE" + b"PAT-0001",
], ids=["no-item", "short-item", "trailing"])
def test_malformed_input_never_leaks(garbage: bytes) -> None:
    """A broken nested sequence: either a clean failure that quotes nothing, or no PHI in the output."""
    from deid import DeidentificationError

    src = header(3)
    src[0x00400560] = RawDataElement(BaseTag(0x00400560), "SQ", len(garbage), garbage, 0, False, True)
    try:
        out = deidentify(src, Policy(name="basic", key=KEY)).dataset
    except DeidentificationError as exc:
        assert "basic" in str(exc)
        assert "DOE" not in str(exc) and "PAT-0001" not in str(exc)
        assert exc.__cause__ is None and exc.__suppress_context__
        return
    data = written(out)
    assert b"DOE" not in data and b"PAT-0001" not in data


def test_retain_safe_private_keeps_only_listed_private_elements() -> None:
    src = header(3)
    block = src.private_block(0x0011, "SAFE CREATOR", create=True)
    block.add_new(0x01, "LO", "kept value")
    block.add_new(0x02, "LO", "DOE^JANE")
    other = src.private_block(0x0013, "OTHER CREATOR", create=True)
    other.add_new(0x01, "LO", "PAT-0001")
    opt = Option.RETAIN_SAFE_PRIVATE
    policy = Policy(name="p", key=KEY, options=frozenset({opt}), safe_private=frozenset({("SAFE CREATOR", 0x0011, 0x01)}))
    out = deidentify(src, policy).dataset
    private = {int(e.tag): e.value for e in out if e.tag.is_private}
    assert private == {0x00110010: "SAFE CREATOR", 0x00111001: "kept value"}
    # Without the option the same list keeps nothing.
    plain = deidentify(src, Policy(name="b", key=KEY, safe_private=policy.safe_private)).dataset
    assert not [e for e in plain if e.tag.is_private]

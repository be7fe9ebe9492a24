"""The frame index reads Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames
from their bytes when they are plain (archive.frames.number): the same values as pydicom's
conversion, the same index, and the elements left as they were.
"""
from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.dicomfile import read_header
from archive.frames import _NUMBER_OF_FRAMES, _ROWS, BITS_ALLOCATED, index_frames, number

US_VALUES = [b"\x00\x01", b"\xff\xff", b"", b"\x01\x00\x02\x00", b"\x05"]
IS_VALUES = [b"12", b" 7", b"3 ", b"+4", b"-2", b"007", b"", b"  ", b"1.0", b"2\\3", b"12\x00", b"x", b"1e3"]


def _raw(tag: int, vr: str, value: bytes, little: bool = True) -> RawDataElement:
    return RawDataElement(tag, vr, len(value), value, 0, False, little)


def _as_read(read, ds: Dataset, tag: int, default):
    """What the frame index makes of ``read(ds, tag, default)``: ``int()`` of it, or the error's type."""
    try:
        return int(read(ds, tag, default))
    except Exception as e:  # noqa: BLE001 - the error type is what is compared
        return type(e)


def _before(ds: Dataset, tag: int, default):
    """What the frame index read before: ``ds.get(keyword, default)``."""
    return ds.get(keyword_for_tag(tag), default)


@pytest.mark.parametrize("tag, vr, values", [(_ROWS, "US", US_VALUES), (BITS_ALLOCATED, "US", US_VALUES),
                                             (_NUMBER_OF_FRAMES, "IS", IS_VALUES)])
@pytest.mark.parametrize("little", [True, False], ids=["little", "big"])
def test_same_value_as_pydicom(tag, vr, values, little) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd values, which are the point
        for value in values:
            for default in (None, 1):
                fresh = Dataset()
                fresh._dict[tag] = _raw(tag, vr, value, little)
                answer = _as_read(number, fresh, tag, default)
                reference = Dataset()
                reference._dict[tag] = _raw(tag, vr, value, little)
                expected = _as_read(_before, reference, tag, default)
                assert answer == expected and type(answer) is type(expected), (value, little)
    assert number(Dataset(), tag, 5) == 5


def _small_file(tmp_path, frames: int | None, implicit: bool = False) -> str:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.3.4"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored = 4, 6, 3, 8, 8
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(i % 256 for i in range(4 * 6 * 3 * (frames or 1)))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    path = tmp_path / f"small-{frames}-{implicit}.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize("frames, implicit", [(None, False), (1, False), (3, False), (2, True)])
def test_same_index_as_converted_header(tmp_path, frames, implicit) -> None:
    path = _small_file(tmp_path, frames, implicit)
    header = read_header(path)
    converted = read_header(path).dataset
    for _ in converted:  # every element converted: what the index read through pydicom before
        pass
    with open(path, "rb") as f:
        fast = index_frames(f, header.dataset, header.transfer_syntax, header.pixel_offset, header.file_size)
        slow = index_frames(f, converted, header.transfer_syntax, header.pixel_offset, header.file_size)
    assert fast.layout == slow.layout and fast.pack() == slow.pack()
    assert len(fast) == (frames or 1)
    if not implicit:
        assert isinstance(header.dataset._dict[_ROWS], RawDataElement)  # not converted by the index

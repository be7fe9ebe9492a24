"""Reading a stored or spooled Part 10 file's header without touching its pixel data."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID

from .errors import InvalidDataset

PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, Float, DoubleFloat


@dataclasses.dataclass
class Header:
    """A data set without its pixel data, and where that pixel data starts in the file.

    ``pixel_offset`` is the file offset of the pixel data element's tag, or None
    when the instance has none (annotations) or when offsets are meaningless
    (deflated transfer syntax).
    """

    dataset: Dataset
    transfer_syntax: UID
    pixel_offset: int | None
    file_size: int


def read_header(path: Path) -> Header:
    """Parse everything before (7FE0,0010); raises InvalidDataset for non-DICOM or truncated bytes."""
    size = Path(path).stat().st_size
    try:
        with open(path, "rb") as f:
            ds = dcmread(f, stop_before_pixels=True)
            position = f.tell()
            ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            if ts is None:
                raise InvalidDataset("no Transfer Syntax UID in the file meta information")
            ts = UID(ts)
            pixel_offset = None
            if ts != DeflatedExplicitVRLittleEndian and position < size:
                f.seek(position)
                tag = f.read(4)
                if len(tag) == 4:
                    group = int.from_bytes(tag[:2], "little")
                    elem = int.from_bytes(tag[2:], "little")
                    if (group << 16 | elem) in PIXEL_DATA_TAGS:
                        pixel_offset = position
    except InvalidDataset:
        raise
    except InvalidDicomError:
        raise InvalidDataset("not a DICOM Part 10 file (no DICM prefix or file meta information)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as e:
        raise InvalidDataset(f"cannot parse the data set: {type(e).__name__}") from None
    return Header(ds, ts, pixel_offset, size)


def read_full(path: Path) -> Dataset:
    """The whole data set (small instances only: overviews, deflated files)."""
    try:
        return dcmread(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same answer
        raise InvalidDataset(f"cannot parse the data set: {type(e).__name__}") from None

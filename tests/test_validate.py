"""archive.ingest.validate: the refusals of a received header, each with its type and message.

validate reads the elements by tag (not by keyword attribute); these cases pin that it
refuses exactly what, and with exactly the words, it did before, for headers as read from
a file (raw elements, converted on use) and as built in memory.
"""
from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from archive.errors import DatasetDoesNotMatchSOPClass, InvalidDataset, SOPClassNotSupported
from archive.ingest import validate

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
SOP = "1.2.826.0.1.3680043.9.7.1"


def header() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = WSI, SOP
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7.2", "1.2.826.0.1.3680043.9.7.3"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = WSI, SOP
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def as_read(ds: Dataset) -> Dataset:
    """``ds`` written as a Part 10 file and read back: raw elements, as read_header leaves them."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)  # meta as given
    buffer.seek(0)
    read = pydicom.dcmread(buffer, force=True)  # written without a preamble
    assert all(isinstance(elem, RawDataElement) for elem in read._dict.values())
    return read


def _delete(ds: Dataset, keyword: str) -> None:
    delattr(ds, keyword)


CASES = [
    *[((lambda ds, k=k: _delete(ds, k)), DatasetDoesNotMatchSOPClass, f"missing {k}")
      for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")],
    (lambda ds: setattr(ds, "StudyInstanceUID", ""), DatasetDoesNotMatchSOPClass, "missing StudyInstanceUID"),
    (lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.x"), DatasetDoesNotMatchSOPClass,
     "malformed SeriesInstanceUID: expected digits and dots, at most 64 characters"),
    (lambda ds: setattr(ds, "SOPInstanceUID", "1." + "2" * 70), DatasetDoesNotMatchSOPClass,
     "malformed SOPInstanceUID: expected digits and dots, at most 64 characters"),
    (lambda ds: (setattr(ds, "SOPClassUID", "1.2.3.4"), setattr(ds.file_meta, "MediaStorageSOPClassUID", "1.2.3.4")),
     SOPClassNotSupported, "SOP Class UID is not a storage SOP class this archive accepts"),
    (lambda ds: setattr(ds.file_meta, "MediaStorageSOPClassUID", "1.2.840.10008.5.1.4.1.1.7"),
     DatasetDoesNotMatchSOPClass, "MediaStorageSOPClassUID differs from SOPClassUID"),
    (lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", "1.2.3"),
     DatasetDoesNotMatchSOPClass, "MediaStorageSOPInstanceUID differs from SOPInstanceUID"),
    (lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4.5"), InvalidDataset, "unknown transfer syntax"),
]


@pytest.mark.parametrize("read", [False, True], ids=["built", "read"])
@pytest.mark.parametrize("mutate, error, message", CASES)
def test_refusal(mutate, error, message, read) -> None:
    ds = header()
    with warnings.catch_warnings(), pytest.raises(error) as caught:
        warnings.simplefilter("ignore")  # pydicom warns about the malformed UIDs, which are the point
        mutate(ds)
        validate(as_read(ds) if read else ds)
    assert type(caught.value) is error and caught.value.message == message


@pytest.mark.parametrize("read", [False, True], ids=["built", "read"])
def test_accepted(read) -> None:
    ds = as_read(header()) if read else header()
    validate(ds)
    ds.file_meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPInstanceUID = ""  # empty: not compared
    validate(ds)
